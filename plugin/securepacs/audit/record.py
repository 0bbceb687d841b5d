"""The audit record model: frozen dataclasses that round-trip through canonical JSON.

The shape follows the DICOM audit message (PS3.15 A.5.1) so every record can be exported as one, with
the few things this archive knows that the schema has no attribute for (clinic, certificate
fingerprint, AE title of a participant) kept as plain fields.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from securepacs.audit import codes
from securepacs.audit.codes import Code

_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8 (not \\u-escaped), no NaN: one byte string per value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def format_time(moment: datetime) -> str:
    """ISO 8601 UTC with microseconds and a Z suffix; naive datetimes are refused (ambiguous zone)."""
    if moment.tzinfo is None:
        raise ValueError(f"audit time must be timezone-aware, got naive {moment.isoformat()}")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utc_now() -> str:
    return format_time(datetime.now(UTC))


def parse_time(value: str | datetime) -> datetime:
    """Accept a datetime (aware) or an ISO 8601 string (a trailing Z or an offset); return aware UTC."""
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"not an ISO 8601 time: {value!r}") from exc
    if moment.tzinfo is None:
        raise ValueError(f"time must carry a zone (Z or +hh:mm): {value!r}")
    return moment.astimezone(UTC)


def _opt(data: Mapping[str, Any], key: str) -> Any:
    return data.get(key)


def _pairs(values: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> tuple[tuple[str, str], ...]:
    items = values.items() if isinstance(values, Mapping) else (values or ())
    return tuple(sorted((str(k), str(v)) for k, v in items))


def _prune(data: dict[str, Any]) -> dict[str, Any]:
    """Drop absent optional fields so the JSON stays small and stable (False and 0 are kept)."""
    return {k: v for k, v in data.items() if v not in (None, (), [], {})}


@dataclass(frozen=True, slots=True)
class ActiveParticipant:
    """Who took part: a user, a clinic's DICOM node, or one of this archive's processes."""

    user_id: str
    is_requestor: bool = False
    user_name: str | None = None
    clinic: str | None = None
    ae_title: str | None = None
    cert_sha256: str | None = None  # hex SHA-256 of the peer certificate (DER)
    network_access_point: str | None = None  # source IP address or host name
    roles: tuple[Code, ...] = ()

    def __post_init__(self) -> None:
        if not self.user_id:
            raise ValueError("an active participant needs a user_id")
        object.__setattr__(self, "roles", tuple(self.roles))

    def to_dict(self) -> dict[str, Any]:
        return _prune({
            "ae_title": self.ae_title,
            "cert_sha256": self.cert_sha256,
            "clinic": self.clinic,
            "is_requestor": self.is_requestor,
            "network_access_point": self.network_access_point,
            "roles": [r.to_dict() for r in self.roles],
            "user_id": self.user_id,
            "user_name": self.user_name,
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActiveParticipant:
        return cls(
            user_id=str(data["user_id"]),
            is_requestor=bool(data.get("is_requestor", False)),
            user_name=_opt(data, "user_name"),
            clinic=_opt(data, "clinic"),
            ae_title=_opt(data, "ae_title"),
            cert_sha256=_opt(data, "cert_sha256"),
            network_access_point=_opt(data, "network_access_point"),
            roles=tuple(Code.from_dict(r) for r in data.get("roles", ())),
        )


@dataclass(frozen=True, slots=True)
class SopClassCount:
    """Instances of one SOP class involved in the event (PS3.15 SOPClass/NumberOfInstances)."""

    uid: str
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "uid": self.uid}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SopClassCount:
        return cls(str(data["uid"]), int(data["count"]))


@dataclass(frozen=True, slots=True)
class ParticipantObject:
    """What the event touched: a patient, a study, a query, the audit log, a user account..."""

    object_id: str
    id_type: Code
    type_code: int | None = None
    role: int | None = None
    name: str | None = None
    query: bytes | None = None  # the query as sent (e.g. the C-FIND identifier or the QIDO URL); base64 in JSON
    life_cycle: int | None = None
    sensitivity: str | None = None
    details: tuple[tuple[str, str], ...] = ()
    sop_classes: tuple[SopClassCount, ...] = ()
    accessions: tuple[str, ...] = ()
    encrypted: bool | None = None
    anonymized: bool | None = None

    def __post_init__(self) -> None:
        if not self.object_id:
            raise ValueError(f"participant object of type {self.id_type.meaning!r} needs an object_id")
        object.__setattr__(self, "details", _pairs(self.details))
        object.__setattr__(self, "sop_classes", tuple(self.sop_classes))
        object.__setattr__(self, "accessions", tuple(self.accessions))

    def to_dict(self) -> dict[str, Any]:
        return _prune({
            "accessions": list(self.accessions),
            "anonymized": self.anonymized,
            "details": dict(self.details),
            "encrypted": self.encrypted,
            "id_type": self.id_type.to_dict(),
            "life_cycle": self.life_cycle,
            "name": self.name,
            "object_id": self.object_id,
            "query": base64.b64encode(self.query).decode("ascii") if self.query is not None else None,
            "role": self.role,
            "sensitivity": self.sensitivity,
            "sop_classes": [s.to_dict() for s in self.sop_classes],
            "type_code": self.type_code,
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParticipantObject:
        query = data.get("query")
        return cls(
            object_id=str(data["object_id"]),
            id_type=Code.from_dict(data["id_type"]),
            type_code=_opt(data, "type_code"),
            role=_opt(data, "role"),
            name=_opt(data, "name"),
            query=base64.b64decode(query, validate=True) if query is not None else None,
            life_cycle=_opt(data, "life_cycle"),
            sensitivity=_opt(data, "sensitivity"),
            details=_pairs(data.get("details")),
            sop_classes=tuple(SopClassCount.from_dict(s) for s in data.get("sop_classes", ())),
            accessions=tuple(str(a) for a in data.get("accessions", ())),
            encrypted=_opt(data, "encrypted"),
            anonymized=_opt(data, "anonymized"),
        )


@dataclass(frozen=True, slots=True)
class AuditSource:
    """The process that reports the event (AuditSourceIdentification)."""

    source_id: str
    site: str | None = None
    types: tuple[str, ...] = (codes.SOURCE_TYPE_APPLICATION_SERVER,)

    def to_dict(self) -> dict[str, Any]:
        return _prune({"site": self.site, "source_id": self.source_id, "types": list(self.types)})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditSource:
        return cls(str(data["source_id"]), _opt(data, "site"), tuple(str(t) for t in data.get("types", ())))


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audited event. ``details`` holds free key/value text that has no place in the schema."""

    event: Code
    action: str
    outcome: int
    participants: tuple[ActiveParticipant, ...]
    source: AuditSource
    time: str = field(default_factory=utc_now)
    event_types: tuple[Code, ...] = ()
    objects: tuple[ParticipantObject, ...] = ()
    outcome_description: str | None = None
    details: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.action not in codes.ACTIONS:
            raise ValueError(f"EventActionCode must be one of C/R/U/D/E, got {self.action!r}")
        if self.outcome not in codes.OUTCOMES:
            raise ValueError(f"EventOutcomeIndicator must be 0, 4, 8 or 12, got {self.outcome!r}")
        if not _TIME_RE.match(self.time):
            raise ValueError(f"audit time must be UTC ISO 8601 with microseconds and Z, got {self.time!r}")
        object.__setattr__(self, "participants", tuple(self.participants))
        object.__setattr__(self, "event_types", tuple(self.event_types))
        object.__setattr__(self, "objects", tuple(self.objects))
        object.__setattr__(self, "details", _pairs(self.details))
        if not self.participants:
            raise ValueError(f"audit event {self.event.meaning!r} needs at least one active participant")

    @property
    def name(self) -> str:
        return codes.event_name(self.event)

    def to_dict(self) -> dict[str, Any]:
        return _prune({
            "action": self.action,
            "details": dict(self.details),
            "event": self.event.to_dict(),
            "event_types": [t.to_dict() for t in self.event_types],
            "objects": [o.to_dict() for o in self.objects],
            "outcome_description": self.outcome_description,
            "participants": [p.to_dict() for p in self.participants],
            "source": self.source.to_dict(),
            "outcome": self.outcome,
            "time": self.time,
        })

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditRecord:
        try:
            return cls(
                event=Code.from_dict(data["event"]),
                action=str(data["action"]),
                outcome=int(data["outcome"]),
                participants=tuple(ActiveParticipant.from_dict(p) for p in data["participants"]),
                source=AuditSource.from_dict(data["source"]),
                time=str(data["time"]),
                event_types=tuple(Code.from_dict(t) for t in data.get("event_types", ())),
                objects=tuple(ParticipantObject.from_dict(o) for o in data.get("objects", ())),
                outcome_description=_opt(data, "outcome_description"),
                details=_pairs(data.get("details")),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not an audit record ({type(exc).__name__}: {exc})") from exc

    @classmethod
    def from_json(cls, raw: bytes | str) -> AuditRecord:
        return cls.from_dict(json.loads(raw))
