"""Renewing a clinic's certificate bundle: a fresh key and certificate for what the store says it is now.

Leaf certificates live at most a year (``pki.MAX_LEAF_DAYS``), and bundles issued before issue 12 carry
no serverAuth usage or host name, so the clinic's own SCP could not present them to the C-MOVE egress
relay. Renewal re-reads the clinic's AE titles and retrieve address from the store and issues a bundle
exactly as enrolment would today. The previous bundle directory moves to ``clinics/.superseded/`` (a name
no clinic can have) and its certificate stays valid until it expires, so devices can switch over; ``clinic
revoke`` revokes every certificate the clinic ever had.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from securepacs.pki.authority import ClinicBundle, Pki
from securepacs.pki.certificates import MAX_LEAF_DAYS, PkiError
from securepacs.pki.enrolment import EnrolmentError, validate_clinic_name
from securepacs.pki.pem_files import load_cert
from securepacs.store.database import CertificateRecord, Clinic, Store

log = logging.getLogger(__name__)

SUPERSEDED_DIR = ".superseded"


def renew(store: Store, pki: Pki, name: str, days: int = MAX_LEAF_DAYS) -> tuple[Clinic, ClinicBundle, Path | None]:
    """Issue the clinic a new bundle; returns (clinic, new bundle, where the previous bundle went or None)."""
    name = validate_clinic_name(name)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_LEAF_DAYS:
        raise EnrolmentError(f"certificate lifetime {days!r} days is invalid: expected 1-{MAX_LEAF_DAYS}")
    if not pki.has_ca():
        raise EnrolmentError(f"no certificate authority in {pki.ca_cert_path.parent}: run `securepacs pki init` first")
    clinic = store.get_clinic(name)
    if clinic.revoked_at:
        raise EnrolmentError(f"clinic {name!r} was revoked at {clinic.revoked_at}: a revoked clinic gets no new "
                             "certificate")
    directory = pki.clinic_dir(name)
    superseded = _set_aside(directory) if directory.exists() else None
    try:
        bundle = pki.issue_clinic(name, list(clinic.aets), days=days, move_host=clinic.move_host)
    except BaseException:
        if superseded is not None:
            os.rename(superseded, directory)  # the clinic keeps the bundle it had
        raise
    cert = load_cert(bundle.cert_path)
    store.add_certificate(CertificateRecord(
        serial=str(bundle.serial),  # decimal, as int() reads it back for the CRL
        clinic=name,
        subject=cert.subject.rfc4514_string(),
        fingerprint_sha256=bundle.fingerprint,
        not_before=bundle.not_before.isoformat(timespec="seconds"),
        not_after=bundle.not_after.isoformat(timespec="seconds"),
    ))
    log.info("renewed the certificate of clinic %s (serial %d, valid until %s)", name, bundle.serial,
             bundle.not_after.date())
    return clinic, bundle, superseded


def _set_aside(directory: Path) -> Path:
    try:
        serial = str(load_cert(directory / "clinic.crt").serial_number)
    except PkiError:
        serial = "unreadable"
    target = directory.parent / SUPERSEDED_DIR / f"{directory.name}-{serial}"
    try:
        target.parent.mkdir(mode=0o700, exist_ok=True)
        os.rename(directory, target)
    except OSError as exc:
        raise PkiError(f"cannot move the previous bundle {directory} to {target}: {exc.strerror or exc}") from exc
    return target
