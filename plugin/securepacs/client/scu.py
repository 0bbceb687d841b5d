"""Verification and Storage SCU: ``echo`` and ``store`` (files sent from disk, N associations in parallel).

``store`` scans the inputs twice instead of keeping a list: the first pass counts files and bytes and
collects the (SOP class, transfer syntax) pairs to propose; the second re-reads each file's meta and
feeds a bounded queue consumed by one thread per association. Memory therefore depends on the number of
distinct pairs and on ``parallel``, not on the number of files.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import code_to_category

from securepacs.client.connection import MAX_CONTEXTS, Connection, associate, close, open_association
from securepacs.client.errors import ClientError, ConnectionFailed
from securepacs.client.progress import Progress
from securepacs.client.scan import DicomFile, Unsendable, check_paths, inspect, iter_files, read_for_sending
from securepacs.client.summary import FAILURE, NOT_SENT, SUCCESS, WARNING, Results, StoreSummary
from securepacs.dicom import status_codes

logger = logging.getLogger(__name__)


def echo(conn: Connection) -> int:
    """Send a C-ECHO and return the peer's status code (0x0000 on success)."""
    with associate(conn, [build_context(Verification)]) as assoc:
        status = assoc.send_c_echo()
    if "Status" not in status:
        raise ConnectionFailed(f"no C-ECHO response from {conn.address} (DIMSE timeout or association aborted)")
    return int(status.Status)


class _SendFromDisk:
    """Scoped ``STORE_SEND_CHUNKED_DATASET``: pynetdicom streams a file's encoded bytes only when this
    module-level flag is on (otherwise ``send_c_store(path)`` decodes and re-encodes the whole file).
    It only changes how *paths* are sent, and is restored when the last concurrent ``store`` ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved = False

    @contextlib.contextmanager
    def enabled(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._saved = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
                pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = self._saved


_send_from_disk = _SendFromDisk()


def _describe_pair(sop_class: str, syntax: str) -> str:
    return f"{UID(sop_class).name} in {UID(syntax).name}"


def _send_one(assoc: Association, item: DicomFile, msg_id: int,
              accepted: set[tuple[str, str]]) -> tuple[str, str]:
    if item.from_disk and item.pair not in accepted:
        # Encoded bytes go out as they are, so only the file's own transfer syntax will do.
        return NOT_SENT, f"the server did not accept {_describe_pair(*item.pair)}"
    if not item.from_disk and all(sop_class != item.sop_class_uid for sop_class, _ in accepted):
        return NOT_SENT, f"the server did not accept {item.sop_class_uid.name}"
    try:
        payload: Path | Dataset = item.path if item.from_disk else read_for_sending(item)
        status = assoc.send_c_store(payload, msg_id=msg_id)
    except OSError as exc:
        return NOT_SENT, f"cannot read: {exc.strerror or exc}"
    except (ValueError, AttributeError) as exc:  # no matching context / missing elements / cannot encode
        return NOT_SENT, str(exc)
    if "Status" not in status:
        if assoc.is_established:
            # No answer leaves the association unusable (the peer gave up on this message, or our DIMSE
            # timeout fired): end it so the next file goes out on a fresh association, not a dead one.
            assoc.abort()
        return FAILURE, "no C-STORE response (DIMSE timeout or association aborted)"
    code = int(status.Status)
    category = code_to_category(code)
    detail = status_codes.describe(code)
    comment = status.get("ErrorComment")
    if comment:
        detail += f" - {comment}"
    if category == "Success":
        return SUCCESS, ""
    if category == "Warning":
        return WARNING, detail
    return FAILURE, detail


def _accepted(assoc: Association) -> set[tuple[str, str]]:
    return {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}


class _Worker(threading.Thread):
    """One association: takes files from the shared queue until it gets ``None``."""

    def __init__(self, conn: Connection, ssl_context: ssl.SSLContext | None,
                 contexts: list[PresentationContext], jobs: queue.Queue[DicomFile | None],
                 results: Results, stop: threading.Event, index: int) -> None:
        super().__init__(name=f"store-{index}", daemon=True)
        self.conn, self.ssl_context, self.contexts = conn, ssl_context, contexts
        self.jobs, self.results, self.stop = jobs, results, stop
        self.error: ConnectionFailed | None = None
        self.ready = threading.Event()  # set once the first association attempt is over

    def _connect(self) -> Association | None:
        try:
            return open_association(self.conn, self.contexts, ssl_context=self.ssl_context)
        except ConnectionFailed as exc:
            self.error = exc
        except Exception as exc:  # unexpected, but the producer and the summary must still hear of it
            logger.debug("association attempt failed", exc_info=True)
            self.error = ConnectionFailed(f"association with {self.conn.address} failed: {exc}")
        return None

    def _connect_first(self) -> Association | None:
        try:
            return self._connect()
        finally:
            self.ready.set()  # the producer waits for every worker's first attempt

    def run(self) -> None:
        assoc = self._connect_first()
        if assoc is None:
            return
        accepted = _accepted(assoc)
        msg_id = 0
        try:
            while (item := self.jobs.get()) is not None:
                if self.stop.is_set():
                    self.results.record(item.path, NOT_SENT, "interrupted")
                    continue
                for attempt in (1, 2):
                    if not assoc.is_established:
                        # The previous exchange ended the association (peer abort, timeout): try a new one.
                        logger.warning("association %s ended; reconnecting", self.name)
                        if (new := self._connect()) is None:
                            self.results.record(item.path, NOT_SENT, str(self.error))
                            return
                        assoc, msg_id, accepted = new, 0, _accepted(new)
                    msg_id = msg_id % 65535 + 1
                    try:
                        outcome, detail = _send_one(assoc, item, msg_id, accepted)
                        break
                    except RuntimeError as exc:
                        if attempt == 1 and not assoc.is_established:
                            continue  # the association died between the check and the send: resend once
                        outcome, detail = FAILURE, f"{type(exc).__name__}: {exc}"
                        break
                    except Exception as exc:  # one bad file must not take the other files down with it
                        logger.debug("sending %s failed", item.path, exc_info=True)
                        outcome, detail = FAILURE, f"{type(exc).__name__}: {exc}"
                        break
                logger.debug("%s %s (SOP Instance UID %s)", outcome, item.path, item.sop_instance_uid)
                self.results.record(item.path, outcome, detail, item.size)
        finally:
            if self.stop.is_set() and assoc.is_established:
                assoc.abort()
            else:
                close(assoc)


@dataclass
class _Plan:
    files: int = 0
    sendable: int = 0
    sendable_bytes: int = 0
    pairs: dict[tuple[str, str], int] = field(default_factory=dict)  # files per context pair

    def groups(self) -> list[set[tuple[str, str]]]:
        ordered = sorted(self.pairs)
        return [set(ordered[i:i + MAX_CONTEXTS]) for i in range(0, len(ordered), MAX_CONTEXTS)]


def _plan(paths: Sequence[Path]) -> _Plan:
    plan = _Plan()
    for path in iter_files(paths):
        plan.files += 1
        item = inspect(path)
        if isinstance(item, DicomFile):
            plan.sendable += 1
            plan.sendable_bytes += item.size
            plan.pairs[item.pair] = plan.pairs.get(item.pair, 0) + 1
    return plan


def store(
    conn: Connection,
    paths: Iterable[Path | str],
    *,
    parallel: int = 1,
    progress: bool = False,
) -> StoreSummary:
    """Send every DICOM file in ``paths`` (files or folders, recursive) with C-STORE.

    Part 10 files are sent from disk without decoding. ``parallel`` associations share the work. Raises
    ``ConnectionFailed`` if no association at all can be established, ``ClientError`` for bad paths.
    """
    if parallel < 1:
        raise ClientError(f"--parallel {parallel} is invalid: expected 1 or more")
    roots = [Path(p) for p in paths]
    check_paths(roots)
    plan = _plan(roots)
    if plan.files == 0:
        raise ClientError(f"no files found in {', '.join(map(str, roots))}")
    results = Results(Progress(plan.files, plan.sendable_bytes, enabled=progress))
    ssl_context = conn.ssl_context()
    groups = plan.groups() or [set()]
    start = time.monotonic()
    try:
        with _send_from_disk.enabled():
            for index, group in enumerate(groups):
                _store_group(conn, ssl_context, roots, group, plan, index == 0, parallel, results)
    finally:
        results.progress.close()
        results.summary.seconds = time.monotonic() - start
    return results.summary


def _store_group(conn: Connection, ssl_context: ssl.SSLContext | None, roots: list[Path],
                 group: set[tuple[str, str]], plan: _Plan, first: bool, parallel: int,
                 results: Results) -> None:
    """Send the files whose context is in ``group``; the first group also reports unsendable files."""
    workers: list[_Worker] = []
    jobs: queue.Queue[DicomFile | None] = queue.Queue(maxsize=4 * parallel)
    stop = threading.Event()
    lost: str | None = None  # set when no association is left: the rest is counted as not sent
    if group:
        contexts = [build_context(sop_class, [syntax]) for sop_class, syntax in sorted(group)]
        workers = [_Worker(conn, ssl_context, contexts, jobs, results, stop, i)
                   for i in range(min(parallel, sum(plan.pairs[pair] for pair in group)))]
        for w in workers:
            w.start()
        for w in workers:
            w.ready.wait()
        errors = [w.error for w in workers if w.error is not None]
        if errors and len(errors) == len(workers):
            if first:
                raise errors[0]  # nothing sent yet: a plain connection error says it best
            lost = str(errors[0])
        for e in errors:
            logger.warning("one of %d associations failed: %s", len(workers), e)

    try:
        for path in iter_files(roots):
            item = inspect(path)
            if isinstance(item, Unsendable):
                if first:
                    results.record(item.path, NOT_SENT, item.reason)
                continue
            if item.pair not in group:
                if first and item.pair not in plan.pairs:
                    results.record(item.path, NOT_SENT, "file changed while sending")
                continue
            if lost is None and not _put(jobs, item, workers):
                lost = _last_error(workers)
                results.summary.stopped_early = f"all associations lost: {lost}"
                logger.error("all associations lost: %s", lost)
            if lost is not None:
                results.record(item.path, NOT_SENT, lost)
    except BaseException:
        stop.set()  # Ctrl-C or a bug: workers mark what is left as not sent and abort
        raise
    finally:
        for _ in workers:
            _put(jobs, None, workers)
        for w in workers:
            w.join()
        # Files queued for workers that died before taking them.
        with contextlib.suppress(queue.Empty):
            while True:
                left = jobs.get_nowait()
                if left is not None:
                    results.record(left.path, NOT_SENT, _last_error(workers))


def _put(jobs: queue.Queue[DicomFile | None], item: DicomFile | None, workers: list[_Worker]) -> bool:
    """Queue ``item``; False if no worker is left to take it (all associations lost)."""
    while True:
        try:
            jobs.put(item, timeout=0.2)
            return True
        except queue.Full:
            if not any(w.is_alive() for w in workers):
                return False


def _last_error(workers: list[_Worker]) -> str:
    errors = [str(w.error) for w in workers if w.error is not None]
    return errors[-1] if errors else "no association left to send it"
