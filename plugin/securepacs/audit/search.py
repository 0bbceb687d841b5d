"""Stream audit records matching simple filters (all given filters must match). Constant memory.

Search reads; it does not verify: run verify() for integrity. Lines that cannot be parsed are skipped
with a warning naming the line number only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime

from securepacs.audit import codes
from securepacs.audit.chain import KIND_RECORD, LineError, TrailEntry, iter_raw_lines, parse_line
from securepacs.audit.record import AuditRecord, parse_time

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Filters:
    """Each field narrows the result; None means "any". Strings match exactly (user ids, UIDs...)."""

    patient_id: str | None = None
    study_uid: str | None = None
    user: str | None = None  # user_id or user_name of any active participant
    clinic: str | None = None
    ae_title: str | None = None
    event: str | None = None  # name ("Query"), DCM code ("110112") or meaning
    outcome: int | Collection[int] | None = None
    since: datetime | str | None = None  # inclusive
    until: datetime | str | None = None  # exclusive


class _Matcher:
    def __init__(self, f: Filters) -> None:
        self.f = f
        self.event_code = codes.resolve_event(f.event) if f.event is not None else None
        self.outcomes = None if f.outcome is None else ({f.outcome} if isinstance(f.outcome, int) else set(f.outcome))
        self.since = parse_time(f.since) if f.since is not None else None
        self.until = parse_time(f.until) if f.until is not None else None

    def __call__(self, r: AuditRecord) -> bool:
        f = self.f
        if self.event_code is not None and r.event.code != self.event_code:
            return False
        if self.outcomes is not None and r.outcome not in self.outcomes:
            return False
        if self.since is not None or self.until is not None:
            moment = parse_time(r.time)
            if (self.since is not None and moment < self.since) or (self.until is not None and moment >= self.until):
                return False
        if f.patient_id is not None and not (
            any(o.object_id == f.patient_id and o.id_type == codes.ID_PATIENT_NUMBER for o in r.objects)
            # A query names its patient only inside the query (PS3.15 A.5.3.10 has no patient object for it);
            # the archive copies the Patient ID it asked for into the details, so searches find the query.
            or dict(r.details).get("patient_id") == f.patient_id
        ):
            return False
        if f.study_uid is not None and not any(
            o.object_id == f.study_uid and o.id_type == codes.ID_STUDY_INSTANCE_UID for o in r.objects
        ):
            return False
        people = r.participants
        if f.user is not None and not any(f.user in (p.user_id, p.user_name) for p in people):
            return False
        if f.clinic is not None and not any(p.clinic == f.clinic for p in people):
            return False
        return f.ae_title is None or any(p.ae_title == f.ae_title for p in people)


def _scan(trail_path: str | os.PathLike[str], match: _Matcher) -> Iterator[tuple[TrailEntry, AuditRecord]]:
    with open(trail_path, "rb") as stream:
        for raw in iter_raw_lines(stream):
            if not raw.complete:
                return  # a torn last line is an append in progress or a crash: not a record yet
            try:
                entry = parse_line(raw.data)
                if entry.kind != KIND_RECORD:
                    continue
                record = entry.record()
            except (LineError, ValueError) as exc:
                log.warning("audit search %s: line %d skipped: %s", trail_path, raw.number, exc)
                continue
            if match(record):
                yield entry, record


def search_entries(trail_path: str | os.PathLike[str], filters: Filters | None = None) -> Iterator[TrailEntry]:
    """Yield the trail entries (with seq and hash) whose record matches; checkpoints are skipped."""
    scan = _scan(trail_path, _Matcher(filters or Filters()))  # filters are checked now, not at first next()
    return (entry for entry, _record in scan)


def search(
    trail_path: str | os.PathLike[str], filters: Filters | None = None, **kwargs: object
) -> Iterator[AuditRecord]:
    """Yield matching records; filters by a Filters or as keywords: search(p, patient_id="P1", event="Query")."""
    if filters is None:
        filters = Filters(**kwargs)  # type: ignore[arg-type]
    elif kwargs:
        raise TypeError("give filters either as a Filters object or as keywords, not both")
    scan = _scan(trail_path, _Matcher(filters))
    return (record for _entry, record in scan)
