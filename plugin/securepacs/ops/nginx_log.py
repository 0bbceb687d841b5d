"""nginx's error log without query strings: the same rule as its access log format.

nginx has no format for its error log, and its error lines name the request the way the client sent it:
``request: "GET /dicom-web/studies?PatientName=DOE^JANE HTTP/1.1"``, ``upstream: "http://...?..."``,
``referrer: "...?..."``. QIDO-RS searches carry patient names, IDs and birth dates in the query string, so
an upstream error while Orthanc restarts, or a refused oversized body, would copy them into the
operational log. ``securepacs serve`` therefore reads nginx's stderr through ``forward``, which removes every
query string from every line before passing it on. Paths stay (the access log keeps them too).
"""

from __future__ import annotations

import re
import threading
from typing import BinaryIO

# A query string: from "?" up to the next whitespace or quote (the end of the quoted request line or URL).
_QUERY = re.compile(rb"\?[^\s\"]*")
REDACTED = b"?[query removed]"


def redact(line: bytes) -> bytes:
    """``line`` with every query string replaced by ``?[query removed]``."""
    return _QUERY.sub(REDACTED, line)


def _pump(source: BinaryIO, sink: BinaryIO) -> None:
    try:
        for line in iter(source.readline, b""):
            sink.write(redact(line))
            sink.flush()
    except (OSError, ValueError):  # the sink or the pipe closed while stopping
        pass
    finally:
        source.close()


def forward(source: BinaryIO, sink: BinaryIO) -> threading.Thread:
    """Copy nginx's stderr (``source``, a pipe) to ``sink`` line by line, redacted, until nginx exits."""
    thread = threading.Thread(target=_pump, args=(source, sink), name="nginx-error-log", daemon=True)
    thread.start()
    return thread
