"""Clinic enrolment: the store records who a clinic is, the PKI gives it a certificate bundle.

Every input is validated before anything is written. Then the store row comes first (its transaction
enforces unique names and AE titles even against a concurrent enrolment), then the bundle; if the bundle
cannot be written the store row is removed again, so a failed enrolment leaves nothing behind.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from securepacs.config.environment import SettingsError, validate_aet
from securepacs.pki.authority import ClinicBundle, Pki
from securepacs.pki.certificates import CLINIC_NAME_RE, MAX_LEAF_DAYS, PkiError
from securepacs.pki.pem_files import load_cert
from securepacs.store.database import CertificateRecord, Clinic, Store

log = logging.getLogger(__name__)

_HOST_RE = re.compile(r"^[A-Za-z0-9.:_-]{1,253}$")


class EnrolmentError(ValueError):
    """An enrolment or revocation was refused; the message names the value and what was expected."""


@dataclass(frozen=True)
class ClinicRow:
    clinic: str
    aets: tuple[str, ...]
    status: str  # active | expired | revoked | no certificate
    expires: datetime | None
    days_left: int | None


def validate_clinic_name(name: str) -> str:
    # The name becomes a directory under certs/clinics, hence no "/", no leading "." and a length bound.
    if not isinstance(name, str) or not CLINIC_NAME_RE.match(name):
        raise EnrolmentError(f"clinic name {name!r} is invalid: expected 1-64 characters of letters, digits, "
                             "'.', '_', '-', starting with a letter or digit")
    return name


def _validate_aets(aets: Sequence[str], reserved: Sequence[str]) -> list[str]:
    if isinstance(aets, str):
        raise EnrolmentError(f"AE titles {aets!r}: expected a list of AE titles, not a single string")
    if not aets:
        raise EnrolmentError("at least one AE title is needed (--aet)")
    result: list[str] = []
    for raw in aets:
        try:
            aet = validate_aet(raw)
        except SettingsError as exc:
            raise EnrolmentError(str(exc)) from None
        if aet in result:
            raise EnrolmentError(f"AE title {aet!r} is given twice")
        if aet in reserved:
            raise EnrolmentError(f"AE title {aet!r} is the archive's own AE title; choose another one")
        result.append(aet)
    return result


def _validate_move(host: str | None, port: int | None) -> tuple[str | None, int | None]:
    if host is None and port is None:
        return None, None
    if host is None or port is None:
        raise EnrolmentError("the C-MOVE destination needs both a host and a port (--host and --port)")
    if not isinstance(host, str) or not _HOST_RE.match(host):
        raise EnrolmentError(f"C-MOVE host {host!r} is invalid: expected a DNS name or IP address")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise EnrolmentError(f"C-MOVE port {port!r} is invalid: expected a TCP port number 1-65535")
    return host, port


def _check_free(store: Store, pki: Pki, name: str, aets: Sequence[str]) -> None:
    for clinic in store.list_clinics():
        if clinic.name == name:
            note = f" (revoked at {clinic.revoked_at}; names are not reused)" if clinic.revoked_at else ""
            raise EnrolmentError(f"clinic {name!r} already exists{note}")
    for aet in aets:
        owner = store.clinic_for_aet(aet)
        if owner is not None:
            note = " (revoked; AE titles are not reused)" if owner.revoked_at else ""
            raise EnrolmentError(f"AE title {aet!r} is already enrolled for clinic {owner.name!r}{note}")
    directory = pki.clinic_dir(name)
    if directory.exists():
        raise EnrolmentError(f"certificate bundle directory {directory} already exists although the store has "
                             f"no clinic {name!r}; move it away first")


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds")


def enrol(
    store: Store,
    pki: Pki,
    name: str,
    aets: Sequence[str],
    move_host: str | None = None,
    move_port: int | None = None,
    days: int = 365,
    *,
    reserved_aets: Sequence[str] = (),
) -> tuple[Clinic, ClinicBundle]:
    """Register the clinic and its AE titles and issue its certificate bundle."""
    name = validate_clinic_name(name)
    aet_list = _validate_aets(aets, reserved_aets)
    move_host, move_port = _validate_move(move_host, move_port)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_LEAF_DAYS:
        raise EnrolmentError(f"certificate lifetime {days!r} days is invalid: expected 1-{MAX_LEAF_DAYS}")
    if not pki.has_ca():
        raise EnrolmentError(f"no certificate authority in {pki.ca_cert_path.parent}: "
                             "run `securepacs pki init` first")
    _check_free(store, pki, name, aet_list)

    clinic = store.add_clinic(name, aet_list, move_host, move_port)
    try:
        bundle = pki.issue_clinic(name, aet_list, days=days, move_host=move_host)
    except BaseException:
        store.remove_clinic(name)
        raise
    try:
        subject = load_cert(bundle.cert_path).subject.rfc4514_string()
        store.add_certificate(CertificateRecord(
            serial=str(bundle.serial),  # decimal, as int() reads it back for the CRL
            clinic=name,
            subject=subject,
            fingerprint_sha256=bundle.fingerprint,
            not_before=_iso(bundle.not_before),
            not_after=_iso(bundle.not_after),
        ))
    except BaseException:
        shutil.rmtree(bundle.directory, ignore_errors=True)
        store.remove_clinic(name)
        raise
    log.info("enrolled clinic %s with AE titles %s", name, ", ".join(aet_list))
    return clinic, bundle


def refresh_crl(store: Store, pki: Pki, days: int = 7) -> tuple[int, ...]:
    """Rewrite the CRL from every revoked certificate in the store; returns the listed serials."""
    revoked: list[tuple[int, datetime]] = []
    for rec in store.certificates():
        if rec.revoked_at is None:
            continue
        try:
            revoked.append((int(rec.serial), datetime.fromisoformat(rec.revoked_at)))
        except ValueError:
            raise EnrolmentError(f"certificate record serial={rec.serial!r} revoked_at={rec.revoked_at!r} in "
                                 f"{store.path} is malformed: expected a decimal serial and an ISO time") from None
    pki.write_crl(revoked, days=days)
    return tuple(serial for serial, _ in revoked)


def revoke(store: Store, pki: Pki, name: str) -> list[str]:
    """Revoke the clinic and its certificates in the store, then rewrite the CRL; returns revoked serials."""
    name = validate_clinic_name(name)
    # Checked first so a missing CA cannot leave a revocation without its CRL.
    if not pki.has_ca():
        raise EnrolmentError(f"no certificate authority in {pki.ca_cert_path.parent}: "
                             "cannot sign the CRL; run `securepacs pki init` first")
    serials = store.revoke_clinic(name)
    try:
        refresh_crl(store, pki)
    except (PkiError, EnrolmentError) as exc:
        raise PkiError(f"clinic {name!r} is revoked in the store but the CRL {pki.crl_path} was not written: "
                       f"{exc}; fix that and run `securepacs pki crl`") from exc
    log.info("revoked clinic %s (certificate serials %s)", name, ", ".join(serials) or "none")
    return serials


def list_clinics(store: Store, now: datetime | None = None) -> list[ClinicRow]:
    now = now or datetime.now(UTC)
    rows: list[ClinicRow] = []
    for clinic in store.list_clinics():
        certs = store.certificates(clinic.name)  # ordered by not_before: the last one is the newest
        expires = datetime.fromisoformat(certs[-1].not_after) if certs else None
        days_left = (expires - now).days if expires else None
        if clinic.revoked_at:
            status = "revoked"
        elif expires is None:
            status = "no certificate"
        elif expires <= now:
            status = "expired"
        else:
            status = "active"
        rows.append(ClinicRow(clinic.name, clinic.aets, status, expires, days_left))
    return rows
