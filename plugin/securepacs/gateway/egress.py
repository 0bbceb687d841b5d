"""Egress: Orthanc's C-MOVE sub-associations to a clinic's registered SCP, as a mixin of ``listener.Gateway``.

They arrive on a loopback port with Orthanc's internal certificate (or plain, on the plain internal hop);
the called AE title picks the clinic (``peer_identity.check_egress``), whose SCP is dialled with the
archive's server certificate and must prove to be that clinic (``peer_identity.check_destination``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from securepacs.gateway import gateway_tls, pdu
from securepacs.gateway.associate_pdu import Associate
from securepacs.gateway.association import AssociationSteps, Refused, peer_ip
from securepacs.gateway.connection_events import FAILED, ConnectionEvent
from securepacs.gateway.peer_identity import (
    PeerIdentity,
    Refusal,
    TrustSnapshot,
    check_destination,
    check_egress,
    congestion_refusal,
    limit_refusal,
)
from securepacs.gateway.relay import Relay
from securepacs.gateway.relay_endpoint import READ_LIMIT, Endpoint
from securepacs.store.database import Clinic

log = logging.getLogger(__name__)


class EgressAssociations(AssociationSteps):
    """Orthanc -> clinic SCP (C-MOVE sub-operations): one handler per connection on the egress listener."""

    async def _egress(self, sock: socket.socket, addr: Any) -> None:
        ip, port = peer_ip(addr)
        event = ConnectionEvent("egress", ip, port)
        try:
            if self._admit(sock, event):
                await self._egress_association(sock, event)
        except Refused as refused:
            event.reason = refused.reason
        except asyncio.CancelledError:
            event.reason = event.reason or "shutting-down"
            raise
        except Exception:
            log.exception("gateway: unexpected error on an egress connection")
            event.outcome, event.reason = FAILED, "internal-error"
        finally:
            self.events.emit(event)

    async def _egress_association(self, sock: socket.socket, event: ConnectionEvent) -> None:
        if self.egress_tls is None:  # plain internal hop: the relay listens on loopback for our Orthanc
            orthanc, rq_bytes, rq = await self._plain_rq(sock, event)
        else:
            orthanc, _, rq_bytes, rq = await self._handshake(sock, self.egress_tls, event)
        try:
            await self._egress_admitted(orthanc, rq_bytes, rq, event)
        finally:
            if not orthanc.writer.transport.is_closing():
                orthanc.writer.transport.abort()

    async def _plain_rq(self, sock: socket.socket, event: ConnectionEvent) -> tuple[Endpoint, bytes, Associate]:
        """The A-ASSOCIATE-RQ of a plain connection (Orthanc's C-MOVE on the plain internal hop)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_LIMIT)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
        endpoint = Endpoint(reader, asyncio.StreamWriter(transport, protocol, reader, loop), "requestor")
        try:
            async with asyncio.timeout(self.config.handshake_timeout):
                rq_bytes, rq = await self._read_rq(endpoint)
        except TimeoutError:
            refused = Refused("handshake-timeout", pdu.build_abort())
        except Refused as exc:
            refused = exc
        else:
            event.calling_aet, event.called_aet = rq.calling_aet, rq.called_aet
            return endpoint, rq_bytes, rq
        await self._refuse(endpoint, refused.answer)  # outside the except clauses: see _handshake
        raise refused

    async def _egress_admitted(self, orthanc: Endpoint, rq_bytes: bytes, rq: Associate,
                               event: ConnectionEvent) -> None:
        # The event describes the destination: the requestor is always our own Orthanc.
        event.subject = event.serial = event.fingerprint_sha256 = event.clinic = None
        trust = await self.trust.current()
        decision = (congestion_refusal("trust-state-unavailable") if self.trust.stale
                    else check_egress(rq.calling_aet, rq.called_aet, self.config.aet, trust))
        if isinstance(decision, Refusal):
            await self._refuse(orthanc, decision.pdu())
            raise Refused(decision.code)
        clinic = decision
        event.clinic = clinic.name
        code = self.limits.acquire(None)  # global only: a clinic's retrieves must not starve its uploads
        if code is not None:
            await self._refuse(orthanc, limit_refusal(code).pdu())
            raise Refused(code)
        try:
            destination, peer = await self._connect_destination(clinic, orthanc, event, trust)
            destination.writer.write(rq_bytes)
            relay = Relay(orthanc, destination, max_pdu=self.config.max_pdu,
                          answer_timeout=self.config.handshake_timeout)
            await self._run_relay(relay, clinic.name, peer.serial, orthanc, destination, event)
        finally:
            self.limits.release(None)

    async def _connect_destination(self, clinic: Clinic, orthanc: Endpoint, event: ConnectionEvent,
                                   trust: TrustSnapshot) -> tuple[Endpoint, PeerIdentity]:
        host, port = str(clinic.move_host), int(clinic.move_port or 0)
        event.destination = f"{host}:{port}"
        destination, problem = await self._dial(host, port, self.destination_tls)
        if destination is None:  # refused outside the except clause: see _handshake
            event.outcome = FAILED
            await self._refuse(orthanc, congestion_refusal("destination-unreachable").pdu())
            raise Refused(f"destination-unreachable: {problem}")
        writer = destination.writer
        try:
            cert = gateway_tls.peer_certificate(writer.get_extra_info("ssl_object"))
            peer = PeerIdentity.from_certificate(cert) if cert is not None else None
        except ValueError:
            cert = peer = None
        mismatch = "destination-sent-no-usable-certificate" if peer is None or cert is None else \
            check_destination(peer, clinic, host, cert, trust)
        if peer is not None:
            event.subject, event.serial = peer.subject, str(peer.serial)
            event.fingerprint_sha256 = peer.fingerprint_sha256
        if mismatch is not None or peer is None:
            await destination.close(timeout=2.0)
            refusal = Refusal(mismatch or "destination-sent-no-usable-certificate",
                              reason=pdu.REASON_CALLED_AET_NOT_RECOGNIZED)
            await self._refuse(orthanc, refusal.pdu())
            raise Refused(refusal.code)
        return destination, peer
