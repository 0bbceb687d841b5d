"""Associations with a DICOM peer: where to connect, TLS, TCP_NODELAY, and why a connection failed.

pynetdicom swallows transport and TLS errors (it logs them and reports only "not established"), so on
failure we look at what the peer answered (rejection, no accepted context) and, when it answered nothing,
repeat the TCP connect and TLS handshake once with the same settings to tell the user which side failed
and why. That probe only runs after a failure, so successful associations pay nothing for it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_P_ABORT
from pynetdicom.presentation import PresentationContext

from securepacs.client.client_tls import TlsConfig, create_context, explain_tls_error
from securepacs.client.errors import ClientError, ConnectionFailed
from securepacs.client.reactor import install_reactor_gate
from securepacs.config.environment import DEFAULT_AET, SettingsError, validate_aet

logger = logging.getLogger(__name__)

DEFAULT_CALLING_AET = "SPCLIENT"
MAX_CONTEXTS = 128  # PS3.8: presentation context IDs are the odd numbers 1-255
# The largest PDU we accept. pynetdicom's default (16 KiB) costs many small reads on C-GET; 128 KiB is the
# largest value DCMTK tools offer, so every peer we talk to handles it.
MAX_PDU = 131_072
# Seconds to wait for any DIMSE response; bounded so a silent peer cannot hang a transfer forever.
DEFAULT_DIMSE_TIMEOUT = 120.0
# How long the failure probe waits for a TLS alert after the handshake (TLS 1.3 servers reject a client
# certificate only after the client already considers the handshake done).
_ALERT_WAIT = 2.0

EventHandlers = Sequence[tuple[Any, ...]]


@dataclass(frozen=True)
class Connection:
    """A DICOM peer and how to reach it. ``tls=None`` means plain TCP (benchmarks against plain servers)."""

    host: str
    port: int
    calling_aet: str = DEFAULT_CALLING_AET
    called_aet: str = DEFAULT_AET
    tls: TlsConfig | None = None
    acse_timeout: float = 30.0
    dimse_timeout: float | None = DEFAULT_DIMSE_TIMEOUT
    max_pdu: int = field(default=MAX_PDU)

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ClientError(f"port {self.port} is invalid: expected a TCP port number 1-65535")
        try:
            validate_aet(self.calling_aet, "calling AE title (-aet)")
            validate_aet(self.called_aet, "called AE title (-aec)")
        except SettingsError as exc:
            raise ClientError(str(exc)) from exc

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A fresh client context for ``tls`` (build it once and share it between associations)."""
        return create_context(self.tls) if self.tls is not None else None


def set_tcp_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: disable Nagle's algorithm on the association's socket.

    DIMSE messages are written as several small PDUs and then wait for an answer; with Nagle the last
    segment sits in the kernel until the peer's delayed ACK (~40 ms) arrives, which capped C-STORE at
    ~30 instances/s. The event fires after connect() and the TLS handshake, before the first PDU is sent.
    """
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _NegotiationRecorder:
    """Remembers what the peer answered to our A-ASSOCIATE-RQ, for the failure message."""

    def __init__(self) -> None:
        self.accepted = False
        self.rejection: str | None = None
        self.aborted = False

    def on_acse_recv(self, event: evt.Event) -> None:
        primitive = event.primitive
        if isinstance(primitive, A_ASSOCIATE):
            if primitive.result == 0:
                self.accepted = True
            elif primitive.result in (1, 2):
                self.rejection = f"{primitive.result_str} by the {primitive.source_str}: {primitive.reason_str}"
        elif isinstance(primitive, (A_ABORT, A_P_ABORT)):
            self.aborted = True


def open_association(
    conn: Connection,
    contexts: Sequence[PresentationContext],
    *,
    ext_neg: Sequence[Any] | None = None,
    evt_handlers: EventHandlers = (),
    ssl_context: ssl.SSLContext | None = None,
) -> Association:
    """Request an association; return it established or raise ``ConnectionFailed`` saying why."""
    if conn.tls is not None and ssl_context is None:
        ssl_context = create_context(conn.tls)
    ae = AE(ae_title=conn.calling_aet)
    ae.acse_timeout = conn.acse_timeout
    ae.dimse_timeout = conn.dimse_timeout
    # Without a connection timeout an unreachable host blocks for the kernel's SYN retries (minutes).
    ae.connection_timeout = conn.acse_timeout
    recorder = _NegotiationRecorder()
    handlers = [
        (evt.EVT_CONN_OPEN, set_tcp_nodelay),
        # pynetdicom's reactor may otherwise take a DIMSE response meant for us (see reactor.py).
        (evt.EVT_CONN_OPEN, install_reactor_gate),
        (evt.EVT_ACSE_RECV, recorder.on_acse_recv),
        *evt_handlers,
    ]
    tls_args = (ssl_context, conn.host) if ssl_context is not None else None
    assoc = ae.associate(
        conn.host,
        conn.port,
        contexts=list(contexts),
        ae_title=conn.called_aet,
        max_pdu=conn.max_pdu,
        ext_neg=list(ext_neg or []),
        tls_args=tls_args,
        evt_handlers=handlers,
    )
    if assoc.is_established:
        logger.debug("association with %s established (%d contexts accepted)",
                     conn.address, len(assoc.accepted_contexts))
        return assoc
    raise ConnectionFailed(_explain_failure(conn, recorder, ssl_context, len(contexts)))


@contextlib.contextmanager
def associate(
    conn: Connection,
    contexts: Sequence[PresentationContext],
    *,
    ext_neg: Sequence[Any] | None = None,
    evt_handlers: EventHandlers = (),
    ssl_context: ssl.SSLContext | None = None,
) -> Iterator[Association]:
    """``with associate(conn, contexts) as assoc:`` — released on success, aborted on an exception."""
    assoc = open_association(conn, contexts, ext_neg=ext_neg, evt_handlers=evt_handlers,
                             ssl_context=ssl_context)
    try:
        yield assoc
    except BaseException:
        # An interrupted exchange (Ctrl-C, bug) cannot be released cleanly: the peer may still be
        # sending responses, so abort instead of waiting for them.
        if assoc.is_established:
            assoc.abort()
        raise
    else:
        close(assoc)


def close(assoc: Association) -> None:
    """Release an association that is still established (ignore one the peer already ended)."""
    if assoc.is_established:
        assoc.release()


def _explain_failure(
    conn: Connection, recorder: _NegotiationRecorder, ssl_context: ssl.SSLContext | None, n_contexts: int
) -> str:
    where = conn.address
    if recorder.rejection:
        return (f"{where} rejected the association ({recorder.rejection}); check -aec/--called-aet "
                f"{conn.called_aet!r} and that the server knows -aet/--calling-aet {conn.calling_aet!r}")
    if recorder.accepted:
        return (f"{where} accepted the association but none of the {n_contexts} requested presentation "
                "contexts (SOP class / transfer syntax pairs)")
    # An abort is also how a dropped TLS connection surfaces (TLS 1.3 servers reject a client
    # certificate after the handshake), so let the probe name a transport problem first.
    probe = diagnose(conn, ssl_context)
    if probe:
        return probe
    if recorder.aborted:
        hint = "; is it a TLS port? (--no-tls is only for plain benchmark servers)" if conn.tls is None else ""
        return f"{where} aborted the association request (called AE {conn.called_aet!r}){hint}"
    return (f"association with {where} failed: no answer to the association request within "
            f"--acse-timeout {conn.acse_timeout:g} s, or the connection was closed")


def diagnose(conn: Connection, ssl_context: ssl.SSLContext | None) -> str | None:
    """Connect (and handshake) once more to find a transport or TLS problem; None if none shows up."""
    where = conn.address
    timeout = conn.acse_timeout or 10.0
    try:
        raw = socket.create_connection((conn.host, conn.port), timeout=timeout)
    except ConnectionRefusedError:
        return f"connection refused by {where}: nothing listens on that port, or a firewall rejects it"
    except socket.gaierror as exc:
        return f"cannot resolve host {conn.host!r}: {exc.strerror or exc}"
    except TimeoutError:
        return f"timed out connecting to {where} after {timeout:g} s"
    except OSError as exc:
        return f"cannot connect to {where}: {exc.strerror or exc}"
    with raw:
        if ssl_context is None or conn.tls is None:
            return None
        try:
            with ssl_context.wrap_socket(raw, server_hostname=conn.host) as tls_sock:
                tls_sock.settimeout(min(_ALERT_WAIT, timeout))
                try:
                    data = tls_sock.recv(1)
                except TimeoutError:
                    return None  # the server waits for our A-ASSOCIATE-RQ: TLS itself is fine
                if not data:
                    return (f"{where} closed the connection right after the TLS handshake; it may have "
                            f"refused our client certificate ({conn.tls.client_cert_label})")
                return None
        except ssl.SSLError as exc:
            return explain_tls_error(exc, conn.tls, conn.host, conn.port)
        except OSError as exc:
            return f"{where} dropped the TLS connection: {exc.strerror or exc}"
