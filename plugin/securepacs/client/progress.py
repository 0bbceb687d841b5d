"""A one-line progress display on stderr: files n/total, MB, rate and ETA.

Our own ~60 lines rather than a dependency. Redraws at most ``interval`` seconds apart because writing
to a terminal on every file would cost more than sending small files; silent when disabled (stderr is
not a terminal, or ``--no-progress``) so logs and pipes stay clean.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

_MB = 1_000_000


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Thread-safe counter of files and bytes done, drawn as a single updating line."""

    def __init__(
        self,
        total_files: int,
        total_bytes: int,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float = 0.1,
    ) -> None:
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.files = 0
        self.bytes = 0
        self.enabled = enabled
        self._stream = stream if stream is not None else sys.stderr
        self._interval = interval
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._width = 0

    def advance(self, files: int = 1, nbytes: int = 0) -> None:
        with self._lock:
            self.files += files
            self.bytes += nbytes
            now = time.monotonic()
            if self.enabled and (now - self._last_draw >= self._interval or self.files >= self.total_files):
                self._last_draw = now
                self._draw(now)

    def line(self, now: float | None = None) -> str:
        elapsed = max((now if now is not None else time.monotonic()) - self._start, 1e-6)
        rate = self.bytes / elapsed
        text = (f"{self.files}/{self.total_files} files  {self.bytes / _MB:.1f}/{self.total_bytes / _MB:.1f} MB"
                f"  {rate / _MB:.1f} MB/s  {self.files / elapsed:.1f} files/s")
        if 0 < self.bytes < self.total_bytes and rate > 0:
            text += f"  ETA {_duration((self.total_bytes - self.bytes) / rate)}"
        return text

    def _draw(self, now: float) -> None:
        text = self.line(now)
        # Pad with spaces to wipe the tail of a longer previous line.
        self._stream.write("\r" + text.ljust(self._width))
        self._stream.flush()
        self._width = len(text)

    def close(self) -> None:
        """Draw the final state and end the line so later output starts on a fresh one."""
        with self._lock:
            if self.enabled and self._width:
                if self.files < self.total_files:  # the final state is already on screen otherwise
                    self._draw(time.monotonic())
                self._stream.write("\n")
                self._stream.flush()
                self._width = 0
