"""Keep Orthanc's DICOM modalities equal to the enrolled, non-revoked clinics' AE titles.

Orthanc only lets registered AE titles in (all ``DicomAlwaysAllow*`` are off), so this list *is* the
DICOM access list. The store is the source of truth; the plugin pushes it into Orthanc at start and
whenever ``securepacs clinic add|revoke`` bumps the store's generation, so enrolment and revocation
take effect within seconds without a restart.

After each change it records in the store which generation Orthanc now reflects (and, every few seconds,
that it is alive), so ``securepacs clinic add`` can return only once the new AE titles are accepted
(:func:`await_registration`) instead of leaving the first association to race the sync.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from securepacs.store.database import Store

log = logging.getLogger(__name__)

# Modalities this plugin manages carry this prefix; anything else an admin added by hand is left alone.
PREFIX = "sp-"
# A clinic without a registered retrieve address cannot be a C-MOVE destination: point it at a closed
# loopback port so a move fails at once instead of reaching some other service.
NO_MOVE_HOST = "127.0.0.1"
NO_MOVE_PORT = 1
# The sync's "I am alive" mark is refreshed at most this often (a small store write), and at every change.
HEARTBEAT_SECONDS = 5.0


class ModalityApi(Protocol):
    def list(self) -> dict[str, dict[str, Any]]: ...
    def put(self, name: str, body: dict[str, Any]) -> None: ...
    def delete(self, name: str) -> None: ...


def desired_modalities(store: Store, relay_port: int | None = None,
                       use_tls: bool = True) -> dict[str, dict[str, Any]]:
    """With the gateway (``relay_port``), C-MOVE sub-operations go to its loopback egress relay, which
    dials the clinic's registered address with the clinic CA verified; and C-GET is allowed because the
    gateway checks every C-GET against the clinic's studies."""
    wanted: dict[str, dict[str, Any]] = {}
    for clinic in store.list_clinics():
        if not clinic.active:
            continue
        has_address = bool(clinic.move_host and clinic.move_port)
        for index, aet in enumerate(clinic.aets):
            if relay_port and has_address:
                host, port = "127.0.0.1", relay_port
            else:
                host, port = clinic.move_host or NO_MOVE_HOST, clinic.move_port or NO_MOVE_PORT
            wanted[f"{PREFIX}{clinic.name}-{index}"] = {
                "AET": aet,
                "Host": host,
                "Port": port,
                "Manufacturer": "Generic",
                # Least privilege for a clinic device: echo, store, find (tenant-scoped by the plugin),
                # move (own studies, own destinations: checked by the plugin), get only behind the gateway
                # (Orthanc 1.10 gives plugins no C-GET hook; the gateway inspects each C-GET).
                "AllowEcho": True,
                "AllowStore": True,
                "AllowFind": True,
                "AllowMove": True,
                "AllowGet": bool(relay_port),
                "AllowEventReport": False,
                "AllowNAction": False,
                "AllowFindWorklist": False,
                # Orthanc's C-MOVE associations go to the gateway's egress relay: TLS unless the gateway
                # hop was configured plain (SecurePACS.InternalHop); the relay dials the clinic with TLS.
                "UseDicomTls": use_tls,
            }
    return wanted


def _same(current: dict[str, Any], body: dict[str, Any]) -> bool:
    return all(current.get(k) == v for k, v in body.items() if k != "Manufacturer")


class ModalitySync:
    def __init__(self, store: Store, api: ModalityApi, relay_port: int | None = None, use_tls: bool = True,
                 *, clock: Callable[[], float] = time.time):
        self._store = store
        self._api = api
        self._relay_port = relay_port
        self._use_tls = use_tls
        self._generation = -1
        self._clock = clock
        self._interval = 0.0  # the loop's period, published with the mark (0: no loop yet)
        self._marked_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.synced = False

    def sync(self) -> bool:
        """Bring Orthanc in line with the store if it changed; returns True if anything was pushed."""
        generation = self._store.generation()
        if generation == self._generation:
            self._mark(generation, force=False)
            return False
        wanted = desired_modalities(self._store, self._relay_port, self._use_tls)
        current = {k: v for k, v in self._api.list().items() if k.startswith(PREFIX)}
        for name in sorted(set(current) - set(wanted)):
            self._api.delete(name)
            log.info("unregistered modality %r", name)
        for name, body in sorted(wanted.items()):
            if name not in current or not _same(current[name], body):
                self._api.put(name, body)
                log.info("registered modality %r for AE title %r", name, body["AET"])
        self._generation = generation
        self.synced = True
        self._mark(generation, force=True)
        return True

    def _mark(self, generation: int, *, force: bool) -> None:
        now = self._clock()
        if force or now - self._marked_at >= HEARTBEAT_SECONDS:
            self._store.mark_modalities_applied(generation, now, self._interval)
            self._marked_at = now

    def start(self, interval: float, on_error: Callable[[Exception], None] | None = None) -> None:
        self._interval = interval
        if self.synced:
            self._mark(self._generation, force=True)  # publish the period at once

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.sync()
                    self.last_error = None
                except Exception as exc:  # keep syncing: a transient store lock must not stop revocation
                    self.last_error = str(exc)
                    if on_error:
                        on_error(exc)
                    else:
                        log.error("modality sync failed: %s", exc)

        self._thread = threading.Thread(target=loop, name="securepacs-modality-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self.synced:
            try:  # "not running": `clinic add` then says so at once instead of waiting
                self._store.mark_modalities_applied(self._generation, 0.0, self._interval)
            except Exception as exc:
                log.warning("could not mark the modality sync stopped: %s", exc)


# -- waiting for a change to reach Orthanc (the command line's side) ------------------------------------
APPLIED, NOT_RUNNING, NOT_CONFIRMED = "applied", "not-running", "not-confirmed"


@dataclass(frozen=True)
class Registration:
    state: str  # APPLIED | NOT_RUNNING | NOT_CONFIRMED
    waited: float  # seconds


def await_registration(store: Store, generation: int, timeout: float, *, settle: float = 0.0,
                       clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                       poll: float = 0.1) -> Registration:
    """Wait until the running plugin has pushed store ``generation`` (or later) into Orthanc's modalities.

    NOT_RUNNING at once when no plugin has marked itself alive recently (the archive is stopped, or was
    never started: it registers everything when it starts); NOT_CONFIRMED when a live plugin did not apply
    the change within ``timeout`` (stretched to two of its sync periods). After APPLIED, waits until
    ``settle`` seconds after the call (the gateway re-reads the store at most that long after a change).
    """
    started = clock()
    while True:
        mark = store.modalities_applied()
        now = clock()
        if mark is None or not mark[1] or now - mark[1] > 3 * max(mark[2], HEARTBEAT_SECONDS):
            return Registration(NOT_RUNNING, now - started)
        if mark[0] >= generation:
            break
        if now - started >= max(timeout, 2 * mark[2] + 1.0):
            return Registration(NOT_CONFIRMED, now - started)
        sleep(poll)
    if clock() - started < settle:
        sleep(settle - (clock() - started))
    return Registration(APPLIED, clock() - started)
