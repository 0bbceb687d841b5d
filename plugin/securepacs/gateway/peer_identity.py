"""Who is on the wire, and may they use the AE titles they ask for?

A clinic certificate names its clinic and AE titles in SAN URIs (``pki.clinic_identity``); the store
says which AE titles are enrolled for which clinic and what is revoked; the CRL file lists revoked
serials. ``TrustState`` keeps a snapshot of store + CRL, re-read when the store's generation or the
CRL file changes (checked at most every ``refresh_interval``), so revocation applies to new associations
within about a second, without a restart.

Refusals answer with an A-ASSOCIATE-RJ (PS3.8 Table 9-21):
  * called AE title is not ours                       -> permanent, service-user, 7 (called AE not recognized)
  * calling AE title not bound to the certificate,
    or not enrolled for the certificate's clinic      -> permanent, service-user, 3 (calling AE not recognized)
  * certificate revoked / expired / clinic revoked    -> permanent, service-user, 1 (no reason given): PS3.8
    has no "revoked" reason, and the precise reason goes to the event log, not to the (possibly stolen) device
  * association limits                                -> transient, service-provider (presentation), 2
    (local limit exceeded): the only reason PS3.8 defines for this, and retrying later can succeed
  * archive unreachable / trust state unreadable      -> transient, service-provider (presentation), 1
    (temporary congestion)
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from securepacs.config.gateway_settings import GatewayError
from securepacs.gateway import pdu
from securepacs.gateway.store_view import ReadOnlyStore
from securepacs.pki.certificates import clinic_identity
from securepacs.store.database import Clinic

log = logging.getLogger(__name__)

# After this long without a successful refresh the snapshot may be missing revocations: fail closed.
STALE_AFTER = 30.0


@dataclass(frozen=True)
class Refusal:
    """Why an association is refused: the RJ fields sent to the peer and a reason code for the event."""

    code: str
    result: int = pdu.RESULT_REJECTED_PERMANENT
    source: int = pdu.SOURCE_SERVICE_USER
    reason: int = pdu.REASON_NO_REASON

    def pdu(self) -> bytes:
        return pdu.build_reject(self.result, self.source, self.reason)


def _calling(code: str) -> Refusal:
    return Refusal(code, reason=pdu.REASON_CALLING_AET_NOT_RECOGNIZED)


def _called(code: str) -> Refusal:
    return Refusal(code, reason=pdu.REASON_CALLED_AET_NOT_RECOGNIZED)


def limit_refusal(code: str) -> Refusal:
    return Refusal(code, pdu.RESULT_REJECTED_TRANSIENT, pdu.SOURCE_PROVIDER_PRESENTATION,
                   pdu.REASON_LOCAL_LIMIT_EXCEEDED)


def congestion_refusal(code: str) -> Refusal:
    return Refusal(code, pdu.RESULT_REJECTED_TRANSIENT, pdu.SOURCE_PROVIDER_PRESENTATION,
                   pdu.REASON_TEMPORARY_CONGESTION)


@dataclass(frozen=True)
class PeerIdentity:
    """What a verified certificate says about its holder."""

    subject: str
    serial: int
    fingerprint_sha256: str
    not_before: datetime
    not_after: datetime
    clinic: str | None  # from urn:securepacs:clinic:<name>; None for a non-clinic certificate
    aets: tuple[str, ...]  # from urn:securepacs:aet:<AET>

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> PeerIdentity:
        clinic, aets = clinic_identity(cert)
        return cls(
            subject=cert.subject.rfc4514_string(),
            serial=cert.serial_number,
            fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            clinic=clinic,
            aets=aets,
        )


@dataclass(frozen=True)
class TrustSnapshot:
    """Clinics, AE title owners and revoked serials at one moment."""

    clinics: dict[str, Clinic] = field(default_factory=dict)
    aet_owner: dict[str, str] = field(default_factory=dict)
    revoked_serials: frozenset[int] = frozenset()
    loaded_at: float = 0.0  # time.monotonic() of the last successful check

    @classmethod
    def build(cls, clinics: list[Clinic], revoked: set[int], loaded_at: float) -> TrustSnapshot:
        owner = {aet: c.name for c in clinics for aet in c.aets}
        return cls({c.name: c for c in clinics}, owner, frozenset(revoked), loaded_at)

    def revocation(self, clinic: str | None, serial: int | None) -> str | None:
        """Why this clinic/certificate may no longer be used, or None."""
        if serial is not None and serial in self.revoked_serials:
            return "certificate-revoked"
        known = self.clinics.get(clinic) if clinic is not None else None
        if known is not None and not known.active:
            return "clinic-revoked"
        return None


def check_ingress(peer: PeerIdentity, calling: str, called: str, our_aet: str, trust: TrustSnapshot,
                  now: datetime | None = None) -> Refusal | None:
    """None if this certificate may open an association from ``calling`` to ``called``."""
    now = now or datetime.now(UTC)
    if called != our_aet:
        return _called("called-aet-not-ours")
    revoked = trust.revocation(peer.clinic, peer.serial)
    if revoked:
        return Refusal(revoked)
    # OpenSSL already refused expired certificates during the handshake; this guards a session resumed
    # from before the expiry, and a clock jump.
    if peer.not_after < now:
        return Refusal("certificate-expired")
    if peer.not_before > now:
        return Refusal("certificate-not-yet-valid")
    if peer.clinic is None:
        return _calling("certificate-names-no-clinic")
    if peer.clinic not in trust.clinics:
        return _calling("clinic-not-enrolled")
    if calling not in peer.aets:
        return _calling("calling-aet-not-in-certificate")
    if trust.aet_owner.get(calling) != peer.clinic:
        return _calling("calling-aet-not-enrolled-for-clinic")
    return None


def check_egress(calling: str, called: str, our_aet: str, trust: TrustSnapshot) -> Clinic | Refusal:
    """The clinic that owns ``called`` (the C-MOVE destination), or why Orthanc may not reach it."""
    if calling != our_aet:
        return _calling("egress-calling-aet-not-ours")
    owner = trust.aet_owner.get(called)
    clinic = trust.clinics.get(owner) if owner is not None else None
    if clinic is None:
        return _called("destination-aet-unknown")
    if not clinic.active:
        return _called("destination-clinic-revoked")
    if not clinic.move_host or not clinic.move_port:
        return _called("destination-has-no-address")
    return clinic


def check_destination(peer: PeerIdentity, clinic: Clinic, host: str, cert: x509.Certificate,
                      trust: TrustSnapshot) -> str | None:
    """Why the SCP we dialled for ``clinic`` is not acceptable, or None.

    Its certificate (already verified against the clinic CA by OpenSSL, which also refuses one without the
    serverAuth usage) must not be revoked, must be meant for a TLS server (serverAuth, checked here too so
    the rule does not depend on OpenSSL's purpose defaults), must not name a different clinic, and must name
    the host we dialled (SAN DNS/IP; ``clinic add --host`` puts it in the clinic's bundle). A certificate
    naming this clinic is then the clinic's own bundle; one naming no clinic was issued by our CA for that
    host (a separate SCP certificate). Without the host check a bundle stolen from one site of a clinic
    would answer for any address; without the clinic check any clinic's bundle could answer for another
    clinic sharing its host (one NAT address, one server).
    """
    revoked = trust.revocation(peer.clinic, peer.serial)
    if revoked:
        return f"destination-{revoked}"
    if not _serves_tls(cert):
        return "destination-certificate-not-for-servers"
    if peer.clinic is not None and peer.clinic != clinic.name:
        return "destination-certificate-of-another-clinic"
    if not _names_host(cert, host):
        return "destination-certificate-does-not-name-host"
    return None


def _serves_tls(cert: x509.Certificate) -> bool:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True  # RFC 5280: no EKU extension means any usage (OpenSSL agrees)
    return ExtendedKeyUsageOID.SERVER_AUTH in usages


def _names_host(cert: x509.Certificate, host: str) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if host.lower().rstrip(".") in (name.lower().rstrip(".") for name in san.get_values_for_type(x509.DNSName)):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address in san.get_values_for_type(x509.IPAddress)


class TrustState:
    """The current ``TrustSnapshot``, refreshed from the store and the CRL file when they change."""

    def __init__(self, store_path: Path, crl_path: Path, ca_path: Path, refresh_interval: float = 1.0):
        if not store_path.is_file():
            raise GatewayError(f"store {store_path} does not exist: prepare the archive first "
                               "(securepacs serve --prepare-only)")
        self.store = ReadOnlyStore(store_path)  # the gateway never changes enrolment
        self.crl_path = crl_path
        self.ca_path = ca_path
        self.refresh_interval = refresh_interval
        self._lock = threading.Lock()  # one refresh at a time (they run in worker threads)
        self._async_lock: asyncio.Lock | None = None
        self._generation: int | None = None
        self._crl_stamp: tuple[int, int, int] | None = None
        self._crl_serials: set[int] = set()
        self._store_serials: set[int] = set()
        self._clinics: list[Clinic] = []
        self._checked = 0.0
        self.snapshot = TrustSnapshot()
        self.refresh()

    def close(self) -> None:
        self.store.close()

    def refresh(self) -> TrustSnapshot:
        """Re-read whatever changed; on failure keep the previous snapshot (``current`` fails closed later)."""
        with self._lock:
            now = time.monotonic()
            try:
                changed = self._reload_store() | self._reload_crl()
            except Exception as exc:  # sqlite3 / OS errors: keep serving the last known state for a while
                log.error("cannot refresh the gateway's trust state from %s / %s: %s",
                          self.store.path, self.crl_path, exc)
                self._checked = now
                return self.snapshot
            self._checked = now
            if changed or not self.snapshot.loaded_at:
                self.snapshot = TrustSnapshot.build(self._clinics, self._store_serials | self._crl_serials, now)
            else:
                self.snapshot = TrustSnapshot(self.snapshot.clinics, self.snapshot.aet_owner,
                                              self.snapshot.revoked_serials, now)
            return self.snapshot

    def _reload_store(self) -> bool:
        generation = self.store.generation()
        if generation == self._generation:
            return False
        clinics = self.store.list_clinics()
        serials: set[int] = set()
        for raw in self.store.revoked_serials():
            try:
                serials.add(int(raw))
            except ValueError:
                log.warning("store %s lists revoked serial %r, which is not a decimal number; ignored",
                            self.store.path, raw)
        self._clinics, self._store_serials, self._generation = clinics, serials, generation
        log.info("gateway trust state: store generation %d, %d clinic(s), %d revoked serial(s)",
                 generation, len(clinics), len(serials))
        return True

    def _reload_crl(self) -> bool:
        try:
            st = os.stat(self.crl_path)
        except FileNotFoundError:
            stamp = None
        else:
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._crl_stamp:
            return False
        self._crl_stamp = stamp
        if stamp is None:
            self._crl_serials = set()
            return True
        serials = load_crl_serials(self.crl_path, self.ca_path)
        if serials is None:
            return False  # unreadable or not signed by our CA: keep the serials we had
        self._crl_serials = serials
        log.info("gateway trust state: CRL %s lists %d revoked serial(s)", self.crl_path, len(serials))
        return True

    async def current(self) -> TrustSnapshot:
        """The snapshot, refreshed first if the last check is older than ``refresh_interval``."""
        if time.monotonic() - self._checked >= self.refresh_interval:
            if self._async_lock is None:
                self._async_lock = asyncio.Lock()
            async with self._async_lock:
                if time.monotonic() - self._checked >= self.refresh_interval:
                    await asyncio.to_thread(self.refresh)
        return self.snapshot

    @property
    def stale(self) -> bool:
        return time.monotonic() - self.snapshot.loaded_at > max(STALE_AFTER, 3 * self.refresh_interval)


def load_crl_serials(crl_path: Path, ca_path: Path) -> set[int] | None:
    """Serials listed in a PEM/DER CRL signed by the CA in ``ca_path``; None (and an error log) otherwise."""
    try:
        data = crl_path.read_bytes()
        crl = (x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data))
        ca = x509.load_pem_x509_certificates(ca_path.read_bytes())[0]
    except (OSError, ValueError) as exc:
        log.error("cannot read CRL %s (or its CA %s): %s; keeping the previous revocation list",
                  crl_path, ca_path, exc)
        return None
    # An unsigned or foreign CRL could "un-revoke" certificates: only our CA's signature counts.
    try:
        valid = crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        valid = False
    if not valid:
        log.error("CRL %s is not signed by the CA in %s; keeping the previous revocation list", crl_path, ca_path)
        return None
    next_update = crl.next_update_utc
    if next_update is not None and next_update < datetime.now(UTC):
        log.warning("CRL %s expired on %s; still applying it (refresh it with `securepacs pki crl`)",
                    crl_path, next_update.isoformat())
    return {entry.serial_number for entry in crl}
