"""Query SCU: building C-FIND/C-MOVE/C-GET identifiers from findscu-style keys, and ``find``.

Keys are ``KEYWORD=VALUE`` or ``gggg,eeee=VALUE`` like findscu's ``-k``; an empty value asks the peer to
return that attribute. The level comes from ``level`` or from a ``QueryRetrieveLevel`` key.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pynetdicom import sop_class
from pynetdicom.presentation import build_context
from pynetdicom.status import code_to_category

from securepacs.client.connection import Connection, associate
from securepacs.client.errors import ClientError, DimseFailed
from securepacs.dicom import status_codes

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
ROOTS = ("patient", "study")

Keys = Mapping[str, str] | Iterable[tuple[str, str]] | Dataset

_TAG_RE = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")
_INT_VRS = {"US", "SS", "UL", "SL", "UV", "SV", "AT"}
_FLOAT_VRS = {"FL", "FD"}


def query_model(root: str, operation: str) -> str:
    """The Query/Retrieve information model UID, e.g. ``("study", "find")`` → Study Root Find."""
    if root not in ROOTS:
        raise ClientError(f"query root {root!r} is invalid: expected one of {', '.join(ROOTS)}")
    name = f"{root.capitalize()}RootQueryRetrieveInformationModel{operation.capitalize()}"
    return str(getattr(sop_class, name))


def parse_key(text: str) -> tuple[str, str]:
    """Split a ``-k`` argument ``KEY=VALUE`` (the value may be empty)."""
    key, sep, value = text.partition("=")
    if not sep:
        # findscu accepts a bare key as "return this attribute"
        return text.strip(), ""
    return key.strip(), value


def _tag_of(key: str) -> int:
    match = _TAG_RE.match(key)
    if match:
        return int(Tag(int(match.group(1), 16), int(match.group(2), 16)))
    tag = tag_for_keyword(key)
    if tag is None:
        raise ClientError(f"query key {key!r} is neither a DICOM keyword (e.g. PatientID) nor a tag (0010,0020)")
    return int(tag)


def _element(key: str, value: str) -> DataElement:
    tag = _tag_of(key)
    try:
        vr = dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        raise ClientError(f"query key {key!r} is not in the DICOM dictionary: its VR is unknown") from None
    if vr == "SQ":
        if value:
            raise ClientError(f"query key {key!r} is a sequence: only an empty value (return key) is supported")
        return DataElement(tag, vr, DicomSequence())
    if value == "":
        return DataElement(tag, vr, None)
    try:
        if vr in _INT_VRS:
            return DataElement(tag, vr, [int(v) for v in value.split("\\")] if "\\" in value else int(value))
        if vr in _FLOAT_VRS:
            return DataElement(tag, vr, float(value))
    except ValueError:
        raise ClientError(f"query key {key}={value!r} is invalid: {vr} needs a number") from None
    return DataElement(tag, vr, value)


def build_identifier(level: str | None, keys: Keys = (), *, root: str = "study",
                     default_level: str | None = "STUDY") -> Dataset:
    """A Query/Retrieve identifier from ``keys`` at ``level`` (checked against ``root``)."""
    if isinstance(keys, Dataset):
        identifier = Dataset()
        identifier.update(keys)
    else:
        items = keys.items() if isinstance(keys, Mapping) else keys
        identifier = Dataset()
        for key, value in items:
            elem = _element(key, value)
            identifier[elem.tag] = elem
    key_level = str(identifier.get("QueryRetrieveLevel") or "").upper() or None
    if level and key_level and level.upper() != key_level:
        raise ClientError(f"--level {level} conflicts with the key QueryRetrieveLevel={key_level}")
    chosen = (level or key_level or default_level or "").upper()
    if chosen not in LEVELS:
        raise ClientError(f"query level {chosen or '(none)'!r} is invalid: expected one of {', '.join(LEVELS)}")
    if root == "study" and chosen == "PATIENT":
        raise ClientError("the study root model has no PATIENT level: use the patient root (-P)")
    identifier.QueryRetrieveLevel = chosen
    return identifier


def response_status(status: Dataset, operation: str, conn: Connection) -> int:
    """The status code of a response, or ``DimseFailed`` when there was no response at all."""
    if "Status" not in status:
        raise DimseFailed(f"no {operation} response from {conn.address} (DIMSE timeout or association aborted)")
    return int(status.Status)


def failure_text(operation: str, code: int, status: Dataset) -> str:
    text = f"{operation} failed: {status_codes.describe(code)}"
    comment = status.get("ErrorComment")
    return f"{text} - {comment}" if comment else text


def find(conn: Connection, level: str | None = None, keys: Keys = (), root: str = "study") -> Iterator[Dataset]:
    """Send a C-FIND and yield each matching identifier; raise ``DimseFailed`` on a failure status."""
    model = query_model(root, "find")
    identifier = build_identifier(level, keys, root=root)
    with associate(conn, [build_context(model)]) as assoc:
        for status, match in assoc.send_c_find(identifier, model):
            code = response_status(status, "C-FIND", conn)
            category = code_to_category(code)
            if category == "Pending":
                if match is not None:
                    yield match
            elif category in ("Success", "Warning"):
                return
            else:
                raise DimseFailed(failure_text("C-FIND", code, status), code)


def _json_value(elem: DataElement) -> Any:
    value = elem.value
    if elem.VR == "SQ":
        return [dataset_to_dict(item) for item in value]
    if value is None or value == "":
        return ""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, MultiValue | list):
        return [v if isinstance(v, int | float) else str(v) for v in value]
    return value if isinstance(value, int | float) else str(value)


def dataset_to_dict(ds: Dataset) -> dict[str, Any]:
    """``{keyword: value}`` for printing (private/unknown tags as ``"gggg,eeee"``)."""
    out: dict[str, Any] = {}
    for elem in ds:
        name = keyword_for_tag(elem.tag) or f"{elem.tag.group:04X},{elem.tag.element:04X}"
        out[name] = _json_value(elem)
    return out
