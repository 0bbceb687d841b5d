"""Retrieve SCU: C-MOVE to another AE, and C-GET into a local folder.

C-GET receives the instances on our own association, so we propose storage contexts with the SCP role
(role selection negotiation) and write each received dataset as the peer encoded it, behind a fresh
file meta header: the dataset bytes of the written file are exactly the bytes that came over the wire.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import StoragePresentationContexts, evt
from pynetdicom.presentation import build_context, build_role
from pynetdicom.status import code_to_category

from securepacs.client.connection import MAX_CONTEXTS, Connection, associate
from securepacs.client.errors import ClientError
from securepacs.client.query import Keys, build_identifier, query_model, response_status
from securepacs.config.environment import SettingsError, validate_aet
from securepacs.dicom import status_codes
from securepacs.dicom.identifiers import UID_RE

logger = logging.getLogger(__name__)

# Offer compressed syntaxes too: the archive then sends what it stored instead of transcoding, which
# keeps received files identical to the originals. The list stays short because it is repeated in
# every one of the ~120 storage contexts of the association request.
GET_TRANSFER_SYNTAXES = [
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
]

# A SOP Instance UID becomes a file name: accept only what PS3.5 allows (digits and dots, ≤ 64), so a
# hostile peer cannot write outside the output directory.


@dataclass(frozen=True)
class RetrieveResult:
    """Outcome of a C-MOVE or C-GET: final status and sub-operation counts (``files``: written by C-GET)."""

    status: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int = 0
    failed_instances: tuple[str, ...] = ()
    files: int = 0
    comment: str = ""

    @property
    def ok(self) -> bool:
        return self.status == status_codes.SUCCESS and self.failed == 0

    def report(self, operation: str) -> str:
        text = (f"{operation} {status_codes.describe(self.status)}: completed {self.completed}, "
                f"failed {self.failed}, warning {self.warning}")
        if self.remaining:
            text += f", remaining {self.remaining}"
        if self.comment:
            text += f" - {self.comment}"
        for sop_instance in self.failed_instances:
            text += f"\n  failed: {sop_instance}"
        return text


def _count(status: Dataset, keyword: str, previous: int) -> int:
    value = status.get(keyword)
    return int(value) if value not in (None, "") else previous


def _collect(responses: Iterable[tuple[Dataset, Dataset | None]], operation: str,
             conn: Connection) -> RetrieveResult:
    """Fold the stream of (status, identifier) responses into one result."""
    counts = {"completed": 0, "failed": 0, "warning": 0, "remaining": 0}
    fields = {
        "completed": "NumberOfCompletedSuboperations",
        "failed": "NumberOfFailedSuboperations",
        "warning": "NumberOfWarningSuboperations",
        "remaining": "NumberOfRemainingSuboperations",
    }
    final: int | None = None
    failed_uids: tuple[str, ...] = ()
    comment = ""
    for status, identifier in responses:
        code = response_status(status, operation, conn)
        for name, keyword in fields.items():
            counts[name] = _count(status, keyword, counts[name])
        if code_to_category(code) == "Pending":
            continue
        final = code
        comment = str(status.get("ErrorComment") or "")
        value = identifier.get("FailedSOPInstanceUIDList") if identifier is not None else None
        if value:
            failed_uids = tuple(str(v) for v in (value if isinstance(value, MultiValue | list) else [value]) if v)
    if final is None:
        raise ClientError(f"{operation}: the response stream from {conn.address} ended without a final status")
    if code_to_category(final) == "Success":
        counts["remaining"] = 0
    return RetrieveResult(final, failed_instances=failed_uids, comment=comment, **counts)


def move(conn: Connection, dest: str, level: str | None = "STUDY", keys: Keys = (),
         root: str = "study") -> RetrieveResult:
    """Ask the peer to send the matching instances to the AE ``dest`` (C-MOVE)."""
    try:
        dest = validate_aet(dest, "move destination AE title (-aem)")
    except SettingsError as exc:
        raise ClientError(str(exc)) from exc
    model = query_model(root, "move")
    identifier = build_identifier(level, keys, root=root)
    with associate(conn, [build_context(model)]) as assoc:
        return _collect(assoc.send_c_move(identifier, dest, model), "C-MOVE", conn)


class _Receiver:
    """EVT_C_STORE handler for C-GET: writes each dataset to ``out_dir/<SOP Instance UID>.dcm``."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.written = 0

    def __call__(self, event: evt.Event) -> int:
        sop_instance = str(event.request.AffectedSOPInstanceUID or "")
        if len(sop_instance) > 64 or not UID_RE.fullmatch(sop_instance):
            logger.warning("refused a received instance: invalid SOP Instance UID %r", sop_instance[:80])
            return status_codes.STORE_ERROR_CANNOT_UNDERSTAND
        target = self.out_dir / f"{sop_instance}.dcm"
        partial = self.out_dir / f".{sop_instance}.dcm.part"
        try:
            # Preamble + file meta built from the request and the context's transfer syntax, then the
            # dataset bytes exactly as received (no decode / re-encode).
            partial.write_bytes(event.encoded_dataset(include_meta=True))
            os.replace(partial, target)  # readers never see half-written files
        except OSError as exc:
            logger.error("cannot write %s: %s", target, exc.strerror or exc)
            partial.unlink(missing_ok=True)
            return status_codes.STORE_REFUSED_OUT_OF_RESOURCES
        self.written += 1
        logger.debug("received %s", target)
        return status_codes.SUCCESS


def get(conn: Connection, level: str | None = "STUDY", keys: Keys = (), out_dir: Path | str = ".",
        root: str = "study") -> RetrieveResult:
    """Retrieve the matching instances over our own association (C-GET) into ``out_dir``."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ClientError(f"cannot create --output-directory {out}: {exc.strerror or exc}") from exc
    model = query_model(root, "get")
    identifier = build_identifier(level, keys, root=root)
    storage = StoragePresentationContexts[: MAX_CONTEXTS - 1]
    contexts = [build_context(model)]
    contexts += [build_context(cx.abstract_syntax, GET_TRANSFER_SYNTAXES) for cx in storage]
    roles = [build_role(cx.abstract_syntax, scp_role=True) for cx in storage]
    receiver = _Receiver(out)
    with associate(conn, contexts, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, receiver)]) as assoc:
        result = _collect(assoc.send_c_get(identifier, model), "C-GET", conn)
    return dataclasses.replace(result, files=receiver.written)
