"""Relaying one accepted association between the requestor and the acceptor, without re-encoding.

Requestor -> acceptor is read PDU by PDU: each header is checked (type allowed after negotiation, length
within the negotiated maximum) and each P-DATA-TF's PDV items must tile it and use accepted presentation
contexts, before a byte is forwarded; an optional ``Inspector`` sees (and may hold back or answer) each PDU.
Acceptor -> requestor: the first PDU (A-ASSOCIATE-AC/RJ) is parsed, the rest is spliced as raw chunks while
only PDU headers are followed (so an A-ABORT of ours can be placed between PDUs). With an inspector that
direction is relayed whole PDU by whole PDU instead, so the inspector's replies never land inside one.

Memory per association is bounded by the reader buffers, one PDU (<= the negotiated maximum) and the
transport write buffers (flow control via ``drain``). Each side is a ``relay_endpoint.Endpoint``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from securepacs.gateway import pdu
from securepacs.gateway.associate_pdu import Associate, parse_associate
from securepacs.gateway.peer_identity import PeerIdentity
from securepacs.gateway.relay_endpoint import CLOSE_GRACE, READ_LIMIT, Endpoint

log = logging.getLogger(__name__)

# How an association ended. Abortive ends make the gateway send A-ABORTs of its own.
RELEASED = "released"
ABORTED_BY_REQUESTOR = "aborted-by-requestor"
ABORTED_BY_ACCEPTOR = "aborted-by-acceptor"
REJECTED_BY_ACCEPTOR = "rejected-by-acceptor"
CLOSED_BY_REQUESTOR = "closed-by-requestor"
CLOSED_BY_ACCEPTOR = "closed-by-acceptor"
PROTOCOL_ERROR = "protocol-error"
IDLE_TIMEOUT = "idle-timeout"
SHUTDOWN = "shutdown"
REVOKED = "revoked"
INSPECTOR_CLOSED = "inspector-closed"


@dataclass
class Action:
    """What to do with one requestor PDU: forward these PDUs, reply these to the requestor, maybe close.

    ``close`` ends the association after ``forward`` and ``reply`` are written: the gateway then sends
    an A-ABORT (service-provider) to both sides and closes both connections.
    """

    forward: list[bytes] = field(default_factory=list)
    reply: list[bytes] = field(default_factory=list)
    close: bool = False


class Inspector(Protocol):
    """Looks at one association's traffic. One instance per association, from an ``InspectorFactory``."""

    def server_pdu(self, pdu_type: int, pdu: bytes) -> None:
        """The acceptor's first PDU (A-ASSOCIATE-AC with the negotiated contexts, or RJ/ABORT)."""

    async def client_pdu(self, pdu_type: int, pdu: bytes) -> Action:
        """Each requestor PDU after negotiation (full bytes, header included), already checked for framing."""
        ...


# Called once per accepted ingress association with the peer's identity and its A-ASSOCIATE-RQ;
# returning None relays that association uninspected.
InspectorFactory = Callable[[PeerIdentity, Associate], Inspector | None]


class Relay:
    """Moves one association's PDUs until it is released, aborted or times out."""

    def __init__(self, requestor: Endpoint, acceptor: Endpoint, *, max_pdu: int,
                 inspector: Inspector | None = None, answer_timeout: float = 10.0):
        self.requestor = requestor
        self.acceptor = acceptor
        self.max_pdu = max_pdu
        self.inspector = inspector
        self.answer_timeout = answer_timeout
        self.last_activity = time.monotonic()
        self.end: str | None = None
        self.detail: str | None = None  # for protocol errors: what was wrong
        self.answer: Associate | None = None  # the A-ASSOCIATE-AC, once seen
        self.first_answer = b""  # the acceptor's first PDU as received (AC, RJ or A-ABORT)
        self._limit = max_pdu
        self._accepted: frozenset[int] = frozenset()
        self._release_requested = False
        self._aborts_sent = False
        self._downstream = pdu.PduBoundary()  # acceptor -> requestor, spliced
        self._tasks: list[asyncio.Task[str]] = []
        self._abort_requested = False

    # -- control from outside (idle sweeper, revocation, shutdown) --
    def abort(self, reason: str, detail: str | None = None) -> None:
        """End the association now: A-ABORT to both sides (where it cannot split a PDU), then close."""
        if self.end is None:
            self.end, self.detail = reason, detail
        self._abort_requested = True
        # Written now, while both pumps are parked between PDUs they forward (writes are synchronous).
        self._send_aborts()
        for task in self._tasks:
            task.cancel()

    # -- the association ----------------------------------------------------------------------------
    async def run(self) -> str:
        """Relay until the association is over; returns how it ended. Both connections are closed after."""
        try:
            if await self._start(self._negotiate()):
                upstream = self._start(self._pump_requestor())
                downstream = self._start(self._pump_framed() if self.inspector else self._splice())
                await self._both(upstream, downstream)
        finally:
            await self._finish()
        return self.end or CLOSED_BY_REQUESTOR

    def _start(self, coro: Awaitable[str]) -> asyncio.Task[str]:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        if self.end is not None:  # aborted before this phase began
            task.cancel()
        return task

    async def _both(self, upstream: asyncio.Task[str], downstream: asyncio.Task[str]) -> None:
        done, _ = await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        first = done.pop()
        if not first.cancelled() and self.end is None:
            self.end = first.result()
        other = downstream if first is upstream else upstream
        # The direction that ended tells the far side: close its destination, the other follows.
        if first is upstream:
            await self.acceptor.close()
        else:
            await self.requestor.close()
        _, pending = await asyncio.wait({other}, timeout=CLOSE_GRACE)
        for task in pending:
            task.cancel()
        await asyncio.gather(other, return_exceptions=True)

    async def _negotiate(self) -> bool:
        """Wait for the acceptor's answer to the A-ASSOCIATE-RQ and pass it on; True if accepted."""
        try:
            kind, head, body = await asyncio.wait_for(self.acceptor.read_pdu(self.max_pdu), self.answer_timeout)
        except (TimeoutError, asyncio.IncompleteReadError, OSError, pdu.PduError) as exc:
            self.end, self.detail = PROTOCOL_ERROR, f"no A-ASSOCIATE answer from the acceptor ({_describe(exc)})"
            return False
        self._touch()
        answer = self.first_answer = head + body
        if kind == pdu.A_ASSOCIATE_AC:
            try:
                self.answer = parse_associate(answer)
            except pdu.PduError as exc:
                self.end, self.detail = PROTOCOL_ERROR, f"acceptor sent a malformed A-ASSOCIATE-AC: {exc}"
                return False
            self._accepted = self.answer.accepted_context_ids
            # The AC carries the largest PDU the acceptor receives; a requestor must not send more.
            if self.answer.max_length:
                self._limit = min(self.max_pdu, self.answer.max_length)
        elif kind not in (pdu.A_ASSOCIATE_RJ, pdu.A_ABORT):
            self.end, self.detail = PROTOCOL_ERROR, f"acceptor answered with {pdu.pdu_name(kind)}"
            return False
        if self.inspector is not None:
            try:
                self.inspector.server_pdu(kind, answer)
            except Exception:
                log.exception("inspector failed on the %s; aborting the association", pdu.pdu_name(kind))
                self._protocol_error("inspector error")
                return False
        self.requestor.writer.write(answer)
        with contextlib.suppress(OSError):
            await self.requestor.drain()
        if kind != pdu.A_ASSOCIATE_AC:
            self.end = REJECTED_BY_ACCEPTOR if kind == pdu.A_ASSOCIATE_RJ else ABORTED_BY_ACCEPTOR
            self._aborts_sent = True  # the acceptor's own answer ends it: nothing of ours to add
            return False
        return True

    def _touch(self) -> None:
        self.last_activity = time.monotonic()

    async def _pump_requestor(self) -> str:
        source, sink = self.requestor, self.acceptor.writer
        while True:
            try:
                kind, head, body = await source.read_pdu(self._limit)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    return self._protocol_error(f"requestor closed the connection inside a PDU "
                                                f"({len(exc.partial)} byte(s) of it read)")
                return RELEASED if self._release_requested else CLOSED_BY_REQUESTOR
            except pdu.PduError as exc:
                return self._protocol_error(str(exc), pdu.ABORT_REASON_INVALID_PARAMETER)
            except OSError as exc:
                return self._connection_lost("requestor", exc)
            self._touch()
            problem = _check_after_negotiation(kind, body, self._accepted)
            if problem:
                reason = (pdu.ABORT_REASON_UNRECOGNIZED_PDU if kind not in pdu.PDU_NAMES
                          else pdu.ABORT_REASON_UNEXPECTED_PDU if kind in _NEGOTIATION
                          else pdu.ABORT_REASON_INVALID_PARAMETER)
                return self._protocol_error(problem, reason)
            if self.inspector is None:
                # One call: the TLS transport then encrypts both and sends them with one syscall.
                sink.writelines((head, body))
            else:
                try:
                    action = await self.inspector.client_pdu(kind, head + body)
                except Exception:
                    log.exception("inspector failed on a %s; aborting the association", pdu.pdu_name(kind))
                    return self._protocol_error("inspector error")
                for item in action.forward:
                    sink.write(item)
                for item in action.reply:
                    self.requestor.writer.write(item)
                if action.close:
                    self.end = INSPECTOR_CLOSED
                    self._send_aborts()
                    return INSPECTOR_CLOSED
            if kind == pdu.A_RELEASE_RQ:
                self._release_requested = True
            try:
                await self.acceptor.drain()
            except OSError as exc:
                return self._connection_lost("acceptor", exc)
            if kind == pdu.A_ABORT:
                self._aborts_sent = True
                return ABORTED_BY_REQUESTOR

    async def _splice(self) -> str:
        source, sink, boundary = self.acceptor, self.requestor, self._downstream
        while True:
            try:
                chunk = await source.read_some(READ_LIMIT)
            except OSError as exc:
                return self._connection_lost("acceptor", exc)
            if not chunk:
                return self._acceptor_closed(boundary.last_type, boundary.at_boundary)
            boundary.feed(chunk)
            self._touch()
            sink.writer.write(chunk)
            try:
                await sink.drain()
            except OSError as exc:
                return self._connection_lost("requestor", exc)

    async def _pump_framed(self) -> str:
        source, sink = self.acceptor, self.requestor
        last: int | None = None
        while True:
            try:
                kind, head, body = await source.read_pdu(self.max_pdu)
            except asyncio.IncompleteReadError as exc:
                return self._acceptor_closed(last, not exc.partial)
            except pdu.PduError as exc:
                return self._protocol_error(str(exc))
            except OSError as exc:
                return self._connection_lost("acceptor", exc)
            last = kind
            self._touch()
            sink.writer.writelines((head, body))  # no await in between: a whole PDU, never split by replies
            try:
                await sink.drain()
            except OSError as exc:
                return self._connection_lost("requestor", exc)

    def _acceptor_closed(self, last_type: int | None, at_boundary: bool) -> str:
        if not at_boundary:
            return self._protocol_error("acceptor closed the connection inside a PDU")
        if last_type == pdu.A_ABORT:
            self._aborts_sent = True
            return ABORTED_BY_ACCEPTOR
        if last_type == pdu.A_RELEASE_RP and self._release_requested:
            return RELEASED
        return CLOSED_BY_ACCEPTOR

    def _connection_lost(self, side: str, exc: BaseException) -> str:
        self.detail = f"connection to the {side} lost: {_describe(exc)}"
        return f"connection-lost-{side}"

    def _protocol_error(self, problem: str, reason: int = pdu.ABORT_REASON_NOT_SPECIFIED) -> str:
        self.end, self.detail = PROTOCOL_ERROR, problem
        self._send_aborts(reason)
        return PROTOCOL_ERROR

    def _send_aborts(self, reason: int = pdu.ABORT_REASON_NOT_SPECIFIED) -> None:
        """A-ABORT (service-provider) to both sides, where it cannot land inside another PDU."""
        if self._aborts_sent:
            return
        self._aborts_sent = True
        abort = pdu.build_abort(pdu.ABORT_SOURCE_SERVICE_PROVIDER, reason)
        # Everything we write to the acceptor is whole PDUs, so it is always between PDUs.
        if not self.acceptor.writer.transport.is_closing():
            self.acceptor.writer.write(abort)
        framed_downstream = self.inspector is not None
        if (framed_downstream or self._downstream.at_boundary) and not self.requestor.writer.transport.is_closing():
            self.requestor.writer.write(abort)

    async def _finish(self) -> None:
        if self._abort_requested:
            self._send_aborts()
        await asyncio.gather(self.requestor.close(), self.acceptor.close(), return_exceptions=True)


_NEGOTIATION = frozenset({pdu.A_ASSOCIATE_RQ, pdu.A_ASSOCIATE_AC, pdu.A_ASSOCIATE_RJ})


def _check_after_negotiation(kind: int, body: bytes, accepted: frozenset[int]) -> str | None:
    """What is wrong with a requestor PDU on an established association, or None."""
    if kind == pdu.P_DATA_TF:
        try:
            pdu.check_p_data_body(body, accepted)
        except pdu.PduError as exc:
            return str(exc)
        return None
    if kind in (pdu.A_RELEASE_RQ, pdu.A_RELEASE_RP, pdu.A_ABORT):
        return None if len(body) == 4 else f"{pdu.pdu_name(kind)} has length {len(body)}: expected 4"
    return f"{pdu.pdu_name(kind)} from the requestor on an established association"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, asyncio.IncompleteReadError):
        return f"connection closed after {len(exc.partial)} byte(s)"
    return str(exc) or type(exc).__name__
