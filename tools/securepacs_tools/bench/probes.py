"""Per-connection measurements: TLS handshake, association set-up, and the gateway's memory over many
associations.

The gateway limits new connections per source IP (token bucket, ``GatewayConfig.rate_per_ip``), so the
bench's own probes against it are paced below that rate: a refused probe would measure the limiter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable, Iterator

from securepacs.client import ClientError, Connection, TlsConfig, create_context, echo
from securepacs.config.gateway_settings import GatewayConfig
from securepacs.gateway import associate_pdu, pdu
from securepacs_tools.bench.common import BENCH_AET, SERVER_AET, Credentials
from securepacs_tools.bench.model import EchoRun
from securepacs_tools.bench.processes import Running, status_kb

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
# A quarter below the gateway's default per-IP rate, so the bucket never runs dry under our probes.
PACE_PER_S = 0.75 * next(f.default for f in dataclasses.fields(GatewayConfig) if f.name == "rate_per_ip")


class Pacer:
    """Spaces connection starts at least ``1 / rate`` seconds apart (0: no pacing)."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._clock, self._sleep = clock, sleep
        self._next = 0.0

    def wait(self) -> None:
        now = self._clock()
        if now < self._next:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + self.interval


def context(creds: Credentials, version: str | None) -> ssl.SSLContext:
    return create_context(TlsConfig(ca=creds.ca, cert=creds.cert, key=creds.key, version=version,
                                    check_hostname=False))


def _recv_exact(sock: ssl.SSLSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def _read_pdu(sock: ssl.SSLSocket) -> tuple[int, bytes]:
    kind, length = struct.unpack(">BxI", _recv_exact(sock, 6))
    if length > 1 << 20:
        raise ConnectionError(f"PDU 0x{kind:02X} announces {length} bytes")
    return kind, _recv_exact(sock, length)


def handshake_ms(run: Running, ctx: ssl.SSLContext, version: str) -> float:
    """TCP connect + full mutual-TLS handshake against the DICOM port, in milliseconds."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", run.dicom_port), timeout=10) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.do_handshake()
            elapsed = (time.perf_counter() - t0) * 1000
            if tls.version() != f"TLSv{version}":
                raise RuntimeError(f"asked for TLS {version}, negotiated {tls.version()}")
    return elapsed


_ASSOCIATE_RQ = associate_pdu.build_associate(
    pdu.A_ASSOCIATE_RQ, SERVER_AET, BENCH_AET,
    [associate_pdu.PresentationContext(1, VERIFICATION, (IMPLICIT_LE,))],
)


def association_ms(run: Running, ctx: ssl.SSLContext) -> float:
    """TCP connect + TLS + A-ASSOCIATE-RQ until the A-ASSOCIATE-AC, in milliseconds; then a clean release.

    Through the gateway this includes what the TLS handshake alone hides: the gateway's identity check and
    its own TLS handshake with Orthanc before Orthanc's answer comes back.
    """
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", run.dicom_port), timeout=10) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(_ASSOCIATE_RQ)
            kind, _ = _read_pdu(tls)
            elapsed = (time.perf_counter() - t0) * 1000
            if kind != pdu.A_ASSOCIATE_AC:
                raise RuntimeError(f"association answered with {pdu.pdu_name(kind)}, not an A-ASSOCIATE-AC")
            tls.sendall(pdu.build_release_rq())
            _read_pdu(tls)
    return elapsed


def connection_timings(runs: dict[str, Running], versions: Iterable[str], count: int,
                       log: Callable[[str], None]) -> tuple[dict[tuple[str, str], list[float]],
                                                             dict[tuple[str, str], list[float]]]:
    """Handshake and association times for every TLS configuration and version, interleaved (each
    configuration once per iteration, in turn) so drift on this shared machine hits them alike."""
    handshakes: dict[tuple[str, str], list[float]] = {}
    associations: dict[tuple[str, str], list[float]] = {}
    versions = tuple(versions)
    contexts = {(k, v): context(r.creds, v) for k, r in runs.items() if r.creds for v in versions}
    pacer = Pacer(PACE_PER_S)
    broken: set[tuple[str, str, str]] = set()
    for _ in range(count):
        for (key, version), ctx in contexts.items():
            run = runs[key]
            for what, into in (("handshake", handshakes), ("association", associations)):
                if (key, version, what) in broken:
                    continue
                if run.gateway is not None:
                    pacer.wait()
                try:
                    ms = handshake_ms(run, ctx, version) if what == "handshake" else association_ms(run, ctx)
                except (OSError, RuntimeError) as exc:
                    broken.add((key, version, what))
                    log(f"bench: {what} {key} TLS {version} failed: {exc}")
                    continue
                into.setdefault((key, version), []).append(ms)
    return handshakes, associations


@contextlib.contextmanager
def _quiet_pynetdicom() -> Iterator[None]:
    """pynetdicom logs five INFO lines per association; a thousand of them would bury the bench's log."""
    logger = logging.getLogger("pynetdicom")
    saved = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(saved)


def echo_run(run: Running, count: int, warmup: int, checkpoint_every: int = 100) -> EchoRun:
    """``count`` sequential C-ECHO associations through the gateway (our client, full TLS handshakes),
    paced below the gateway's rate limit, with the gateway's RSS after ``warmup`` more and along the way."""
    pid = run.gateway_pid
    if pid is None or run.creds is None:
        raise RuntimeError(f"configuration {run.spec.key} has no gateway")
    conn = Connection("127.0.0.1", run.dicom_port, calling_aet=BENCH_AET, called_aet=SERVER_AET,
                      acse_timeout=15, dimse_timeout=15,
                      tls=TlsConfig(ca=run.creds.ca, cert=run.creds.cert, key=run.creds.key, check_hostname=False))
    pacer = Pacer(PACE_PER_S)
    failures, first_error = 0, ""

    def one() -> None:
        nonlocal failures, first_error
        pacer.wait()
        try:
            status = echo(conn)
            if status != 0:
                raise ClientError(f"C-ECHO status 0x{status:04X}")
        except ClientError as exc:
            failures += 1
            first_error = first_error or str(exc)[:300]

    with _quiet_pynetdicom():
        for _ in range(warmup):
            one()
        failures = 0  # only the measured run's failures count; a warm-up error still shows in first_error
        before = status_kb(pid, "VmRSS")
        peak, checkpoints = before, [(0, before)]
        t0 = time.perf_counter()
        for i in range(1, count + 1):
            one()
            rss = status_kb(pid, "VmRSS")
            peak = max(peak, rss)
            if i % checkpoint_every == 0 or i == count:
                checkpoints.append((i, rss))
        seconds = time.perf_counter() - t0
    after = status_kb(pid, "VmRSS")
    return EchoRun(count, warmup, seconds, failures, before, after, max(peak, after), checkpoints, first_error)
