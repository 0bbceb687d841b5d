"""Finding the files to send and reading just enough of each to plan presentation contexts.

A Part 10 file is described by its File Meta Information alone (SOP class, instance, transfer syntax),
which is also what pynetdicom uses to send it straight from disk. Files without usable meta information
(bare datasets, broken meta) are still DICOM: for those we read the first elements of the dataset and
send them decoded, one at a time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
)

from securepacs.client.errors import ClientError

logger = logging.getLogger(__name__)

# pydicom reports a dataset's encoding as (is_implicit_VR, is_little_endian)
_ENCODING_SYNTAX = {
    (True, True): ImplicitVRLittleEndian,
    (False, True): ExplicitVRLittleEndian,
    (False, False): ExplicitVRBigEndian,
}


@dataclass(frozen=True)
class DicomFile:
    """A file we can send. ``from_disk`` files are sent as their encoded bytes, the others decoded."""

    path: Path
    size: int
    sop_class_uid: UID
    sop_instance_uid: UID
    transfer_syntax_uid: UID
    from_disk: bool

    @property
    def pair(self) -> tuple[str, str]:
        """The (SOP class, transfer syntax) presentation context this file needs."""
        return (str(self.sop_class_uid), str(self.transfer_syntax_uid))


@dataclass(frozen=True)
class Unsendable:
    """A file that is not a DICOM instance we can send, and why (shown in the summary)."""

    path: Path
    reason: str


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Yield the files named or contained (recursively) in ``paths``, in a stable sorted order."""
    for path in paths:
        if path.is_file():
            yield path
        elif path.is_dir():
            for root, dirs, files in os.walk(path, onerror=_walk_error):
                dirs.sort()  # os.walk descends in list order: sorting makes both scan passes agree
                for name in sorted(files):
                    yield Path(root, name)
        elif not path.exists():
            raise ClientError(f"{path}: no such file or directory")
        else:
            raise ClientError(f"{path}: neither a regular file nor a directory")


def _walk_error(exc: OSError) -> None:
    logger.warning("cannot list %s: %s", exc.filename, exc.strerror)


def check_paths(paths: Iterable[Path]) -> None:
    """Fail early, before connecting, on a path that does not exist."""
    for path in paths:
        if not path.exists():
            raise ClientError(f"{path}: no such file or directory")


def inspect(path: Path) -> DicomFile | Unsendable:
    """Classify one file by reading only its meta information (or first dataset elements)."""
    try:
        size = path.stat().st_size
        meta = read_file_meta_info(path)
    except InvalidDicomError:
        meta = None  # no "DICM" prefix: maybe a bare dataset
    except OSError as exc:
        return Unsendable(path, f"cannot read: {exc.strerror or exc}")
    except Exception as exc:  # pydicom raises many types on garbage; all mean "not readable meta"
        logger.debug("unreadable file meta in %s: %s", path, exc)
        meta = None

    if meta is not None:
        sop_class = meta.get("MediaStorageSOPClassUID")
        sop_instance = meta.get("MediaStorageSOPInstanceUID")
        syntax = meta.get("TransferSyntaxUID")
        if sop_class and sop_instance and syntax:
            return _checked(DicomFile(path, size, UID(sop_class), UID(sop_instance), UID(syntax), True))
    return _inspect_dataset(path, size, meta)


def _inspect_dataset(path: Path, size: int, meta: Dataset | None) -> DicomFile | Unsendable:
    try:
        ds = dcmread(path, force=True, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
        sop_class = ds.get("SOPClassUID")
        sop_instance = ds.get("SOPInstanceUID")
        encoding = ds.original_encoding
    except Exception as exc:  # force=True on arbitrary bytes can fail in many ways
        logger.debug("not DICOM: %s: %s", path, exc)
        return Unsendable(path, "not a DICOM file")
    if not sop_class or not sop_instance:
        if meta is not None:
            return Unsendable(path, "DICOM file without SOP Class UID / SOP Instance UID: cannot be stored")
        return Unsendable(path, "not a DICOM file")
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not syntax:
        syntax = _ENCODING_SYNTAX.get((bool(encoding[0]), bool(encoding[1])), ImplicitVRLittleEndian)
    return _checked(DicomFile(path, size, UID(sop_class), UID(sop_instance), UID(syntax), False))


def _checked(item: DicomFile) -> DicomFile | Unsendable:
    if item.sop_class_uid == MediaStorageDirectoryStorage:
        return Unsendable(item.path, "DICOMDIR (a media index, not an instance to store)")
    return item


def read_for_sending(item: DicomFile) -> Dataset:
    """The decoded dataset of a file without usable meta, with the transfer syntax pynetdicom needs."""
    ds = dcmread(item.path, force=True)
    ds.file_meta.TransferSyntaxUID = item.transfer_syntax_uid
    return ds
