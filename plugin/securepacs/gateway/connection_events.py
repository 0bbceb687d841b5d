"""One structured event per gateway connection: who was on the wire, what was decided, how much flowed.

Events are JSON lines (for the audit trail) and log lines (for operators). They name peers, certificates,
AE titles and byte counts only: the gateway never parses a data set, so no patient data can end up here.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from securepacs.config.gateway_settings import GatewayError
from securepacs.gateway.association_audit import GatewayAudit

log = logging.getLogger(__name__)

ACCEPTED = "accepted"  # the association was relayed (its ``end`` says how it finished)
REFUSED = "refused"  # the gateway refused it (``reason`` says why); nothing reached the other side
FAILED = "failed"  # the gateway wanted to relay but the far side was unreachable or refused


@dataclass
class ConnectionEvent:
    """Filled in while a connection is handled, written once when it ends."""

    direction: str  # ingress (clinic -> Orthanc) | egress (Orthanc -> clinic, C-MOVE)
    peer_ip: str
    peer_port: int
    started: float = field(default_factory=time.time)
    outcome: str = REFUSED
    reason: str | None = None
    end: str | None = None  # for accepted associations: released | aborted | closed | idle-timeout | ...
    subject: str | None = None
    fingerprint_sha256: str | None = None
    serial: str | None = None  # decimal, as the store records it
    clinic: str | None = None
    calling_aet: str | None = None
    called_aet: str | None = None
    tls_version: str | None = None
    cipher: str | None = None
    destination: str | None = None  # egress: host:port of the clinic's SCP
    bytes_from_requestor: int = 0
    bytes_from_acceptor: int = 0
    count: int = 1  # > 1 only for aggregated rate-limit refusals
    duration_s: float = 0.0

    def finish(self) -> None:
        self.duration_s = round(time.time() - self.started, 3)

    def as_dict(self) -> dict[str, Any]:
        data = {"kind": "connection", **asdict(self)}
        data["time"] = datetime.fromtimestamp(self.started, UTC).isoformat(timespec="milliseconds")
        del data["started"]
        return {k: v for k, v in data.items() if v is not None}


class EventLog:
    """Appends events to ``path`` (if given) and logs each one. Never raises: events must not stop traffic."""

    def __init__(self, path: Path | None, audit: GatewayAudit | None = None):
        self.path = path
        self.audit = audit  # the archive's audit trail: accepted associations and every refusal
        self._lock = threading.Lock()
        self._fh: Any = None
        self._inode: tuple[int, int] | None = None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._open()
            except OSError as exc:
                raise GatewayError(f"cannot open the gateway event file {path}: {exc.strerror or exc}") from None

    def _open(self) -> None:
        assert self.path is not None
        # O_APPEND: concurrent writers (a restarted gateway, a second one) never interleave inside a line.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._fh = os.fdopen(fd, "a", encoding="utf-8")
        st = os.fstat(fd)
        self._inode = (st.st_dev, st.st_ino)

    def _reopen_if_rotated(self) -> None:
        # logrotate (or an operator) may move the file away: follow the name, like a syslog daemon.
        try:
            st = os.stat(self.path)  # type: ignore[arg-type]
            if (st.st_dev, st.st_ino) == self._inode:
                return
        except FileNotFoundError:
            pass
        self.close()
        self._open()

    def emit(self, event: ConnectionEvent) -> None:
        event.finish()
        data = event.as_dict()
        level = logging.INFO if event.outcome == ACCEPTED else logging.WARNING
        if event.reason in QUIET_REASONS:
            level = logging.DEBUG
        log.log(level, "gateway %s %s%s peer=%s:%s clinic=%r calling=%r called=%r serial=%s tls=%s "
                "bytes=%d/%d %.3fs%s", event.direction, event.outcome,
                f" ({event.reason})" if event.reason else "", event.peer_ip, event.peer_port, event.clinic,
                event.calling_aet, event.called_aet, event.serial, event.tls_version,
                event.bytes_from_requestor, event.bytes_from_acceptor, event.duration_s,
                f" end={event.end}" if event.end else "")
        self._append(data)
        if self.audit is not None:
            self.audit.connection(data)

    def record(self, kind: str, details: dict[str, Any]) -> None:
        """A security event that is not a connection (e.g. a refused C-GET from the inspector)."""
        log.info("gateway %s %s", kind, json.dumps(details, ensure_ascii=True, sort_keys=True))
        self._append({"kind": kind, "time": datetime.now(UTC).isoformat(timespec="milliseconds"), **details})
        if self.audit is not None:
            self.audit.security(kind, details)

    def _append(self, data: dict[str, Any]) -> None:
        if self.path is None:
            return
        line = json.dumps(data, ensure_ascii=True, separators=(",", ":")) + "\n"
        with self._lock:
            try:
                self._reopen_if_rotated()
                self._fh.write(line)
                self._fh.flush()
            except OSError as exc:
                log.error("cannot write gateway event to %s: %s", self.path, exc.strerror or exc)

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()
            self.audit = None
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError as exc:
                log.error("cannot close %s: %s", self.path, exc.strerror or exc)
            self._fh = None


# Connections that open and close without a byte (port probes, health checks) are logged at debug level
# only; they are still written to the event file.
QUIET_REASONS = frozenset({"closed-before-tls"})
