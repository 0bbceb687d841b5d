"""C-GET made tenant-safe: the per-association inspector of requestor-to-archive DIMSE traffic.

Orthanc 1.10 gives plugins no C-GET hook, so the gateway, which sees DIMSE in the clear after TLS, checks
each C-GET-RQ before Orthanc does: it holds the request's PDUs until the identifier is complete, asks the
archive whether every UID in it belongs to the caller's clinic, and then forwards the held PDUs byte for
byte, or drops them and answers the clinic itself with a failed C-GET-RSP. Everything that is not a C-GET
passes at once and untouched; C-STORE data costs one PDV header read per PDU.

PDUs are never split, merged or re-encoded. So a PDU whose PDVs belong to a refused C-GET *and* to another
message cannot be partly dropped: the association is aborted instead. The requestors we know (DCMTK,
pynetdicom) start every message in a new PDU, so only a contrived one meets this.

Statuses answered for a refused C-GET (PS3.4 C.4.3.1.4, PS3.7 C.5):

* 0x0124 Refused: Not Authorized -- the archive did not confirm that every UID belongs to the clinic
  (a foreign and an unknown UID look the same, so nothing leaks about other tenants); also PATIENT level.
* 0xA900 Identifier does not match SOP class -- no usable unique key: missing or unknown level, a missing
  or empty key for the level (universal matching), wildcards or invalid UIDs, AccessionNumber at STUDY
  level, no identifier at all.
* 0xC000 Unable to process -- the identifier cannot be decoded unambiguously, is larger than
  MAX_IDENTIFIER_BYTES, or the ownership check failed or timed out (fail closed).

Events (``on_event(kind, details)``), never with a UID or patient ID, only levels and counts:
``cget-allowed`` {clinic, message_id, level, keys: {key: count}}, ``cget-refused`` {the same + status,
reason}, ``cstore-refused`` {clinic, calling_aet, message_id, status, reason}, ``dimse-protocol-violation``
{clinic, reason} when the association is aborted.

C-STORE data sets are scanned as they pass (``securepacs.dataset_limits.nesting``): one nested too deeply
for DCMTK's recursive parser (CVE-2026-10528) never reaches the archive whole. Its PDUs stop at the one
that crosses the limit (what went before nests at most the limit: harmless); the rest of its data set is
dropped as it comes, and after its last fragment the clinic gets a C-STORE-RSP 0xC000 (Cannot understand)
with an Error Comment. The archive still waits inside that message, so the association cannot carry
another: the gateway answers the clinic's A-RELEASE-RQ itself and A-ABORTs the archive's side; any other
message is a violation (abort).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from securepacs.dataset_limits.nesting import Scanner, scanner_for
from securepacs.dicom import status_codes
from securepacs.gateway.associate_pdu import Associate, parse_associate
from securepacs.gateway.cget_query import GetQuery, Unverifiable, parse_identifier
from securepacs.gateway.dimse_command import (
    C_CANCEL_RQ,
    C_STORE_RQ,
    CommandError,
    c_get_failure,
    c_store_failure,
)
from securepacs.gateway.dimse_message import MAX_IDENTIFIER_BYTES, Message
from securepacs.gateway.pdu import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    HEADER_LENGTH,
    P_DATA_TF,
    PDV_COMMAND,
    PDV_LAST,
    PduError,
    build_abort,
    build_p_data,
    build_release_rp,
    iter_pdvs,
    pdu_name,
)
from securepacs.gateway.peer_identity import PeerIdentity
from securepacs.gateway.relay import Action  # the relay's contract; re-exported for inspector users

log = logging.getLogger(__name__)

# (clinic, level, keys, calling AE title) -> allowed; the AE title is for the archive's retrieve record.
Authorize = Callable[[str, str, dict[str, list[str]], str], Awaitable[bool]]
OnEvent = Callable[[str, dict[str, Any]], None]

# Held PDUs can carry more than the identifier (PDV headers, a preceding message's tail): bound them too.
MAX_HELD_BYTES = 4 * 1024 * 1024
REFUSED_IDS_REMEMBERED = 32  # message IDs of refused C-GETs whose C-CANCEL-RQ is dropped


class CGetInspector:
    """Inspects one association's requestor-to-archive PDUs (after the A-ASSOCIATE-RQ).

    The relay must call ``client_pdu`` for each requestor PDU in order, awaiting each call before the next
    (it holds state across PDUs), and ``server_pdu`` with the archive's A-ASSOCIATE-AC before relaying
    P-DATA. Reply PDUs must be written to the requestor between two complete archive PDUs. ``close``
    actions carry no PDUs: the relay sends the A-ABORTs. ``rq`` is the requestor's A-ASSOCIATE-RQ, as
    bytes (header included; ``PduError`` if malformed) or already parsed.
    """

    def __init__(self, clinic: str, rq: bytes | Associate, authorize: Authorize, on_event: OnEvent | None = None,
                 *, authorize_timeout: float = 10.0):
        if not isinstance(rq, Associate):
            rq = parse_associate(rq)
        if rq.pdu_type != A_ASSOCIATE_RQ:
            raise PduError(f"{pdu_name(rq.pdu_type)}: expected the A-ASSOCIATE-RQ")
        self._clinic = clinic
        self._calling_aet = rq.calling_aet
        self._authorize = authorize
        self._on_event = on_event
        self._timeout = authorize_timeout
        self._reply_limit = rq.max_length or 0  # the requestor's maximum P-DATA length; 0 = unlimited
        self._syntaxes: dict[int, str] = {}  # accepted presentation context ID -> transfer syntax
        self._current: Message | None = None
        # A batch: consecutive PDUs held back until every C-GET in them is decided, and their messages.
        self._batch: list[Message] = []
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._refused_ids: deque[int] = deque(maxlen=REFUSED_IDS_REMEMBERED)
        self._closed = False
        self._stranded = False  # a refused C-STORE left the archive inside a message

    # -- archive side --------------------------------------------------------------------------------
    def server_pdu(self, pdu_type: int, pdu: bytes) -> None:
        """Learn the accepted presentation contexts from the A-ASSOCIATE-AC; other PDUs are ignored."""
        if pdu_type != A_ASSOCIATE_AC:
            return
        try:
            ac = parse_associate(pdu)
        except PduError as exc:
            # Nothing is accepted then: every C-GET is refused (0xC000), other traffic is unaffected.
            log.warning("unparseable A-ASSOCIATE-AC for clinic %r: %s", self._clinic, exc)
            return
        self._syntaxes = {c.id: c.transfer_syntaxes[0] for c in ac.contexts if c.accepted and c.transfer_syntaxes}

    # -- requestor side ------------------------------------------------------------------------------
    async def client_pdu(self, pdu_type: int, pdu: bytes) -> Action:
        if self._closed:
            return Action(close=True)
        if self._stranded:
            if pdu_type == A_RELEASE_RQ:  # the archive cannot release mid-message: we answer, it is aborted
                return Action(forward=[build_abort()], reply=[build_release_rp()])
            if pdu_type != A_ABORT:
                return self._violation("another message after a refused C-STORE (the archive waits in that one)")
        if pdu_type == P_DATA_TF:
            return await self._p_data(pdu)
        if pdu_type in (A_RELEASE_RQ, A_RELEASE_RP, A_ABORT):
            if self._held:
                # The requestor ends the association inside a message: what is held is unchecked (or an
                # unfinished C-GET) and must not reach the archive; the release or abort itself does.
                log.info("clinic %r ended the association inside a message: %d held PDU(s) dropped",
                         self._clinic, len(self._held))
            self._current, self._batch, self._held, self._held_bytes = None, [], [], 0
            return Action(forward=[pdu])
        return self._violation(f"unexpected {pdu_name(pdu_type)} from the requestor")

    async def _p_data(self, pdu: bytes) -> Action:
        try:
            touched = self._walk(pdu)
        except (PduError, CommandError) as exc:
            return self._violation(str(exc))
        refused = next((m for m in touched if m.refusal is not None), None)
        if refused is not None:
            return self._refuse_store(refused, touched)
        current = self._current
        # Open: a command not yet complete (it may be a C-GET), or a C-GET whose identifier is still coming.
        is_open = current is not None and (current.request is None or current.is_get)
        if not self._batch and not is_open and not any(m.is_get or self._cancels_refused(m) for m in touched):
            return Action(forward=[pdu])  # the fast path: C-STORE data, C-ECHO, C-FIND, responses...
        for message in touched:
            if not self._batch or self._batch[-1] is not message:
                self._batch.append(message)
        self._held.append(pdu)
        self._held_bytes += len(pdu)
        if not is_open:
            return await self._resolve()
        assert current is not None
        if current.is_get and (current.oversized or self._held_bytes > MAX_HELD_BYTES):
            current.give_up_identifier()
            if len(self._batch) != 1 or self._batch[0] is not current:
                return self._violation("an oversized C-GET shares its PDUs with other messages")
            # Refused whatever it says: drop its PDUs as they come, answer when its last fragment arrives.
            self._held, self._held_bytes = [], 0
        elif self._held_bytes > MAX_HELD_BYTES:
            return self._violation(f"a command set spread over more than {MAX_HELD_BYTES} bytes of PDUs")
        return Action()

    def _walk(self, pdu: bytes) -> list[Message]:
        """Follow the PDVs of one P-DATA-TF through the message state; the messages it touches, in order."""
        if len(pdu) < HEADER_LENGTH or pdu[0] != P_DATA_TF:
            raise PduError("not a P-DATA-TF PDU")
        touched: list[Message] = []
        current = self._current
        for pdv in iter_pdvs(pdu):
            if current is None:
                if not pdv.is_command:
                    raise CommandError("a data set fragment outside any message")
                current = Message(pdv.context_id)
            if not touched or touched[-1] is not current:
                touched.append(current)
            if pdv.context_id != current.context_id:
                raise CommandError("a message changes presentation context midway")
            if current.request is None:
                if not pdv.is_command:
                    raise CommandError("a data set fragment before the command set is complete")
                current.add_command(pdv.data)
                if pdv.is_last:
                    current.end_command()
                    assert current.request is not None
                    if current.request.field == C_STORE_RQ and current.request.has_data_set:
                        current.scanner = self._store_scanner(current.context_id)
                    if not current.request.has_data_set:
                        current.done, current = True, None
            else:
                if pdv.is_command:
                    raise CommandError("a command fragment inside a data set")
                if current.is_get:
                    current.add_identifier(pdv.data)
                current.scan(pdv.data)
                if pdv.is_last:
                    current.done, current = True, None
        self._current = current
        return touched

    def _store_scanner(self, context_id: int) -> Scanner:
        syntax = self._syntaxes.get(context_id)
        if syntax is None:  # the relay lets only accepted contexts pass; an unparseable AC leaves none known
            raise CommandError("a C-STORE on a presentation context whose transfer syntax is unknown")
        return scanner_for(syntax)

    def _refuse_store(self, message: Message, touched: list[Message]) -> Action:
        """Drop the PDUs of a C-STORE whose data set must not reach the archive; answer after its end."""
        request = message.request
        assert request is not None and message.refusal is not None
        if len(touched) != 1 or self._batch:
            return self._violation("a refused C-STORE shares its PDUs with other messages")
        if not message.reported:
            message.reported = True
            status = status_codes.STORE_ERROR_CANNOT_UNDERSTAND
            log.warning("C-STORE from clinic %r refused with %s before it reached the archive: %s", self._clinic,
                        status_codes.describe(status), message.refusal)
            self._emit("cstore-refused", {"clinic": self._clinic, "calling_aet": self._calling_aet,
                                          "message_id": request.message_id, "status": status,
                                          "reason": message.refusal})
        if not message.done:
            return Action()
        if request.message_id is None or request.sop_class_raw is None or request.sop_instance_raw is None:
            return self._violation("a refused C-STORE-RQ lacks the identifiers its answer must echo")
        self._stranded = True
        command = c_store_failure(request.sop_class_raw, request.sop_instance_raw, request.message_id,
                                  status_codes.STORE_ERROR_CANNOT_UNDERSTAND, message.refusal)
        return Action(reply=self._command_pdus(message.context_id, command))

    def _cancels_refused(self, message: Message) -> bool:
        request = message.request
        return (message.done and request is not None and request.field == C_CANCEL_RQ
                and request.responding_to in self._refused_ids)

    async def _resolve(self) -> Action:
        """Every C-GET in the batch is complete: decide them, then forward or drop the batch whole."""
        batch, held = self._batch, self._held
        self._batch, self._held, self._held_bytes = [], [], 0
        refusals: list[tuple[Message, int, str]] = []
        for message in batch:
            if message.is_get:
                status, reason = await self._decide(message)
                assert message.request is not None and message.request.message_id is not None
                if status is None:
                    while message.request.message_id in self._refused_ids:
                        self._refused_ids.remove(message.request.message_id)  # a reused ID is live again
                else:
                    refusals.append((message, status, reason))
                    self._refused_ids.append(message.request.message_id)
        refused = [m for m, _, _ in refusals]
        if all(any(m is r for r in refused) or self._cancels_refused(m) for m in batch):
            # Only refused C-GETs and C-CANCELs of C-GETs already answered: nothing reaches the archive.
            return Action(reply=[pdu for m, status, reason in refusals for pdu in self._failure(m, status, reason)])
        if refusals:
            return self._violation("a refused C-GET shares its PDUs with other messages")
        return Action(forward=held)

    async def _decide(self, message: Message) -> tuple[int | None, str]:
        """(None, ...) to forward the C-GET, else (failure status, reason without identifiers)."""
        status, reason, query = await self._check(message)
        details: dict[str, Any] = {"clinic": self._clinic, "message_id": message.request.message_id}  # type: ignore[union-attr]
        if query is not None:
            details.update(level=query.level, keys=query.counts())
        if status is None:
            log.info("C-GET from clinic %r allowed: %s", self._clinic, _summary(query))
            self._emit("cget-allowed", details)
        else:
            log.warning("C-GET from clinic %r refused with %s: %s (%s)", self._clinic,
                        status_codes.describe(status), reason, _summary(query))
            self._emit("cget-refused", {**details, "status": status, "reason": reason})
        return status, reason

    async def _check(self, message: Message) -> tuple[int | None, str, GetQuery | None]:
        assert message.request is not None
        if not message.request.has_data_set:
            return status_codes.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "C-GET-RQ without an identifier", None
        if message.identifier is None:  # given up: larger than the bound
            return status_codes.UNABLE_TO_PROCESS, f"identifier larger than {MAX_IDENTIFIER_BYTES} bytes", None
        syntax = self._syntaxes.get(message.context_id)
        if syntax is None:
            return status_codes.UNABLE_TO_PROCESS, "C-GET on a presentation context that was not accepted", None
        try:
            query = parse_identifier(bytes(message.identifier), syntax, MAX_IDENTIFIER_BYTES)
        except Unverifiable as exc:
            return exc.status, exc.reason, None
        try:
            allowed = await asyncio.wait_for(self._authorize(self._clinic, query.level, query.keys,
                                                                self._calling_aet), self._timeout)
        except Exception as exc:  # fail closed; the type only, a message could quote the request
            log.warning("ownership check for clinic %r failed: %s", self._clinic, type(exc).__name__)
            return status_codes.UNABLE_TO_PROCESS, "the ownership check failed", query
        if allowed is not True:
            return status_codes.REFUSED_NOT_AUTHORIZED, "not every requested UID is the clinic's", query
        return None, "allowed", query

    def _failure(self, message: Message, status: int, reason: str) -> list[bytes]:
        """The C-GET-RSP answering a refused request, on its presentation context, in as many PDUs as the
        requestor's maximum length demands."""
        request = message.request
        assert request is not None and request.message_id is not None
        return self._command_pdus(message.context_id, c_get_failure(request.sop_class, request.message_id, status,
                                                                     reason))

    def _command_pdus(self, context_id: int, command: bytes) -> list[bytes]:
        size = max(self._reply_limit - 6, 16) if self._reply_limit else len(command)  # 6: PDV item header
        chunks = [command[i : i + size] for i in range(0, len(command), size)]
        return [build_p_data([(context_id, PDV_COMMAND | (PDV_LAST if i == len(chunks) - 1 else 0), c)])
                for i, c in enumerate(chunks)]

    def _violation(self, reason: str) -> Action:
        """End the association (the relay aborts both sides); nothing held is forwarded."""
        self._closed = True
        self._current, self._batch, self._held, self._held_bytes = None, [], [], 0
        log.warning("aborting the association of clinic %r: %s", self._clinic, reason)
        self._emit("dimse-protocol-violation", {"clinic": self._clinic, "reason": reason})
        return Action(close=True)

    def _emit(self, kind: str, details: dict[str, Any]) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(kind, details)
        except Exception as exc:  # an event sink must never decide what happens to traffic
            log.warning("security event sink failed on %r: %s", kind, type(exc).__name__)


def _summary(query: GetQuery | None) -> str:
    """Level and key counts: what the operational log may say about a C-GET (never the UIDs)."""
    if query is None:
        return "identifier not decoded"
    return f"{query.level} level, " + ", ".join(f"{n} {k}" for k, n in query.counts().items())


def inspector_factory(authorize: Authorize, on_event: OnEvent | None = None, *, authorize_timeout: float = 10.0,
                      ) -> Callable[[PeerIdentity, Associate], CGetInspector]:
    """An ``InspectorFactory`` for ``Gateway``: every clinic association gets a C-GET inspector.

    A peer without a clinic is not inspected: the gateway admits only clinic certificates on ingress,
    so None here means that changed, and the relay then passes everything (C-GET included) unchecked;
    refuse to build rather than silently skip.
    """

    def build(peer: PeerIdentity, rq: Associate) -> CGetInspector:
        if peer.clinic is None:
            raise ValueError("a C-GET inspector needs the peer's clinic")
        return CGetInspector(peer.clinic, rq, authorize, on_event, authorize_timeout=authorize_timeout)

    return build
