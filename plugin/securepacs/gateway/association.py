"""The per-connection steps both directions of the gateway share, as a mixin of ``listener.Gateway``.

TLS and the first A-ASSOCIATE-RQ within the handshake timeout, the checks made before any TLS work,
refusals (RJ or A-ABORT, sent so that no reference cycle pins the connection's buffers), dialling the
acceptor side and running the relay. ``ingress`` and ``egress`` build their associations from these.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from typing import Any

from securepacs.config.gateway_settings import GatewayConfig
from securepacs.gateway import gateway_tls, pdu
from securepacs.gateway.associate_pdu import ASSOCIATE_FIXED_LENGTH, Associate, parse_associate
from securepacs.gateway.connection_events import ACCEPTED, REFUSED, ConnectionEvent, EventLog
from securepacs.gateway.limits import AssociationLimits, RateLimiter
from securepacs.gateway.peer_identity import PeerIdentity, TrustState
from securepacs.gateway.relay import REJECTED_BY_ACCEPTOR, InspectorFactory, Relay
from securepacs.gateway.relay_endpoint import READ_LIMIT, Endpoint


class Refused(Exception):
    """A connection is refused before relaying; ``answer`` (RJ or A-ABORT) is sent if the TLS session is up."""

    def __init__(self, reason: str, answer: bytes | None = None):
        super().__init__(reason)
        self.reason = reason
        self.answer = answer


def peer_ip(addr: Any) -> tuple[str, int]:
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


def _untraced(exc: BaseException) -> BaseException:
    """``exc`` without its traceback. asyncio keeps connection errors in futures of the protocol objects
    that the traceback's frames reference: left alone, that cycle pins the TLS buffers (256 KiB per
    connection) until the cyclic GC runs, which under a flood of failing handshakes is tens of MB."""
    exc.__traceback__ = None
    return exc


def _detached(refused: Refused) -> Refused:
    """The refusal without the traceback and context it was raised with (they pin the connection's frames)."""
    refused.__traceback__ = refused.__context__ = refused.__cause__ = None
    return refused


def _reason_of(exc: ssl.SSLError) -> str:
    reason = (exc.reason or str(exc)).lower().replace("_", " ")
    detail = getattr(exc, "verify_message", None)  # e.g. "certificate has expired"
    return f"{reason} ({detail})" if detail else reason


class AssociationSteps:
    """Handshake, refusal, dialling and relaying; the state they use is set up by ``listener.Gateway``."""

    config: GatewayConfig
    inspector_factory: InspectorFactory | None
    ingress_tls: ssl.SSLContext
    upstream_tls: ssl.SSLContext | None
    egress_tls: ssl.SSLContext | None
    destination_tls: ssl.SSLContext | None
    trust: TrustState
    events: EventLog
    rate: RateLimiter
    limits: AssociationLimits
    handshakes: int
    relays: dict[Relay, tuple[str | None, int | None]]
    _rate_refusals: dict[str, int]
    _closing: bool

    async def _tls(self, sock: socket.socket, ctx: ssl.SSLContext) -> Endpoint:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_LIMIT)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=ctx, ssl_handshake_timeout=self.config.handshake_timeout)
        except ssl.SSLError as exc:
            sock.close()
            raise Refused(f"tls-handshake-failed: {_reason_of(_untraced(exc))}") from None
        except OSError as exc:
            sock.close()
            _untraced(exc)
            raise Refused("closed-during-tls-handshake") from None
        except BaseException:
            sock.close()
            raise
        return Endpoint(reader, asyncio.StreamWriter(transport, protocol, reader, loop), "requestor")

    async def _handshake(self, sock: socket.socket, ctx: ssl.SSLContext,
                         event: ConnectionEvent) -> tuple[Endpoint, PeerIdentity, bytes, Associate]:
        """TLS + first PDU within the handshake timeout. Raises Refused (the endpoint is closed by then)."""
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
                    raise Refused(f"unreadable-certificate: {exc}", pdu.build_abort()) from None
                if peer is None:  # CERT_REQUIRED makes this unreachable; never relay without an identity
                    raise Refused("no-client-certificate", pdu.build_abort())
                event.subject, event.serial = peer.subject, str(peer.serial)
                event.fingerprint_sha256, event.clinic = peer.fingerprint_sha256, peer.clinic
                rq_bytes, rq = await self._read_rq(endpoint)
                event.calling_aet, event.called_aet = rq.calling_aet, rq.called_aet
            return endpoint, peer, rq_bytes, rq
        except TimeoutError:
            refused = Refused("handshake-timeout", pdu.build_abort())
        except Refused as exc:
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

    async def _read_rq(self, endpoint: Endpoint) -> tuple[bytes, Associate]:
        """The first PDU, which must be a well-formed A-ASSOCIATE-RQ of sane length."""
        try:
            head = await endpoint.read_exactly(pdu.HEADER_LENGTH)
        except asyncio.IncompleteReadError as exc:
            raise Refused(f"not-dicom: closed after {len(exc.partial)} byte(s)") from None
        except OSError as exc:
            raise Refused(f"connection-lost-before-associate-rq: {exc}") from None
        kind, length = pdu.HEADER.unpack(head)
        if kind != pdu.A_ASSOCIATE_RQ:
            reason = pdu.ABORT_REASON_UNEXPECTED_PDU if kind in pdu.PDU_NAMES else pdu.ABORT_REASON_UNRECOGNIZED_PDU
            raise Refused(f"not-dicom: first PDU type 0x{kind:02X}, expected A-ASSOCIATE-RQ",
                          pdu.build_abort(pdu.ABORT_SOURCE_SERVICE_PROVIDER, reason))
        # Checked before reading the body: a hostile length (up to 4 GiB) never allocates anything.
        if not ASSOCIATE_FIXED_LENGTH <= length <= self.config.max_rq:
            raise Refused(f"not-dicom: A-ASSOCIATE-RQ length {length} outside "
                          f"{ASSOCIATE_FIXED_LENGTH}-{self.config.max_rq}",
                          pdu.build_abort(pdu.ABORT_SOURCE_SERVICE_PROVIDER, pdu.ABORT_REASON_INVALID_PARAMETER))
        try:
            body = await endpoint.read_exactly(length)
        except asyncio.IncompleteReadError as exc:
            raise Refused(f"not-dicom: A-ASSOCIATE-RQ truncated at {len(exc.partial)} of {length} bytes") from None
        except OSError as exc:
            raise Refused(f"connection-lost-before-associate-rq: {exc}") from None
        rq_bytes = head + body
        try:
            rq = parse_associate(rq_bytes)
        except pdu.PduError as exc:
            raise Refused(f"malformed-associate-rq: {exc}",
                          pdu.build_abort(pdu.ABORT_SOURCE_SERVICE_PROVIDER,
                                          pdu.ABORT_REASON_INVALID_PARAMETER)) from None
        if not rq.protocol_version & 1:
            raise Refused(f"protocol-version-not-supported: 0x{rq.protocol_version:04X}",
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
