"""The gateway: a mutual-TLS DICOM front door for Orthanc, plus the egress relay for C-MOVE.

This module holds the listening sockets, the accept loops, housekeeping (idle, revocation, rate-limit
events), shutdown and ``run_gateway``; the per-connection work is mixed into ``Gateway`` from
``association`` (shared steps), ``ingress`` and ``egress``.

Ingress (clinic -> Orthanc), per connection:
  1. per-IP rate limit and handshake cap, checked before any TLS work (over the limit: closed at once);
  2. TLS handshake (client certificate of the clinic CA required) and the first PDU, within
     ``handshake_timeout``; the first PDU must be a sane A-ASSOCIATE-RQ, else A-ABORT and close;
  3. identity binding against the store and the CRL (``peer_identity.check_ingress``), association limits;
     any refusal is an A-ASSOCIATE-RJ and nothing at all is sent to Orthanc;
  4. connect to Orthanc's internal port (internal CA, our internal client certificate), send the RQ
     bytes unchanged, and relay (``relay.Relay``) until released, aborted, idle or revoked.
Egress (Orthanc -> clinic): Orthanc's C-MOVE sub-associations arrive on a loopback port with its internal
certificate; the called AE title picks the clinic (store), whose registered SCP is dialled with the
archive's server certificate and must prove to be that clinic (``peer_identity.check_destination``).

Every connection produces one event (``connection_events.EventLog``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import sqlite3
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any

from securepacs.config.gateway_settings import GatewayConfig, GatewayError
from securepacs.gateway import gateway_tls
from securepacs.gateway.connection_events import ConnectionEvent, EventLog
from securepacs.gateway.egress import EgressAssociations
from securepacs.gateway.ingress import IngressAssociations
from securepacs.gateway.limits import AssociationLimits, RateLimiter
from securepacs.gateway.peer_identity import TrustSnapshot, TrustState
from securepacs.gateway.relay import REVOKED, SHUTDOWN, InspectorFactory, Relay

__all__ = ["Gateway", "run_gateway"]

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 1.0  # idle, revocation and rate-limit bookkeeping
_ACCEPT_PAUSE = 0.1  # after EMFILE & co: let connections finish instead of spinning


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


class Gateway(IngressAssociations, EgressAssociations):
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
