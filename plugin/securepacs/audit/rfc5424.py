"""RFC 5424 syslog messages for trail entries and RFC 5425 octet-counting framing ("MSG-LEN SP SYSLOG-MSG").

HEADER: <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID, then STRUCTURED-DATA
[securepacs@32473 seq="…" prev="…" hash="…"] and MSG = UTF-8 BOM + payload, where the payload is the
trail line itself (JSON, so a collector can re-verify the chain) or the DICOM audit message (XML).
32473 is the private enterprise number RFC 5612 reserves for documentation: a deployment with its
own PEN should pass it as ``sd_id``.
"""

from __future__ import annotations

import re
import socket

from securepacs.audit import codes
from securepacs.audit.chain import TrailEntry
from securepacs.audit.dicom_xml import to_xml

FACILITY_AUTHPRIV = 10  # security/authorization messages (private), as IHE ATNA recommends
FACILITY_LOCAL0 = 16
SEV_CRITICAL, SEV_ERROR, SEV_WARNING, SEV_NOTICE, SEV_INFO = 2, 3, 4, 5, 6
_SEVERITY_BY_OUTCOME = {
    codes.OUTCOME_SUCCESS: SEV_NOTICE,
    codes.OUTCOME_MINOR_FAILURE: SEV_WARNING,
    codes.OUTCOME_SERIOUS_FAILURE: SEV_ERROR,
    codes.OUTCOME_MAJOR_FAILURE: SEV_CRITICAL,
}
DEFAULT_SD_ID = "securepacs@32473"
BOM = b"\xef\xbb\xbf"
PAYLOADS = ("json", "xml")
_NOT_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")
_MAX_FRAME_DIGITS = 10  # a length longer than this is not a frame header, it is garbage


def severity(entry: TrailEntry) -> int:
    """Outcome 0/4/8/12 -> notice/warning/error/critical; checkpoints are informational."""
    if entry.is_checkpoint:
        return SEV_INFO
    return _SEVERITY_BY_OUTCOME.get(entry.body.get("outcome"), SEV_WARNING)


def msgid(entry: TrailEntry) -> str:
    if entry.is_checkpoint:
        return "Checkpoint"
    event = entry.body.get("event", {})
    return _header_field(codes.event_name(str(event.get("code", ""))), 32)


def _header_field(value: str, limit: int) -> str:
    """RFC 5424 header fields are 1*N PRINTUSASCII; "-" stands for an empty one."""
    cleaned = _NOT_PRINTUSASCII.sub("_", value)[:limit]
    return cleaned or "-"


def _sd_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def local_hostname() -> str:
    return _header_field(socket.getfqdn() or socket.gethostname(), 255)


def format_message(
    entry: TrailEntry,
    *,
    hostname: str,
    app_name: str = "securepacs",
    payload: str = "json",
    facility: int = FACILITY_AUTHPRIV,
    sd_id: str = DEFAULT_SD_ID,
) -> bytes:
    """One SYSLOG-MSG. Checkpoints always carry their JSON line (there is no DICOM message for them)."""
    if payload not in PAYLOADS:
        raise ValueError(f"unknown syslog payload {payload!r}: use one of {', '.join(PAYLOADS)}")
    timestamp = entry.body.get("time") or "-"
    pri = facility * 8 + severity(entry)
    sd = f'[{sd_id} seq="{entry.seq}" prev="{_sd_value(entry.prev)}" hash="{_sd_value(entry.hash)}"]'
    header = (
        f"<{pri}>1 {_header_field(str(timestamp), 64)} {_header_field(hostname, 255)} "
        f"{_header_field(app_name, 48)} - {msgid(entry)} {sd} "
    )
    xml = payload == "xml" and not entry.is_checkpoint
    body = to_xml(entry.record()) if xml else entry.line().rstrip(b"\n")
    return header.encode("ascii") + BOM + body


def frame(message: bytes) -> bytes:
    """RFC 5425 octet counting: the byte length, one space, the message."""
    return str(len(message)).encode("ascii") + b" " + message


def split_frames(data: bytes) -> tuple[list[bytes], bytes]:
    """Split a received byte stream into complete messages; return them and the incomplete rest."""
    messages: list[bytes] = []
    pos = 0
    while True:
        space = data.find(b" ", pos, pos + _MAX_FRAME_DIGITS + 1)
        if space < 0:
            if len(data) - pos > _MAX_FRAME_DIGITS:
                raise ValueError(f"no octet count at byte {pos} of the stream")
            break
        digits = data[pos:space]
        if not digits.isdigit() or digits.startswith(b"0"):
            raise ValueError(f"bad octet count {digits[:16]!r} at byte {pos} of the stream")
        end = space + 1 + int(digits)
        if end > len(data):
            break
        messages.append(data[space + 1 : end])
        pos = end
    return messages, data[pos:]
