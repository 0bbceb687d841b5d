"""Forward the trail to a syslog collector over mutual TLS (RFC 5424 messages, RFC 5425 framing).

The trail is the backlog; a cursor file remembers the last entry known delivered (seq, hash, byte
offset). Delivery is at-least-once, in seq order. Because RFC 5425 has no application-level
acknowledgement, an entry counts as delivered when, after its batch was sent on a connection,

1. the peer's TCP stack acknowledged every byte of the batch (the socket's unacknowledged output
   queue, SIOCOUTQ, drained to 0 within ``ack_timeout``), and
2. the connection then stayed open for ``grace`` seconds: no EOF, reset or TLS alert from the peer.

Only then is the cursor advanced (atomically, fsynced). Anything else - refused connection, TLS
failure, send error, a peer that closes or resets within the grace period - drops the connection and
the next attempt resends every entry after the cursor, so the collector may see duplicates (same seq
and hash: recognise them by seq). What remains possible: a collector that acknowledged at TCP level,
kept the connection open for ``grace`` and then lost its in-memory queue; use a disk-assisted queue
on the collector (or RELP) if that matters.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import select
import socket
import ssl
import struct
import termios
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from securepacs.audit.chain import GENESIS, LineError, TrailEntry, iter_raw_lines, parse_line
from securepacs.audit.rfc5424 import FACILITY_AUTHPRIV, format_message, frame, local_hostname
from securepacs.durable.atomic_file import write_atomically

log = logging.getLogger(__name__)


class ForwardingError(Exception):
    """The collector could not be reached or did not take the batch; the cursor did not move."""


@dataclass(frozen=True, slots=True)
class Cursor:
    seq: int = 0  # last seq known delivered (0: none)
    hash: str = GENESIS
    offset: int = 0  # byte offset just after that entry's line

    @classmethod
    def load(cls, path: Path) -> Cursor:
        try:
            data = json.loads(path.read_bytes())
            return cls(int(data["seq"]), str(data["hash"]), int(data["offset"]))
        except FileNotFoundError:
            return cls()
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"unreadable audit forwarding cursor {path}: {exc}") from exc

    def save(self, path: Path) -> None:
        data = json.dumps({"hash": self.hash, "offset": self.offset, "seq": self.seq}, sort_keys=True).encode()
        # The rename itself must survive a power loss too, or we resend (harmless) or worse.
        write_atomically(path, data, 0o640)


def client_context(ca_file: str | os.PathLike[str], cert_file: str | os.PathLike[str],
                   key_file: str | os.PathLike[str]) -> ssl.SSLContext:
    """Mutual TLS client context: TLS >= 1.2, server certificate and host name verified against ``ca_file``."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=os.fspath(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(os.fspath(cert_file), os.fspath(key_file))
    return context


def _unacked_bytes(sock: socket.socket) -> int:
    """Bytes sent but not yet acknowledged by the peer's TCP (Linux SIOCOUTQ); 0 where unsupported."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, AttributeError):
        return 0


class SyslogForwarder:
    """Tails one trail into one collector. Run a single forwarder per cursor file."""

    def __init__(
        self,
        trail_path: str | os.PathLike[str],
        cursor_path: str | os.PathLike[str],
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        *,
        server_hostname: str | None = None,
        payload: str = "json",
        facility: int = FACILITY_AUTHPRIV,
        hostname: str | None = None,
        batch_size: int = 500,
        grace: float = 1.0,
        ack_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        poll_interval: float = 0.5,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        self.trail_path = Path(trail_path)
        self.cursor_path = Path(cursor_path)
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname or host
        self.payload = payload
        self.facility = facility
        self.hostname = hostname or local_hostname()
        self.batch_size = batch_size
        self.grace, self.ack_timeout, self.connect_timeout = grace, ack_timeout, connect_timeout
        self.poll_interval = poll_interval
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.cursor = Cursor.load(self.cursor_path)
        self._sock: ssl.SSLSocket | None = None

    # --- reading the backlog ------------------------------------------------------------------

    def _pending(self) -> list[tuple[TrailEntry, int]]:
        """Up to batch_size entries after the cursor, with the byte offset after each."""
        try:
            stream = open(self.trail_path, "rb")  # noqa: SIM115 - closed below, reopened each pump on purpose
        except FileNotFoundError:
            return []
        with stream:
            if not self._cursor_matches(stream):
                self._relocate_cursor(stream)
            batch: list[tuple[TrailEntry, int]] = []
            prev_hash = self.cursor.hash
            for raw in iter_raw_lines(stream, self.cursor.offset):
                if not raw.complete or len(batch) >= self.batch_size:
                    break  # a line without LF is being written (or torn): never forward half a line
                try:
                    entry = parse_line(raw.data)
                except LineError as exc:
                    raise ForwardingError(f"trail {self.trail_path} byte {raw.offset}: {exc}; run verify") from None
                if entry.prev != prev_hash:
                    log.warning("audit forwarder: chain break before seq %d in %s (forwarding anyway; run verify)",
                                entry.seq, self.trail_path)
                prev_hash = entry.hash
                batch.append((entry, raw.end))
            return batch

    def _cursor_matches(self, stream: BinaryIO) -> bool:
        """The line at the cursor offset must be seq+1 chained to the cursor hash (or be the end of file)."""
        if self.cursor.offset > os.fstat(stream.fileno()).st_size:
            return False
        for raw in iter_raw_lines(stream, self.cursor.offset):
            if not raw.complete:
                return True
            try:
                entry = parse_line(raw.data)
            except LineError:
                return False
            return entry.seq == self.cursor.seq + 1 and entry.prev == self.cursor.hash
        return True

    def _relocate_cursor(self, stream: BinaryIO) -> None:
        """The file no longer fits the cursor: find the delivered entry again, or start over."""
        wanted = self.cursor
        for raw in iter_raw_lines(stream):
            if not raw.complete:
                break
            with contextlib.suppress(LineError):
                entry = parse_line(raw.data)
                if entry.seq == wanted.seq and entry.hash == wanted.hash:
                    self.cursor = Cursor(entry.seq, entry.hash, raw.end)
                    log.info("audit forwarder: cursor seq %d found at byte %d", entry.seq, raw.end)
                    return
        log.error("audit forwarder: %s no longer holds delivered seq %d with its hash (truncated, rewritten or "
                  "replaced); resending from seq 1", self.trail_path, wanted.seq)
        self.cursor = Cursor()

    # --- the connection -----------------------------------------------------------------------

    def _connect(self) -> ssl.SSLSocket:
        if self._sock is not None:
            try:
                self._check_open(self._sock, 0)
                return self._sock
            except ForwardingError:
                self.close()
        try:
            raw = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as exc:
            raise ForwardingError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        try:
            sock = self.ssl_context.wrap_socket(raw, server_hostname=self.server_hostname)
        except (OSError, ssl.SSLError) as exc:
            raw.close()
            raise ForwardingError(f"TLS handshake with {self.host}:{self.port} failed: {exc}") from exc
        sock.settimeout(self.ack_timeout)
        log.info("audit forwarder: connected to %s:%d (%s)", self.host, self.port, sock.version())
        self._sock = sock
        return sock

    def _check_open(self, sock: ssl.SSLSocket, timeout: float) -> None:
        """Return if the peer has not closed within ``timeout`` seconds; raise ForwardingError if it did."""
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP)
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            if not poller.poll(int(left * 1000)):
                if left <= 0:
                    return
                continue
            sock.settimeout(0)
            try:
                data = sock.recv(4096)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                data = None  # a TLS record that is not application data (e.g. a session ticket)
            except (OSError, ssl.SSLError) as exc:
                raise ForwardingError(f"connection to {self.host}:{self.port} broke: {exc}") from exc
            finally:
                sock.settimeout(self.ack_timeout)
            if data == b"":
                raise ForwardingError(f"{self.host}:{self.port} closed the connection")
            if time.monotonic() >= deadline:
                return

    def _confirm(self, sock: ssl.SSLSocket) -> None:
        deadline = time.monotonic() + self.ack_timeout
        while _unacked_bytes(sock) > 0:
            if time.monotonic() > deadline:
                raise ForwardingError(f"{self.host}:{self.port} did not acknowledge within {self.ack_timeout}s")
            self._check_open(sock, 0.02)
        self._check_open(sock, self.grace)

    def close(self) -> None:
        """Close the connection with a TLS close_notify (collectors log an unclean close as an error)."""
        if self._sock is not None:
            sock, self._sock = self._sock, None
            with contextlib.suppress(OSError, ssl.SSLError, ValueError):
                sock.settimeout(1.0)
                sock = sock.unwrap()  # type: ignore[assignment]
            with contextlib.suppress(OSError):
                sock.close()

    # --- pumping ------------------------------------------------------------------------------

    def pump_once(self) -> int:
        """Send the next batch and wait for it to count as delivered; return how many entries were."""
        batch = self._pending()
        if not batch:
            return 0
        data = b"".join(
            frame(format_message(e, hostname=self.hostname, payload=self.payload, facility=self.facility))
            for e, _end in batch
        )
        sock = self._connect()
        try:
            sock.sendall(data)
            self._confirm(sock)
        except (OSError, ssl.SSLError, ForwardingError) as exc:
            self.close()
            if isinstance(exc, ForwardingError):
                raise
            raise ForwardingError(f"sending to {self.host}:{self.port} failed: {exc}") from exc
        last, end = batch[-1]
        self.cursor = Cursor(last.seq, last.hash, end)
        self.cursor.save(self.cursor_path)
        log.info("audit forwarder: delivered seq %d..%d to %s:%d", batch[0][0].seq, last.seq, self.host, self.port)
        return len(batch)

    def run(self, stop_event: threading.Event) -> None:
        """Forward until ``stop_event`` is set, retrying with exponential backoff while the collector is away."""
        delay = self.backoff_initial
        try:
            while not stop_event.is_set():
                try:
                    sent = self.pump_once()
                except ForwardingError as exc:
                    wait = delay * (0.8 + 0.4 * secrets.randbelow(1001) / 1000)  # jitter: no thundering herd
                    log.warning("audit forwarder: %s; entries after seq %d pending, retry in %.1fs",
                                exc, self.cursor.seq, wait)
                    stop_event.wait(wait)
                    delay = min(delay * 2, self.backoff_max)
                    continue
                except Exception:
                    log.exception("audit forwarder: unexpected error after seq %d", self.cursor.seq)
                    stop_event.wait(delay)
                    delay = min(delay * 2, self.backoff_max)
                    continue
                delay = self.backoff_initial
                if sent < self.batch_size:
                    stop_event.wait(self.poll_interval)
        finally:
            self.close()
