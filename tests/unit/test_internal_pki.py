"""The internal CA for the gateway ↔ Orthanc hop."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from securepacs.pki.authority import Pki
from securepacs.pki.certificates import make_cert
from securepacs.pki.internal_ca import InternalPki
from securepacs.pki.pem_files import load_cert, load_key, write_cert, write_key


def test_creates_ca_and_both_leaves_once(tmp_path: Path) -> None:
    internal = InternalPki(tmp_path)
    assert not internal.complete()
    assert internal.ensure() is True
    assert internal.complete()
    before = {n: internal.cert_path(n).read_bytes() for n in ("orthanc", "gateway")}
    assert internal.ensure() is False  # a second start keeps everything
    assert before == {n: internal.cert_path(n).read_bytes() for n in ("orthanc", "gateway")}


def test_leaves_are_rsa_server_and_client_certificates_of_the_internal_ca(tmp_path: Path) -> None:
    internal = InternalPki(tmp_path)
    internal.ensure()
    ca = load_cert(internal.ca_cert_path)
    for name in ("orthanc", "gateway"):
        cert = load_cert(internal.cert_path(name))
        assert cert.issuer == ca.subject
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= usages
        # Orthanc 1.10.1's TLS 1.2 suites are RSA-only.
        assert isinstance(load_key(internal.key_path(name)), rsa.RSAPrivateKey)
        assert stat.S_IMODE(internal.key_path(name).stat().st_mode) == 0o600


def test_internal_ca_is_not_the_clinic_ca(tmp_path: Path) -> None:
    public = Pki(tmp_path)
    public.ensure_ca()
    internal = InternalPki(tmp_path)
    internal.ensure()
    # Orthanc trusts only the internal CA: a clinic certificate (public CA) must not chain to it.
    assert load_cert(internal.ca_cert_path).subject != load_cert(public.ca_cert_path).subject


def test_a_leaf_from_another_ca_is_reissued(tmp_path: Path) -> None:
    first = InternalPki(tmp_path)
    first.ensure()
    other = InternalPki(tmp_path / "other")
    other.ensure()
    first.cert_path("gateway").write_bytes(other.cert_path("gateway").read_bytes())
    assert first.ensure() is True
    assert load_cert(first.cert_path("gateway")).issuer == load_cert(first.ca_cert_path).subject


def test_leaves_live_at_most_365_days_and_older_longer_ones_are_reissued(tmp_path: Path) -> None:
    internal = InternalPki(tmp_path)
    internal.ensure()
    for name in ("orthanc", "gateway"):
        cert = load_cert(internal.cert_path(name))
        assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 365
    # A leaf of the former 825-day policy, far from expiry, is replaced at the next start.
    now = datetime.now(UTC)
    ca_key, ca_cert = load_key(internal.ca_key_path), load_cert(internal.ca_cert_path)
    key, cert = make_cert(ca_key, ca_cert, "SecurePACS gateway (internal)", usage="server+client",
                          dns_names=["localhost"], not_before=now, not_after=now + timedelta(days=825))
    write_key(internal.key_path("gateway"), key, overwrite=True)
    write_cert(internal.cert_path("gateway"), cert)
    assert internal.ensure() is True
    renewed = load_cert(internal.cert_path("gateway"))
    assert (renewed.not_valid_after_utc - renewed.not_valid_before_utc).days == 365
