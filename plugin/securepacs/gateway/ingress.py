"""Ingress: a clinic's association to Orthanc, as a mixin of ``listener.Gateway``.

Identity binding against the trust snapshot (``peer_identity.check_ingress``), association limits, the
C-GET inspector, then the connection to Orthanc's internal port, which gets the RQ bytes unchanged.
Any refusal is an A-ASSOCIATE-RJ to the clinic, and nothing at all reaches Orthanc.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from securepacs.gateway.associate_pdu import Associate
from securepacs.gateway.association import AssociationSteps, Refused, peer_ip
from securepacs.gateway.connection_events import FAILED, ConnectionEvent
from securepacs.gateway.peer_identity import PeerIdentity, Refusal, check_ingress, congestion_refusal, limit_refusal
from securepacs.gateway.relay import Inspector, Relay
from securepacs.gateway.relay_endpoint import Endpoint

log = logging.getLogger(__name__)

_MAYBE_JUST_ENROLLED = frozenset({"clinic-not-enrolled", "calling-aet-not-enrolled-for-clinic"})


class IngressAssociations(AssociationSteps):
    """Clinic -> Orthanc: one handler per accepted connection on the ingress listener."""

    async def _ingress(self, sock: socket.socket, addr: Any) -> None:
        ip, port = peer_ip(addr)
        if not self.rate.allow(ip):
            sock.close()
            # Aggregated per sweep: a flood must not turn into a flood of event lines.
            self._rate_refusals[ip] = self._rate_refusals.get(ip, 0) + 1
            return
        event = ConnectionEvent("ingress", ip, port)
        try:
            if self._admit(sock, event):
                await self._ingress_association(sock, event)
        except Refused as refused:
            event.reason = refused.reason  # outcome stays "refused", or "failed" if the far side was down
        except asyncio.CancelledError:
            event.reason = event.reason or "shutting-down"
            raise
        except Exception:
            log.exception("gateway: unexpected error on an ingress connection from %s", ip)
            event.outcome, event.reason = FAILED, "internal-error"
        finally:
            self.events.emit(event)

    async def _ingress_association(self, sock: socket.socket, event: ConnectionEvent) -> None:
        client, peer, rq_bytes, rq = await self._handshake(sock, self.ingress_tls, event)
        try:
            await self._ingress_admitted(client, peer, rq_bytes, rq, event)
        finally:
            # Every path closes the client itself; this only catches the unexpected (a bug, a cancellation).
            if not client.writer.transport.is_closing():
                client.writer.transport.abort()

    async def _ingress_admitted(self, client: Endpoint, peer: PeerIdentity, rq_bytes: bytes, rq: Associate,
                                event: ConnectionEvent) -> None:
        refusal = await self._decide_ingress(peer, rq)
        if refusal is not None:
            await self._refuse(client, refusal.pdu())
            raise Refused(refusal.code)
        code = self.limits.acquire(peer.clinic)
        if code is not None:
            await self._refuse(client, limit_refusal(code).pdu())
            raise Refused(code)
        try:
            inspector: Inspector | None = None
            if self.inspector_factory is not None:
                try:
                    inspector = self.inspector_factory(peer, rq)
                except Exception:
                    log.exception("gateway: inspector factory failed for clinic %r", peer.clinic)
                if inspector is None and self.inspector_factory is not None:  # fail closed: no unchecked C-GET
                    await self._refuse(client, congestion_refusal("inspector-unavailable").pdu())
                    raise Refused("inspector-unavailable")
            upstream = await self._connect_upstream(client, event)
            upstream.writer.write(rq_bytes)  # unchanged: Orthanc sees exactly what the clinic sent
            relay = Relay(client, upstream, max_pdu=self.config.max_pdu, inspector=inspector,
                          answer_timeout=self.config.handshake_timeout)
            await self._run_relay(relay, peer.clinic, peer.serial, client, upstream, event)
        finally:
            self.limits.release(peer.clinic)

    async def _decide_ingress(self, peer: PeerIdentity, rq: Associate) -> Refusal | None:
        if self._closing:
            return congestion_refusal("shutting-down")
        trust = await self.trust.current()
        if self.trust.stale:
            return congestion_refusal("trust-state-unavailable")
        refusal = check_ingress(peer, rq.calling_aet, rq.called_aet, self.config.aet, trust)
        if refusal is not None and refusal.code in _MAYBE_JUST_ENROLLED:
            # A clinic enrolled a moment ago may not be in the snapshot yet: look again before refusing.
            # (Revocations never take this path: a stale "allowed" is what the periodic refresh bounds.)
            trust = await asyncio.to_thread(self.trust.refresh)
            refusal = check_ingress(peer, rq.calling_aet, rq.called_aet, self.config.aet, trust)
        return refusal

    async def _connect_upstream(self, client: Endpoint, event: ConnectionEvent) -> Endpoint:
        host, port = self.config.upstream
        upstream, problem = await self._dial(host, port, self.upstream_tls)
        if upstream is None:  # refused outside the except clause: see _handshake
            log.error("gateway cannot reach Orthanc at %s:%d: %s", host, port, problem)
            event.outcome = FAILED
            await self._refuse(client, congestion_refusal("archive-unreachable").pdu())
            raise Refused(f"archive-unreachable: {problem}")
        return upstream
