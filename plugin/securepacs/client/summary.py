"""The outcome of a ``store``: counts per status, throughput, and the files that did not succeed.

Thread-safe collection (several associations report at once) with a cap on the listed files, so a run
over a million bad files reports them all in the counts without holding a million entries.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from securepacs.client.progress import Progress

MAX_LISTED_PROBLEMS = 1000  # beyond this the summary only counts, so memory stays bounded

SUCCESS, WARNING, FAILURE, NOT_SENT = "success", "warning", "failure", "not sent"


@dataclass(frozen=True)
class FileProblem:
    """A file that did not simply succeed: its outcome (warning, failure, not sent) and why."""

    path: Path
    outcome: str
    detail: str


@dataclass
class StoreSummary:
    success: int = 0
    warning: int = 0
    failure: int = 0
    not_sent: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    problems: list[FileProblem] = field(default_factory=list)
    problems_omitted: int = 0
    stopped_early: str | None = None  # why files were left unsent, when the producer had to give up

    @property
    def total(self) -> int:
        return self.success + self.warning + self.failure + self.not_sent

    @property
    def ok(self) -> bool:
        """True when every file was stored (warnings included)."""
        return self.failure == 0 and self.not_sent == 0

    @property
    def instances_per_second(self) -> float:
        return (self.success + self.warning) / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_second(self) -> float:
        return self.bytes_sent / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def report(self) -> str:
        lines = [
            f"stored {self.success + self.warning} of {self.total} files in {self.seconds:.2f} s "
            f"({self.instances_per_second:.1f} instances/s, {self.mb_per_second:.2f} MB/s, "
            f"{self.bytes_sent / 1e6:.1f} MB)",
            f"  success: {self.success}  warning: {self.warning}  failure: {self.failure}  "
            f"not sent: {self.not_sent}",
        ]
        if self.stopped_early:
            lines.append(f"  stopped early: {self.stopped_early}")
        for p in self.problems:
            lines.append(f"  {p.outcome:<8}  {p.path}: {p.detail}")
        if self.problems_omitted:
            lines.append(f"  ... and {self.problems_omitted} more files with problems")
        return "\n".join(lines)


class Results:
    """Collects outcomes from all worker threads and advances the progress display."""

    def __init__(self, progress: Progress) -> None:
        self.summary = StoreSummary()
        self.progress = progress
        self._lock = threading.Lock()

    def record(self, path: Path, outcome: str, detail: str = "", nbytes: int = 0) -> None:
        with self._lock:
            s = self.summary
            if outcome == SUCCESS:
                s.success += 1
                s.bytes_sent += nbytes
            elif outcome == WARNING:
                s.warning += 1
                s.bytes_sent += nbytes
            elif outcome == FAILURE:
                s.failure += 1
            else:
                s.not_sent += 1
            if outcome != SUCCESS:
                if len(s.problems) < MAX_LISTED_PROBLEMS:
                    s.problems.append(FileProblem(path, outcome, detail))
                else:
                    s.problems_omitted += 1
        self.progress.advance(1, nbytes if outcome in (SUCCESS, WARNING) else 0)
