"""The gateway: a mutual-TLS DICOM front door for Orthanc, plus the egress relay for C-MOVE.

Ingress (clinic -> Orthanc), per connection:
  1. per-IP rate limit and handshake cap, checked before any TLS work (over the limit: closed at once);
  2. TLS handshake (client certificate of the clinic CA required) and the first PDU, within
     ``handshake_timeout``; the first PDU must be a sane A-ASSOCIATE-RQ, else A-ABORT and close;
  3. identity binding against the store and the CRL (``identity.check_ingress``), association limits;
     any refusal is an A-ASSOCIATE-RJ and nothing at all is sent to Orthanc;
  4. connect to Orthanc's internal port (internal CA, our internal client certificate), send the RQ
     bytes unchanged, and relay (``relay.Relay``) until released, aborted, idle or revoked.
Egress (Orthanc -> clinic): Orthanc's C-MOVE sub-associations arrive on a loopback port with its internal
certificate; the called AE title picks the clinic (store), whose registered SCP is dialled with the
archive's server certificate and must prove to be that clinic (``identity.check_destination``).

Every connection produces one event (``events.EventLog``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import signal
import socket
import sqlite3
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any

from securepacs.config.gateway_settings import GatewayConfig, GatewayError
from securepacs.gateway import gateway_tls, pdu
from securepacs.gateway.connection_events import ACCEPTED, FAILED, REFUSED, ConnectionEvent, EventLog
from securepacs.gateway.limits import AssociationLimits, RateLimiter
from securepacs.gateway.peer_identity import (
    PeerIdentity,
    Refusal,
    TrustSnapshot,
    TrustState,
    check_destination,
    check_egress,
    check_ingress,
    congestion_refusal,
    limit_refusal,
)
from securepacs.gateway.relay import (
    READ_LIMIT,
    REJECTED_BY_ACCEPTOR,
    REVOKED,
    SHUTDOWN,
    Action,
    Endpoint,
    Inspector,
    InspectorFactory,
    Relay,
)
from securepacs.store.database import Clinic

__all__ = ["Action", "Gateway", "Inspector", "InspectorFactory", "run_gateway"]

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 1.0  # idle, revocation and rate-limit bookkeeping
_MAYBE_JUST_ENROLLED = frozenset({"clinic-not-enrolled", "calling-aet-not-enrolled-for-clinic"})
_ACCEPT_PAUSE = 0.1  # after EMFILE & co: let connections finish instead of spinning


class _Refused(Exception):
    """A connection is refused before relaying; ``answer`` (RJ or A-ABORT) is sent if the TLS session is up."""

    def __init__(self, reason: str, answer: bytes | None = None):
        super().__init__(reason)
        self.reason = reason
        self.answer = answer


def _peer_ip(addr: Any) -> tuple[str, int]:
    host, port = str(addr[0]), int(addr[1])
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(host.split("%", 1)[0])
        # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; one client, one rate bucket.
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            host = str(ip.ipv4_mapped)
    return host, port


def _nodelay(sock: socket.socket | Any) -> None:
    # DIMSE writes small PDUs and then waits for an answer: Nagle would hold the last one ~40 ms.
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _listen(address: tuple[str, int]) -> socket.socket:
    host, port = address
    try:
        if host in ("", "*"):
            if socket.has_dualstack_ipv6():
                sock = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=512)
            else:
                sock = socket.create_server(("0.0.0.0", port), backlog=512)  # noqa: S104 - every interface asked for
        else:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            sock = socket.create_server((host, port), family=family, backlog=512)
    except OSError as exc:
        raise GatewayError(f"cannot listen on {host or '*'}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _untraced(exc: BaseException) -> BaseException:
    """``exc`` without its traceback. asyncio keeps connection errors in futures of the protocol objects
    that the traceback's frames reference: left alone, that cycle pins the TLS buffers (256 KiB per
    connection) until the cyclic GC runs, which under a flood of failing handshakes is tens of MB."""
    exc.__traceback__ = None
    return exc


def _detached(refused: _Refused) -> _Refused:
    """The refusal without the traceback and context it was raised with (they pin the connection's frames)."""
    refused.__traceback__ = refused.__context__ = refused.__cause__ = None
    return refused


def _reason_of(exc: ssl.SSLError) -> str:
    reason = (exc.reason or str(exc)).lower().replace("_", " ")
    detail = getattr(exc, "verify_message", None)  # e.g. "certificate has expired"
    return f"{reason} ({detail})" if detail else reason


class Gateway:
    """Listeners, shared state and the per-connection handlers. Start with ``start``, stop with ``shutdown``."""

    def __init__(self, config: GatewayConfig, inspector_factory: InspectorFactory | None = None,
                 events: EventLog | None = None):
        self.config = config
        self.inspector_factory = inspector_factory
        if not gateway_tls.send_alerts_on_failed_handshakes():
            log.warning("this Python's asyncio is not the one the TLS alert fix was written for: refused "
                        "handshakes end without an alert")
        c = config
        self.ingress_tls = gateway_tls.server_context(c.server_cert, c.server_key, c.clinic_ca, "gateway ingress")
        # The internal certificates name 127.0.0.1/localhost: check the name like any TLS client would.
        # None: the plain internal hop (an explicit choice, SECUREPACS_INTERNAL_HOP=plain).
        self.upstream_tls: ssl.SSLContext | None = None
        self.egress_tls: ssl.SSLContext | None = None
        self.destination_tls: ssl.SSLContext | None = None
        if c.internal_tls:
            self.upstream_tls = gateway_tls.client_context(c.internal_cert, c.internal_key, c.internal_ca,
                                                   "gateway to Orthanc", check_hostname=True)
        if c.egress_listen is not None:
            if c.internal_tls:
                self.egress_tls = gateway_tls.server_context(c.internal_cert, c.internal_key, c.internal_ca,
                                                     "gateway egress")
            # Clinic SCP certificates carry clinic URIs rather than host names: check_destination decides.
            self.destination_tls = gateway_tls.client_context(c.server_cert, c.server_key, c.clinic_ca,
                                                      "gateway to clinic SCPs", check_hostname=False)
        self.trust = TrustState(c.store_path, c.crl, c.clinic_ca, c.refresh_interval)
        self.events = events if events is not None else EventLog(c.events_path)
        self.rate = RateLimiter(c.rate_per_ip, c.rate_burst)
        self.limits = AssociationLimits(c.max_associations, c.max_per_clinic)
        self.handshakes = 0
        self.relays: dict[Relay, tuple[str | None, int | None]] = {}  # relay -> (clinic, certificate serial)
        self.address: tuple[str, int] | None = None
        self.egress_address: tuple[str, int] | None = None
        self._listeners: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._rate_refusals: dict[str, int] = {}
        self._closing = False
        self._closed = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        ingress = _listen(self.config.listen)
        self._listeners.append(ingress)
        self.address = ingress.getsockname()[:2]
        self._accepting.append(asyncio.create_task(self._accept(ingress, self._ingress)))
        if self.config.egress_listen is not None:
            egress = _listen(self.config.egress_listen)
            self._listeners.append(egress)
            self.egress_address = egress.getsockname()[:2]
            self._accepting.append(asyncio.create_task(self._accept(egress, self._egress)))
        self._sweeper = asyncio.create_task(self._sweep())
        log.info("gateway listening on %s (clinics, mutual TLS) -> Orthanc %s:%d%s", self.address,
                 *self.config.upstream, f"; egress relay on {self.egress_address}" if self.egress_address else "")

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, let running associations finish for up to ``grace`` seconds, then abort them."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        grace = self.config.shutdown_grace if grace is None else grace
        for task in self._accepting:
            task.cancel()
        for sock in self._listeners:
            sock.close()
        running = len(self.relays)
        log.info("gateway shutting down: %d association(s) running, waiting up to %gs", running, grace)
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=grace)
        for relay in list(self.relays):
            relay.abort(SHUTDOWN)
        if self._handlers:
            _, pending = await asyncio.wait(set(self._handlers), timeout=10)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        self._flush_rate_refusals()
        self.events.close()
        self.trust.close()
        self._closed.set()
        log.info("gateway stopped")

    def abort_all(self) -> None:
        """Abort every running association at once (a second SIGTERM/SIGINT)."""
        for relay in list(self.relays):
            relay.abort(SHUTDOWN)

    # -- accepting ----------------------------------------------------------------------------------
    async def _accept(self, listener: socket.socket,
                      handler: Callable[[socket.socket, Any], Coroutine[Any, Any, None]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(listener)
            except OSError as exc:
                if self._closing:
                    return
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("gateway cannot accept connections: %s; pausing %gs", exc.strerror, _ACCEPT_PAUSE)
                    await asyncio.sleep(_ACCEPT_PAUSE)
                continue
            task = asyncio.create_task(handler(sock, addr))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _tls(self, sock: socket.socket, ctx: ssl.SSLContext) -> Endpoint:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_LIMIT)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=ctx, ssl_handshake_timeout=self.config.handshake_timeout)
        except ssl.SSLError as exc:
            sock.close()
            raise _Refused(f"tls-handshake-failed: {_reason_of(_untraced(exc))}") from None
        except OSError as exc:
            sock.close()
            _untraced(exc)
            raise _Refused("closed-during-tls-handshake") from None
        except BaseException:
            sock.close()
            raise
        return Endpoint(reader, asyncio.StreamWriter(transport, protocol, reader, loop), "requestor")

    async def _handshake(self, sock: socket.socket, ctx: ssl.SSLContext,
                         event: ConnectionEvent) -> tuple[Endpoint, PeerIdentity, bytes, pdu.Associate]:
        """TLS + first PDU within the handshake timeout. Raises _Refused (the endpoint is closed by then)."""
        endpoint: Endpoint | None = None
        self.handshakes += 1
        try:
            async with asyncio.timeout(self.config.handshake_timeout):
                endpoint = await self._tls(sock, ctx)
                ssl_object = endpoint.writer.get_extra_info("ssl_object")
                event.tls_version, event.cipher = gateway_tls.session_info(ssl_object)
                try:
                    cert = gateway_tls.peer_certificate(ssl_object)
                    peer = PeerIdentity.from_certificate(cert) if cert is not None else None
                except ValueError as exc:  # OpenSSL accepted it, cryptography cannot parse an extension
                    raise _Refused(f"unreadable-certificate: {exc}", pdu.build_abort()) from None
                if peer is None:  # CERT_REQUIRED makes this unreachable; never relay without an identity
                    raise _Refused("no-client-certificate", pdu.build_abort())
                event.subject, event.serial = peer.subject, str(peer.serial)
                event.fingerprint_sha256, event.clinic = peer.fingerprint_sha256, peer.clinic
                rq_bytes, rq = await self._read_rq(endpoint)
                event.calling_aet, event.called_aet = rq.calling_aet, rq.called_aet
            return endpoint, peer, rq_bytes, rq
        except TimeoutError:
            refused = _Refused("handshake-timeout", pdu.build_abort())
        except _Refused as exc:
            refused = exc
        except BaseException:
            if endpoint is not None:
                endpoint.writer.transport.abort()
            raise
        finally:
            self.handshakes -= 1
            if endpoint is not None:
                event.bytes_from_requestor = endpoint.bytes_read
        # Closing happens outside the except clauses on purpose: an error raised while closing would get
        # the refusal as its __context__ and be stored in the stream's futures, closing a reference cycle
        # (refusal -> traceback -> frames -> stream -> future -> error -> refusal) that only the cyclic GC
        # frees, with the connection's 256 KiB TLS buffer in it. Under a flood that is tens of MB.
        if endpoint is not None:
            await self._refuse(endpoint, refused.answer)
        try:
            raise _detached(refused)
        finally:
            refused = None  # type: ignore[assignment]  # this frame must not keep its own exception alive

    async def _read_rq(self, endpoint: Endpoint) -> tuple[bytes, pdu.Associate]:
        """The first PDU, which must be a well-formed A-ASSOCIATE-RQ of sane length."""
        try:
            head = await endpoint.read_exactly(pdu.HEADER_LENGTH)
        except asyncio.IncompleteReadError as exc:
            raise _Refused(f"not-dicom: closed after {len(exc.partial)} byte(s)") from None
        except OSError as exc:
            raise _Refused(f"connection-lost-before-associate-rq: {exc}") from None
        kind, length = pdu.HEADER.unpack(head)
        if kind != pdu.A_ASSOCIATE_RQ:
            reason = pdu.ABORT_REASON_UNEXPECTED_PDU if kind in pdu.PDU_NAMES else pdu.ABORT_REASON_UNRECOGNIZED_PDU
            raise _Refused(f"not-dicom: first PDU type 0x{kind:02X}, expected A-ASSOCIATE-RQ",
                           pdu.build_abort(pdu.ABORT_SOURCE_SERVICE_PROVIDER, reason))
        # Checked before reading the body: a hostile length (up to 4 GiB) never allocates anything.
        if not pdu.ASSOCIATE_FIXED_LENGTH <= length <= self.config.max_rq:
            raise _Refused(f"not-dicom: A-ASSOCIATE-RQ length {length} outside "
                           f"{pdu.ASSOCIATE_FIXED_LENGTH}-{self.config.max_rq}",
                           pdu.build_abort(pdu.ABORT_SOURCE_SERVICE_PROVIDER, pdu.ABORT_REASON_INVALID_PARAMETER))
        try:
            body = await endpoint.read_exactly(length)
        except asyncio.IncompleteReadError as exc:
            raise _Refused(f"not-dicom: A-ASSOCIATE-RQ truncated at {len(exc.partial)} of {length} bytes") from None
        except OSError as exc:
            raise _Refused(f"connection-lost-before-associate-rq: {exc}") from None
        rq_bytes = head + body
        try:
            rq = pdu.parse_associate(rq_bytes)
        except pdu.PduError as exc:
            raise _Refused(f"malformed-associate-rq: {exc}",
                           pdu.build_abort(pdu.ABORT_SOURCE_SERVICE_PROVIDER,
                                           pdu.ABORT_REASON_INVALID_PARAMETER)) from None
        if not rq.protocol_version & 1:
            raise _Refused(f"protocol-version-not-supported: 0x{rq.protocol_version:04X}",
                           pdu.build_reject(pdu.RESULT_REJECTED_PERMANENT, pdu.SOURCE_PROVIDER_ACSE,
                                            pdu.REASON_PROTOCOL_VERSION_NOT_SUPPORTED))
        return rq_bytes, rq

    async def _refuse(self, endpoint: Endpoint, answer: bytes | None) -> None:
        if answer is not None and not endpoint.writer.transport.is_closing():
            endpoint.writer.write(answer)
        await endpoint.close(timeout=2.0)

    def _admit(self, sock: socket.socket, event: ConnectionEvent) -> bool:
        """Checks before any TLS work: shutdown and the handshake cap."""
        if self._closing:
            event.reason = "shutting-down"
        elif self.handshakes >= self.config.max_handshakes:
            event.reason = "too-many-handshakes"
        else:
            _nodelay(sock)
            return True
        sock.close()
        return False

    # -- ingress: clinic -> Orthanc -------------------------------------------------------------------
    async def _ingress(self, sock: socket.socket, addr: Any) -> None:
        ip, port = _peer_ip(addr)
        if not self.rate.allow(ip):
            sock.close()
            # Aggregated per sweep: a flood must not turn into a flood of event lines.
            self._rate_refusals[ip] = self._rate_refusals.get(ip, 0) + 1
            return
        event = ConnectionEvent("ingress", ip, port)
        try:
            if self._admit(sock, event):
                await self._ingress_association(sock, event)
        except _Refused as refused:
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

    async def _ingress_admitted(self, client: Endpoint, peer: PeerIdentity, rq_bytes: bytes, rq: pdu.Associate,
                                event: ConnectionEvent) -> None:
        refusal = await self._decide_ingress(peer, rq)
        if refusal is not None:
            await self._refuse(client, refusal.pdu())
            raise _Refused(refusal.code)
        code = self.limits.acquire(peer.clinic)
        if code is not None:
            await self._refuse(client, limit_refusal(code).pdu())
            raise _Refused(code)
        try:
            inspector: Inspector | None = None
            if self.inspector_factory is not None:
                try:
                    inspector = self.inspector_factory(peer, rq)
                except Exception:
                    log.exception("gateway: inspector factory failed for clinic %r", peer.clinic)
                if inspector is None and self.inspector_factory is not None:  # fail closed: no unchecked C-GET
                    await self._refuse(client, congestion_refusal("inspector-unavailable").pdu())
                    raise _Refused("inspector-unavailable")
            upstream = await self._connect_upstream(client, event)
            upstream.writer.write(rq_bytes)  # unchanged: Orthanc sees exactly what the clinic sent
            relay = Relay(client, upstream, max_pdu=self.config.max_pdu, inspector=inspector,
                          answer_timeout=self.config.handshake_timeout)
            await self._run_relay(relay, peer.clinic, peer.serial, client, upstream, event)
        finally:
            self.limits.release(peer.clinic)

    async def _decide_ingress(self, peer: PeerIdentity, rq: pdu.Associate) -> Refusal | None:
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

    async def _dial(self, host: str, port: int, ctx: ssl.SSLContext | None) -> tuple[Endpoint | None, str]:
        """Connection to the acceptor side (Orthanc or a clinic's SCP; TLS unless ``ctx`` is None, which only
        the plain internal hop to Orthanc uses), or None and why not."""
        try:
            async with asyncio.timeout(self.config.handshake_timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=ctx, server_hostname=host if ctx is not None else None, limit=READ_LIMIT)
        except (OSError, TimeoutError) as exc:
            return None, str(_untraced(exc)) or "timed out"
        _nodelay(writer.get_extra_info("socket"))
        return Endpoint(reader, writer, "acceptor"), ""

    async def _connect_upstream(self, client: Endpoint, event: ConnectionEvent) -> Endpoint:
        host, port = self.config.upstream
        upstream, problem = await self._dial(host, port, self.upstream_tls)
        if upstream is None:  # refused outside the except clause: see _handshake
            log.error("gateway cannot reach Orthanc at %s:%d: %s", host, port, problem)
            event.outcome = FAILED
            await self._refuse(client, congestion_refusal("archive-unreachable").pdu())
            raise _Refused(f"archive-unreachable: {problem}")
        return upstream

    async def _run_relay(self, relay: Relay, clinic: str | None, serial: int | None, requestor: Endpoint,
                         acceptor: Endpoint, event: ConnectionEvent) -> None:
        self.relays[relay] = (clinic, serial)
        try:
            end = await relay.run()
        finally:
            del self.relays[relay]
            event.bytes_from_requestor = requestor.bytes_read
            event.bytes_from_acceptor = acceptor.bytes_read
        if end == REJECTED_BY_ACCEPTOR:
            event.outcome, event.reason = REFUSED, "rejected-by-acceptor"
            with contextlib.suppress(pdu.PduError):
                event.reason += " (result %d, source %d, reason %d)" % pdu.parse_reject(  # noqa: UP031
                    relay.first_answer)
        else:
            event.outcome, event.end, event.reason = ACCEPTED, end, relay.detail

    # -- egress: Orthanc -> clinic SCP (C-MOVE sub-operations) ----------------------------------------
    async def _egress(self, sock: socket.socket, addr: Any) -> None:
        ip, port = _peer_ip(addr)
        event = ConnectionEvent("egress", ip, port)
        try:
            if self._admit(sock, event):
                await self._egress_association(sock, event)
        except _Refused as refused:
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

    async def _plain_rq(self, sock: socket.socket, event: ConnectionEvent) -> tuple[Endpoint, bytes, pdu.Associate]:
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
            refused = _Refused("handshake-timeout", pdu.build_abort())
        except _Refused as exc:
            refused = exc
        else:
            event.calling_aet, event.called_aet = rq.calling_aet, rq.called_aet
            return endpoint, rq_bytes, rq
        await self._refuse(endpoint, refused.answer)  # outside the except clauses: see _handshake
        raise refused

    async def _egress_admitted(self, orthanc: Endpoint, rq_bytes: bytes, rq: pdu.Associate,
                               event: ConnectionEvent) -> None:
        # The event describes the destination: the requestor is always our own Orthanc.
        event.subject = event.serial = event.fingerprint_sha256 = event.clinic = None
        trust = await self.trust.current()
        decision = (congestion_refusal("trust-state-unavailable") if self.trust.stale
                    else check_egress(rq.calling_aet, rq.called_aet, self.config.aet, trust))
        if isinstance(decision, Refusal):
            await self._refuse(orthanc, decision.pdu())
            raise _Refused(decision.code)
        clinic = decision
        event.clinic = clinic.name
        code = self.limits.acquire(None)  # global only: a clinic's retrieves must not starve its uploads
        if code is not None:
            await self._refuse(orthanc, limit_refusal(code).pdu())
            raise _Refused(code)
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
            raise _Refused(f"destination-unreachable: {problem}")
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
            raise _Refused(refusal.code)
        return destination, peer

    # -- housekeeping -------------------------------------------------------------------------------
    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                self._sweep_once(await self.trust.current())
            except Exception:
                log.exception("gateway housekeeping failed")

    def _sweep_once(self, trust: TrustSnapshot) -> None:
        now = time.monotonic()
        for relay, (clinic, serial) in list(self.relays.items()):
            revoked = trust.revocation(clinic, serial)
            if revoked:
                log.warning("gateway: aborting an association of clinic %r: %s", clinic, revoked)
                relay.abort(REVOKED, revoked)
            elif now - relay.last_activity > self.config.idle_timeout:
                relay.abort("idle-timeout", f"no data for {self.config.idle_timeout:g}s")
        self.rate.prune()
        self._flush_rate_refusals()

    def _flush_rate_refusals(self) -> None:
        refusals, self._rate_refusals = self._rate_refusals, {}
        for ip, count in refusals.items():
            self.events.emit(ConnectionEvent("ingress", ip, 0, reason="rate-limited", count=count))


def run_gateway(config: GatewayConfig, inspector_factory: InspectorFactory | None = None,
                ready: Callable[[Gateway], None] | None = None, events: EventLog | None = None) -> int:
    """Run until SIGTERM/SIGINT (a second one aborts running associations at once); exit status.

    ``events`` lets the caller share the event log with the inspectors it built (default: a new one).
    """

    async def main() -> None:
        gateway = Gateway(config, inspector_factory, events)
        await gateway.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_signal() -> None:
            if stop.is_set():
                gateway.abort_all()
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        if ready is not None:
            ready(gateway)
        await stop.wait()
        await gateway.shutdown()

    try:
        asyncio.run(main())
    except (GatewayError, sqlite3.Error) as exc:
        log.error("%s", exc)
        return 2
    return 0
