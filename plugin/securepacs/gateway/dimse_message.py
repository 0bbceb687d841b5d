"""One DIMSE message from the requestor as the gateway's inspector follows it (see ``dimse``).

The per-message state: the command set until it is complete, a C-GET's identifier (bounded), a C-STORE's
data set nesting check. Separate from the inspector so each stays readable.
"""

from __future__ import annotations

from securepacs.dataset_limits.nesting import NestingError, Scanner
from securepacs.gateway.dimse_command import C_GET_RQ, Command, CommandError, decode_command

MAX_COMMAND_BYTES = 64 * 1024  # real command sets are a few hundred bytes
MAX_IDENTIFIER_BYTES = 1024 * 1024  # a larger C-GET identifier is refused (0xC000), not buffered
MAX_DISCARDED_BYTES = 64 * 1024 * 1024  # an oversized identifier that keeps coming ends the association


class Message:
    """One DIMSE message from the requestor, as far as it has arrived."""

    __slots__ = ("command", "context_id", "done", "identifier", "is_get", "oversized", "received", "refusal",
                 "reported", "request", "scanner")

    def __init__(self, context_id: int):
        self.context_id = context_id
        self.command: bytearray | None = bytearray()  # fragments until the command set is complete
        self.request: Command | None = None
        self.is_get = False
        self.identifier: bytearray | None = None  # C-GET only, while within MAX_IDENTIFIER_BYTES
        self.received = 0  # identifier bytes seen, including those not kept
        self.oversized = False
        self.done = False
        self.scanner: Scanner | None = None  # C-STORE-RQ: the nesting check of its data set
        self.refusal: str | None = None  # why its data set must not reach the archive
        self.reported = False

    def scan(self, fragment: memoryview) -> None:
        if self.scanner is None or self.refusal is not None:
            return
        try:
            # No ``finish()`` at the last fragment: a truncated data set nests no deeper than what was
            # scanned, so whether it is complete is the archive's to judge, as before.
            self.scanner.feed(fragment)
        except NestingError as exc:
            self.refusal = str(exc)

    def add_command(self, fragment: memoryview) -> None:
        assert self.command is not None
        if len(self.command) + len(fragment) > MAX_COMMAND_BYTES:
            raise CommandError(f"command set larger than {MAX_COMMAND_BYTES} bytes")
        self.command += fragment

    def end_command(self) -> None:
        assert self.command is not None
        self.request = decode_command(bytes(self.command))
        self.command = None
        if self.request.field == C_GET_RQ:
            if self.request.message_id is None:
                raise CommandError("C-GET-RQ without MessageID")
            _ = self.request.sop_class  # raises CommandError if missing or not ASCII: we must answer with it
            self.is_get = True
            self.identifier = bytearray()

    def add_identifier(self, fragment: memoryview) -> None:
        self.received += len(fragment)
        if self.received > MAX_DISCARDED_BYTES:
            raise CommandError(f"C-GET identifier keeps coming beyond {MAX_DISCARDED_BYTES} bytes")
        if self.identifier is not None:
            if self.received > MAX_IDENTIFIER_BYTES:
                self.give_up_identifier()
            else:
                self.identifier += fragment

    def give_up_identifier(self) -> None:
        self.oversized = True
        self.identifier = None
