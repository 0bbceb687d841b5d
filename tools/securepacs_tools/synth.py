"""Deterministic synthetic DICOM data for tests and benchmarks (no real patients, ever).

Same arguments → same bytes (UIDs derive from a seed), so benchmark runs compare like with like.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
# A UID root derived deterministically under pydicom's documented example root "2.25" (UUID-derived form).
_ROOT = "2.25."


def uid(seed: str) -> str:
    """A valid, deterministic 2.25 UID (≤ 64 chars) from any seed string."""
    return _ROOT + str(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:16], "big"))


@dataclass(frozen=True)
class StudySpec:
    seed: str = "study"
    patient_name: str = "SYNTHETIC^PATIENT"
    patient_id: str = "SYN0001"
    modality: str = "CT"
    slices: int = 100
    rows: int = 128
    columns: int = 128

    @property
    def study_uid(self) -> str:
        return uid(f"{self.seed}/study")

    @property
    def series_uid(self) -> str:
        return uid(f"{self.seed}/series")


def _pixels(spec: StudySpec, index: int) -> bytes:
    # A smooth gradient plus a per-slice offset: compresses like a real image, cheap to make.
    y, x = np.mgrid[0 : spec.rows, 0 : spec.columns]
    img = ((x * 7 + y * 3 + index * 11) % 4096).astype("<u2")
    return img.tobytes()


def instance(spec: StudySpec, index: int) -> Dataset:
    sop_class = CT_IMAGE_STORAGE if spec.modality == "CT" else DX_IMAGE_STORAGE
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid(f"{spec.seed}/instance/{index}")
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.FrameOfReferenceUID = uid(f"{spec.seed}/frame")
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = hashlib.sha256(spec.seed.encode()).hexdigest()[:12].upper()
    ds.StudyDescription = f"Synthetic {spec.modality} study"
    ds.SeriesDescription = f"Synthetic {spec.modality} series"
    ds.ReferringPhysicianName = ""
    ds.Modality = spec.modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(index)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SliceThickness = 1.0
    ds.PixelSpacing = [0.7, 0.7]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if spec.modality == "CT":
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
    ds.PixelData = _pixels(spec, index)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def write_study(spec: StudySpec, directory: Path) -> list[Path]:
    """Write the study as one file per instance; returns the paths in instance order."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(spec.slices):
        path = directory / f"{spec.seed}-{i:05d}.dcm"
        instance(spec, i).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def iter_pydicom_test_files() -> Iterator[Path]:
    """pydicom's bundled test files (listed from disk: get_testdata_files() tries the internet)."""
    import pydicom

    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    yield from sorted(p for p in folder.rglob("*") if p.is_file())
