"""The gateway's part of the audit trail: who connected, and every refusal, as PS3.15 records.

The plugin records what happened to the data (stores, queries, retrievals) but sees every clinic as the
gateway's loopback connection; only the gateway knows the peer's address and certificate. So each
accepted clinic association becomes a User Authentication (login) record of the clinic's node, and each
refusal a Security Alert (Node Authentication, or Use of Restricted Function for a refused C-GET).
Connections that never started TLS (port probes) are left to the gateway's event file.
"""

from __future__ import annotations

import logging
from typing import Any

from securepacs.audit import ActiveParticipant, AuditRecord, AuditSource, AuditTrail, codes, events

log = logging.getLogger(__name__)

# Connections that never presented a certificate (port probes, the launcher's readiness check): the
# gateway's event file keeps them; the trail records who tried to authenticate.
UNRECORDED_REASONS = frozenset({"closed-before-tls", "closed-during-tls-handshake"})
# Inspector events that are not refusals (the event file keeps them; the trail has the plugin's record).
ALLOWED_KINDS = frozenset({"cget-allowed"})


class GatewayAudit:
    def __init__(self, trail: AuditTrail, aet: str, host: str):
        self.trail = trail
        self.source = AuditSource(f"securepacs-gateway@{host}", site=aet)
        self.gateway = ActiveParticipant(f"gateway:{aet}", ae_title=aet)

    def connection(self, data: dict[str, Any]) -> None:
        """``data``: a finished ConnectionEvent as a dict (see ``events.ConnectionEvent``)."""
        record = self._connection_record(data)
        if record is not None:
            self._write(record)

    def _connection_record(self, data: dict[str, Any]) -> AuditRecord | None:
        if data.get("direction") != "ingress" or data.get("reason") in UNRECORDED_REASONS:
            return None
        peer = ActiveParticipant(
            data.get("calling_aet") or data.get("subject") or "unknown-peer",
            ae_title=data.get("calling_aet"), clinic=data.get("clinic"), cert_sha256=data.get("fingerprint_sha256"),
            network_access_point=data.get("peer_ip"),
        )
        details = {k: str(data[k]) for k in ("subject", "serial", "called_aet", "tls_version", "cipher", "end",
                                              "bytes_from_requestor", "bytes_from_acceptor", "duration_s", "count")
                   if data.get(k) is not None}
        if data.get("outcome") == "accepted":
            return events.user_authentication(self.source, peer, login=True, authenticator=self.gateway,
                                              details={"via": "DICOM TLS association", **details})
        return events.security_alert(
            self.source, codes.NODE_AUTHENTICATION, self.gateway, [events.node(peer.user_id)], performer=peer,
            outcome=codes.OUTCOME_MINOR_FAILURE if data.get("outcome") == "failed" else codes.OUTCOME_SERIOUS_FAILURE,
            description=f"{data.get('outcome')}: {data.get('reason') or 'refused'}", details=details)

    def security(self, kind: str, details: dict[str, Any]) -> None:
        """A refusal inside an association (e.g. a C-GET of another clinic's data)."""
        if kind in ALLOWED_KINDS:
            return  # not a refusal: the archive's ownership endpoint records the retrieve itself
        peer = ActiveParticipant(str(details.get("calling_aet") or details.get("clinic") or "unknown-peer"),
                                 ae_title=details.get("calling_aet"), clinic=details.get("clinic"))
        subjects = [events.study(uid) for uid in details.get("study_uids", []) if isinstance(uid, str) and uid]
        self._write(events.security_alert(
            self.source, codes.USE_OF_RESTRICTED_FUNCTION, self.gateway, subjects, performer=peer,
            outcome=codes.OUTCOME_SERIOUS_FAILURE, description=f"{kind}: {details.get('reason', '')}",
            details={k: str(v) for k, v in details.items() if k != "study_uids"}))

    def _write(self, record: AuditRecord) -> None:
        try:
            self.trail.append(record)
        except OSError as exc:  # the connection was already decided; say loudly that its record is missing
            log.error("cannot write to the audit trail %s: %s", self.trail.path, exc.strerror or exc)

    def close(self) -> None:
        self.trail.close()
