"""Shared pieces of the web app's browser tests: a synthetic CT with known pixels, users, and Chromium.

The CT's stored value at (row, col) of slice k is ``(4 * col + 20 * k) % 3000`` (int16, rescale -1024),
so a test can compute the Hounsfield values of any slice and compare the server's render with
``securepacs.webapp.windowing.window`` numerically.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "results" / "artifacts" / "webapp"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# Reports Content-Security-Policy violations to the test (through an exposed function, so violations on
# pages navigated away from are kept), installed before any page script runs (init scripts are not subject
# to the page's CSP).
CSP_WATCH = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  const v = {page: location.pathname, directive: e.violatedDirective, blocked: e.blockedURI, line: e.lineNumber};
  window.__cspViolations.push(v);
  if (window.__securepacsCsp) window.__securepacsCsp(v);
});
"""


def stored_values(rows: int, columns: int, index: int) -> np.ndarray:
    col = np.arange(columns, dtype=np.int32)[None, :].repeat(rows, axis=0)
    return ((4 * col + 20 * index) % 3000).astype(np.int16)


def hounsfield(rows: int, columns: int, index: int) -> np.ndarray:
    return stored_values(rows, columns, index).astype(np.float32) - 1024.0


def phantom(rows: int, columns: int, index: int) -> np.ndarray:
    """A body-like slice (stored values, rescale -1024): air, soft tissue with noise, two lungs, a bone
    ring — so JPEG sizes in the benchmark are those of an image, not of a gradient."""
    rng = np.random.default_rng(index)
    y, x = np.mgrid[-1:1:rows * 1j, -1:1:columns * 1j]
    hu = np.full((rows, columns), -1000.0)
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 < 1
    hu[body] = 40 + rng.normal(0, 15, body.sum())
    for cx in (-0.35, 0.35):
        lung = ((x - cx) / 0.28) ** 2 + ((y + 0.05) / (0.4 + 0.05 * np.sin(index / 20))) ** 2 < 1
        hu[lung] = -820 + rng.normal(0, 30, lung.sum())
    ring = np.abs(np.hypot(x, y * 1.3) - 0.55) < 0.03
    hu[ring] = 700
    return np.clip(hu + 1024, 0, 4095).astype(np.int16)


def write_ct(folder: Path, *, slices: int, size: int, patient_id: str, patient_name: str,
             description: str, pixels: Any = stored_values) -> str:
    """A CT series of ``slices`` frames ``size``² written as files; returns the Study Instance UID."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_ref
        ds.StudyDate, ds.StudyTime, ds.StudyDescription = "20260101", "101010", description
        ds.AccessionNumber, ds.StudyID, ds.Modality = f"ACC{secrets.randbelow(10**6):06d}", "1", "CT"
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = 1, k + 1, "Axial"
        ds.ImagePositionPatient = [0.0, 0.0, float(-k * 2.5)]  # reversed on purpose: Orthanc must order them
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 2.5
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = pixels(size, size, k).tobytes()
        ds.save_as(folder / f"ct{k:03d}.dcm", enforce_file_format=True)
    return study


def add_user(archive: Any, folder: Path, name: str, role: str, clinic: str | None) -> tuple[str, str]:
    password = "Wb-" + secrets.token_urlsafe(18)
    # Inside the data dir: the compose stack's CLI runs in the init container, which sees only its volumes.
    pw_file = archive.data_dir / f".{name}.pw"
    pw_file.write_text(password + "\n")
    container_path = pw_file if archive.kind == "native" else Path("/var/lib/securepacs") / pw_file.name
    args = ["user", "add", name, "--role", role, "--password-file", str(container_path)]
    if clinic:
        args += ["--clinic", clinic]
    try:
        archive.cli(*args)
    finally:
        pw_file.unlink()
    return name, password


def audit_records(archive: Any, *args: str) -> list[dict[str, Any]]:
    out = archive.cli("audit", "search", *args).stdout
    return [json.loads(line)["record"] if "record" in json.loads(line) else json.loads(line)
            for line in out.splitlines() if line.strip()]


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def launch(playwright: Any) -> Any:
    if not os.path.exists(CHROMIUM):
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium (orthanc/install.sh --with-tests)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def write_multiframe(path: Path, *, frames: int, size: int, patient_id: str, patient_name: str) -> str:
    """One MONOCHROME1 multi-frame instance (Multi-frame Grayscale Word SC), unsigned 16-bit: frame k is
    filled with 1000 * k plus a column ramp; no rescale. Returns the Study Instance UID."""
    sop_class = "1.2.840.10008.5.1.4.1.1.7.3"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = patient_name, patient_id, "OT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyDescription, ds.SeriesNumber, ds.InstanceNumber = (
        "20250101", "080000", "multi-frame", 1, 1)
    ds.Rows = ds.Columns = size
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.stack([multiframe_values(size, k) for k in range(frames)]).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return str(ds.StudyInstanceUID)


def multiframe_values(size: int, frame: int) -> np.ndarray:
    return (1000 * frame + np.arange(size, dtype=np.uint16)[None, :].repeat(size, axis=0) * 10).astype(np.uint16)
