"""One side of a relayed association: an asyncio stream pair that counts what it reads and frames PDUs.

Split from ``relay`` so the stream plumbing (bounded reads, flow-controlled drains, a close that cannot
hang, errors that do not pin TLS buffers) stands apart from the association logic that uses it.
"""

from __future__ import annotations

import asyncio

from securepacs.gateway import pdu

READ_LIMIT = 256 * 1024  # StreamReader pause threshold (x2) and splice chunk size
WRITE_HIGH_WATER = 512 * 1024  # transport buffer above which ``drain`` waits
CLOSE_GRACE = 5.0  # after one direction ends, how long the other may take to follow


class StreamError(OSError):
    """A connection failed; carries the original error's text but not the original error (see ``_fresh``)."""


def _fresh(exc: BaseException) -> StreamError:
    # An asyncio stream keeps the error that ended its connection and raises that same object again on
    # every later read or drain; each raise appends the raising frames, which reference the stream, to its
    # traceback. That cycle pins the connection's 256 KiB TLS buffer until the cyclic GC happens to run
    # (tens of MB under a flood of refused connections). So the stored error loses its traceback and only
    # a new error, unknown to the stream, leaves the Endpoint.
    exc.__traceback__ = None
    return StreamError(str(exc) or type(exc).__name__)


class Endpoint:
    """One side of a relayed association: a stream pair plus what has been read from it.

    All reads, drains and the close go through these methods: they raise ``StreamError`` (an OSError),
    ``asyncio.IncompleteReadError`` at end of stream, or ``pdu.PduError``.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, label: str):
        self.reader = reader
        self.writer = writer
        self.label = label
        self.bytes_read = 0
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    async def read_exactly(self, n: int) -> bytes:
        try:
            data = await self.reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            self.bytes_read += len(exc.partial)
            raise
        except OSError as exc:  # ssl.SSLError included
            raise _fresh(exc) from None
        self.bytes_read += n
        return data

    async def read_some(self, limit: int) -> bytes:
        """Up to ``limit`` bytes as soon as any are there; b"" at end of stream."""
        try:
            data = await self.reader.read(limit)
        except OSError as exc:
            raise _fresh(exc) from None
        self.bytes_read += len(data)
        return data

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except OSError as exc:
            raise _fresh(exc) from None

    async def read_pdu(self, limit: int) -> tuple[int, bytes, bytes]:
        """(type, header, body) of the next PDU; PduError if its length exceeds ``limit`` (nothing read then).

        IncompleteReadError if the stream ends: ``partial`` is empty only at a clean PDU boundary.
        """
        head = await self.read_exactly(pdu.HEADER_LENGTH)
        kind, length = pdu.HEADER.unpack(head)
        if length > limit:
            raise pdu.PduError(f"{pdu.pdu_name(kind)} from the {self.label} has length {length}: "
                               f"expected at most {limit}")
        try:
            body = await self.read_exactly(length)
        except asyncio.IncompleteReadError as exc:
            # The header was read: the stream did not end at a PDU boundary, even if no body byte came.
            raise asyncio.IncompleteReadError(head + exc.partial, exc.expected) from None
        return kind, head, body

    async def close(self, timeout: float = CLOSE_GRACE) -> None:
        """Flush and close (TLS close_notify); abort the transport if the peer does not let us finish."""
        if self.writer.transport.is_closing():
            return
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), timeout)
        except TimeoutError:
            self.writer.transport.abort()
        except OSError as exc:  # the stored error that ended the connection: already closed
            exc.__traceback__ = None  # see _fresh
