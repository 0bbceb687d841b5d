"""Certificate authority: extensions, lifetimes, file handling, idempotence, bundles and CRLs."""

from __future__ import annotations

import ipaddress
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securepacs.pki import authority, certificates, pem_files
from securepacs.pki.authority import Pki
from securepacs.pki.certificates import PkiError

REAL_CA_KIND = certificates.CA_KEY_KIND
REAL_LEAF_KIND = certificates.LEAF_KEY_KIND


@pytest.fixture(autouse=True)
def fast_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    # RSA 4096 takes about a second; these tests are about structure, not key size (see test_real_defaults).
    monkeypatch.setattr(certificates, "CA_KEY_KIND", "ec-p256")
    monkeypatch.setattr(certificates, "LEAF_KEY_KIND", "ec-p256")


@pytest.fixture
def ca() -> tuple[certificates.PrivateKey, x509.Certificate]:
    return certificates.make_ca("Test CA", days=30)


def ext(cert: x509.Certificate, cls: type) -> x509.Extension:
    return cert.extensions.get_extension_for_class(cls)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# -- keys and certificates ---------------------------------------------------------------------------


def test_generate_key_kinds() -> None:
    assert isinstance(certificates.generate_key("ec-p256"), ec.EllipticCurvePrivateKey)
    with pytest.raises(PkiError, match=r"'dsa1024'.*rsa3072, rsa4096, ec-p256"):
        certificates.generate_key("dsa1024")


def test_ca_extensions_and_lifetime(ca: tuple[certificates.PrivateKey, x509.Certificate]) -> None:
    key, cert = ca
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    assert ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Test CA"
    cert.verify_directly_issued_by(cert)
    lifetime = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=29, hours=23) < lifetime <= timedelta(days=30)


@pytest.mark.parametrize("days", [0, 3651, -1])
def test_ca_lifetime_bounded(days: int) -> None:
    with pytest.raises(PkiError, match=rf"days={days}.*1-3650"):
        certificates.make_ca("Test CA", days=days)


def test_leaf_extensions(ca: tuple[certificates.PrivateKey, x509.Certificate]) -> None:
    ca_key, ca_cert = ca
    key, cert = certificates.make_cert(ca_key, ca_cert, "pacs.example.org", usage="server+client",
                              dns_names=["pacs.example.org"], ip_addresses=["127.0.0.1", "::1"],
                              uris=["urn:example:x"], organization="Example", days=10)
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH,
                                                            ExtendedKeyUsageOID.CLIENT_AUTH]
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["pacs.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                       ipaddress.ip_address("::1")]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:example:x"]
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca_cert, x509.SubjectKeyIdentifier).value.digest
    assert ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Example"
    cert.verify_directly_issued_by(ca_cert)
    assert cert.not_valid_after_utc - datetime.now(UTC) <= timedelta(days=10)


@pytest.mark.parametrize(("usage", "expected"), [
    ("server", [ExtendedKeyUsageOID.SERVER_AUTH]),
    ("client", [ExtendedKeyUsageOID.CLIENT_AUTH]),
])
def test_leaf_usage(ca: tuple[certificates.PrivateKey, x509.Certificate], usage: str, expected: list) -> None:
    _, cert = certificates.make_cert(*ca, "x", usage=usage, days=1)
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == expected
    with pytest.raises(x509.ExtensionNotFound):  # no names given: no (invalid, empty) SAN extension
        ext(cert, x509.SubjectAlternativeName)


def test_leaf_serials_random(ca: tuple[certificates.PrivateKey, x509.Certificate]) -> None:
    key = certificates.generate_key("ec-p256")
    serials = {certificates.make_cert(*ca, "x", usage="client", days=1, key=key)[1].serial_number for _ in range(3)}
    assert len(serials) == 3 and all(s > 2**64 for s in serials)


def test_leaf_lifetime_rules(ca: tuple[certificates.PrivateKey, x509.Certificate]) -> None:
    ca_key, ca_cert = certificates.make_ca("Long CA", days=3650)
    with pytest.raises(PkiError, match=r"days=366.*1-365"):  # Mozilla's TLS profiles: at most 366 days
        certificates.make_cert(ca_key, ca_cert, "x", usage="client", days=366)
    _, longest = certificates.make_cert(ca_key, ca_cert, "x", usage="client", days=365)
    assert (longest.not_valid_after_utc - longest.not_valid_before_utc).days == 365  # clock skew included
    # Explicit dates are how tests craft expired certificates: no cap, but the range must not be empty.
    start = datetime(2020, 1, 1, tzinfo=UTC)
    _, old = certificates.make_cert(ca_key, ca_cert, "x", usage="client", not_before=start,
                                 not_after=start + timedelta(900))
    assert old.not_valid_before_utc == start and old.not_valid_after_utc < datetime.now(UTC)
    with pytest.raises(PkiError, match="validity is empty"):
        certificates.make_cert(ca_key, ca_cert, "x", usage="client", not_before=start, not_after=start)
    with pytest.raises(PkiError, match="timezone-aware"):
        certificates.make_cert(ca_key, ca_cert, "x", usage="client", not_before=datetime(2020, 1, 1))
    with pytest.raises(PkiError, match="after the CA certificate"):
        certificates.make_cert(*ca, "x", usage="client", days=31)  # the 30-day CA would expire first


def test_leaf_bad_inputs(ca: tuple[certificates.PrivateKey, x509.Certificate]) -> None:
    with pytest.raises(PkiError, match="usage 'mail'"):
        certificates.make_cert(*ca, "x", usage="mail")
    with pytest.raises(PkiError, match="DNS name 'bad name'"):
        certificates.make_cert(*ca, "x", usage="server", dns_names=["bad name"])
    with pytest.raises(PkiError, match=r"IP address '300\.1\.1\.1'"):
        certificates.make_cert(*ca, "x", usage="server", ip_addresses=["300.1.1.1"])
    with pytest.raises(PkiError, match="not a single string"):
        certificates.make_cert(*ca, "x", usage="server", dns_names="example.org")
    with pytest.raises(PkiError, match="common name"):
        certificates.make_cert(*ca, "x" * 65, usage="client")
    other_key, _ = certificates.make_ca("Other")
    with pytest.raises(PkiError, match="does not match CA certificate"):
        certificates.make_cert(other_key, ca[1], "x", usage="client")


def test_fingerprint(ca: tuple[certificates.PrivateKey, x509.Certificate]) -> None:
    fp = certificates.fingerprint_sha256(ca[1])
    assert len(fp) == 64 and fp == fp.lower() and ":" not in fp
    assert bytes.fromhex(fp) == ca[1].fingerprint(hashes.SHA256())


# -- files -------------------------------------------------------------------------------------------


def test_write_key_mode_and_no_overwrite(tmp_path: Path) -> None:
    key = certificates.generate_key("ec-p256")
    path = tmp_path / "sub" / "k.key"
    pem_files.write_key(path, key)
    assert mode(path) == 0o600
    assert pem_files.load_key(path).private_numbers() == key.private_numbers()
    before = path.read_bytes()
    with pytest.raises(PkiError, match=f"{re.escape(str(path))} already exists"):
        pem_files.write_key(path, certificates.generate_key("ec-p256"))
    assert path.read_bytes() == before
    pem_files.write_key(path, certificates.generate_key("ec-p256"), overwrite=True)
    assert path.read_bytes() != before and mode(path) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["k.key"]  # no temporary files left


def test_write_key_passphrase(tmp_path: Path) -> None:
    key = certificates.generate_key("ec-p256")
    path = tmp_path / "enc.key"
    pem_files.write_key(path, key, b"secret passphrase")
    assert b"ENCRYPTED" in path.read_bytes()
    with pytest.raises(PkiError, match=f"{re.escape(str(path))} is encrypted"):
        pem_files.load_key(path)
    assert pem_files.load_key(path, b"secret passphrase").private_numbers() == key.private_numbers()


def test_write_cert_mode_and_chain(tmp_path: Path, ca: tuple[certificates.PrivateKey, x509.Certificate]) -> None:
    _, leaf = certificates.make_cert(*ca, "x", usage="client", days=1)
    path = tmp_path / "chain.pem"
    pem_files.write_cert(path, leaf, ca[1])
    assert mode(path) == 0o644
    assert x509.load_pem_x509_certificates(path.read_bytes()) == [leaf, ca[1]]
    assert pem_files.load_cert(path) == leaf
    with pytest.raises(PkiError, match="already exists"):
        pem_files.write_cert(path, leaf, overwrite=False)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(PkiError, match=f"certificate file {re.escape(str(missing))} does not exist"):
        pem_files.load_cert(missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(PkiError, match=f"{re.escape(str(garbage))} does not contain a valid X\\.509"):
        pem_files.load_cert(garbage)
    with pytest.raises(PkiError, match=f"{re.escape(str(garbage))} does not contain a readable PEM private key"):
        pem_files.load_key(garbage)


# -- the on-disk layout ------------------------------------------------------------------------------


def test_layout(tmp_path: Path) -> None:
    p = Pki(tmp_path)
    assert p.ca_key_path == tmp_path / "ca" / "ca.key"
    assert p.ca_cert_path == tmp_path / "ca" / "ca.crt"
    assert p.crl_path == tmp_path / "ca" / "crl.pem"
    assert p.server_key_path == tmp_path / "server" / "server.key"
    assert p.server_cert_path == tmp_path / "server" / "server.crt"
    assert p.clinic_dir("north-1") == tmp_path / "clinics" / "north-1"
    for bad in ("..", "../x", ".hidden", "a/b", "", "x" * 65):
        with pytest.raises(PkiError, match="clinic name"):
            p.clinic_dir(bad)


def test_ensure_ca_idempotent(tmp_path: Path) -> None:
    p = Pki(tmp_path)
    assert not p.has_ca()
    assert p.ensure_ca() is True
    assert p.has_ca() and mode(p.ca_key_path) == 0o600 and mode(p.ca_cert_path) == 0o644
    before = snapshot(tmp_path)
    assert p.ensure_ca() is False
    assert snapshot(tmp_path) == before


def test_ensure_ca_refuses_half_a_ca(tmp_path: Path) -> None:
    p = Pki(tmp_path)
    p.ensure_ca()
    p.ca_cert_path.unlink()
    expected = f"{p.ca_key_path} exists but {p.ca_cert_path} is missing"
    with pytest.raises(PkiError, match=re.escape(expected)):
        p.ensure_ca()
    assert not p.ca_cert_path.exists()


def test_ensure_server(tmp_path: Path) -> None:
    p = Pki(tmp_path)
    with pytest.raises(PkiError, match="securepacs pki init"):
        p.ensure_server(["localhost"])
    p.ensure_ca()
    assert p.ensure_server(["pacs.example.org", "localhost", "127.0.0.1", "::1"]) is True
    assert mode(p.server_key_path) == 0o600
    cert = pem_files.load_cert(p.server_cert_path)
    cert.verify_directly_issued_by(pem_files.load_cert(p.ca_cert_path))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pacs.example.org"
    assert set(ext(cert, x509.ExtendedKeyUsage).value) == {ExtendedKeyUsageOID.SERVER_AUTH,
                                                           ExtendedKeyUsageOID.CLIENT_AUTH}
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["pacs.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                       ipaddress.ip_address("::1")]
    lifetime = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=364) < lifetime <= timedelta(days=365)

    before = snapshot(tmp_path)
    assert p.ensure_server(["localhost", "pacs.example.org"]) is False  # a subset is covered
    assert snapshot(tmp_path) == before

    assert p.ensure_server(["localhost", "other.example.org"]) is True  # a missing name re-issues
    assert p.server_key_path.read_bytes() != before["server/server.key"]
    san = ext(pem_files.load_cert(p.server_cert_path), x509.SubjectAlternativeName).value
    assert "other.example.org" in san.get_values_for_type(x509.DNSName)


def test_ensure_server_renews_expiring(tmp_path: Path) -> None:
    p = Pki(tmp_path)
    p.ensure_ca()
    ca_key, ca_cert = p.load_ca()
    now = datetime.now(UTC)
    key, cert = certificates.make_cert(ca_key, ca_cert, "localhost", usage="server+client", dns_names=["localhost"],
                              not_before=now - timedelta(days=300), not_after=now + timedelta(days=29))
    pem_files.write_key(p.server_key_path, key)
    pem_files.write_cert(p.server_cert_path, cert)
    assert "less than 30 days" in (p.server_renewal_reason(["localhost"]) or "")
    assert p.ensure_server(["localhost"]) is True
    assert pem_files.load_cert(p.server_cert_path).not_valid_after_utc > now + timedelta(days=300)
    assert pem_files.load_key(p.server_key_path).private_numbers() != key.private_numbers()


def test_ensure_server_reissues_a_certificate_longer_than_the_cap(tmp_path: Path) -> None:
    """A 397-day certificate from before the 365-day cap is replaced at the next start, though far from expiry."""
    p = Pki(tmp_path)
    p.ensure_ca()
    ca_key, ca_cert = p.load_ca()
    now = datetime.now(UTC)
    key, cert = certificates.make_cert(ca_key, ca_cert, "localhost", usage="server+client", dns_names=["localhost"],
                              not_before=now, not_after=now + timedelta(days=397))
    pem_files.write_key(p.server_key_path, key)
    pem_files.write_cert(p.server_cert_path, cert)
    assert p.server_renewal_reason(["localhost"]) == "valid for 397 days, longer than the 365-day limit"
    assert p.ensure_server(["localhost"]) is True
    renewed = pem_files.load_cert(p.server_cert_path)
    assert (renewed.not_valid_after_utc - renewed.not_valid_before_utc).days == 365
    assert p.server_renewal_reason(["localhost"]) is None


def test_ensure_server_bad_hostnames(tmp_path: Path) -> None:
    p = Pki(tmp_path)
    p.ensure_ca()
    before = snapshot(tmp_path)
    for bad in ([], ["bad host"], "localhost"):
        with pytest.raises(PkiError):
            p.ensure_server(bad)
    assert snapshot(tmp_path) == before


def test_issue_clinic_bundle(tmp_path: Path) -> None:
    p = Pki(tmp_path)
    p.ensure_ca()
    b = p.issue_clinic("north", ["MY AET", "CT_1"], days=100)
    assert b.directory == tmp_path / "clinics" / "north"
    assert sorted(f.name for f in b.directory.iterdir()) == sorted(
        ["clinic.key", "clinic.crt", "ca.crt", "clinic.p12", "clinic.p12.pass"])
    for path in (b.key_path, b.p12_path, b.p12_pass_path):
        assert mode(path) == 0o600, path
    cert = pem_files.load_cert(b.cert_path)
    ca_cert = pem_files.load_cert(p.ca_cert_path)
    cert.verify_directly_issued_by(ca_cert)
    assert b.ca_path.read_bytes() == p.ca_cert_path.read_bytes()
    assert cert.subject.rfc4514_string() == "O=SecurePACS clinic,CN=north"
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert (b.serial, b.fingerprint) == (cert.serial_number, certificates.fingerprint_sha256(cert))
    assert (b.not_before, b.not_after) == (cert.not_valid_before_utc, cert.not_valid_after_utc)
    assert certificates.clinic_identity(cert) == ("north", ("MY AET", "CT_1"))
    uris = ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["urn:securepacs:clinic:north", "urn:securepacs:aet:MY%20AET", "urn:securepacs:aet:CT_1"]

    passphrase = b.p12_pass_path.read_text().strip()
    assert len(passphrase) >= 32
    p12 = pkcs12.load_pkcs12(b.p12_path.read_bytes(), passphrase.encode())
    assert p12.key is not None and p12.cert is not None
    assert p12.key.private_numbers() == pem_files.load_key(b.key_path).private_numbers()
    assert p12.cert.certificate == cert
    assert [c.certificate for c in p12.additional_certs] == [ca_cert]
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(b.p12_path.read_bytes(), b"wrong")


def test_clinic_bundle_with_a_retrieve_address_also_serves_the_clinic_scp(tmp_path: Path) -> None:
    p = Pki(tmp_path)
    p.ensure_ca()
    for host, dns, ips in (("10.1.2.3", [], [ipaddress.ip_address("10.1.2.3")]),
                           ("PACS.North.example", ["pacs.north.example"], [])):
        name = f"north{len(dns)}"
        cert = pem_files.load_cert(p.issue_clinic(name, ["N"], days=30, move_host=host).cert_path)
        assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH,
                                                                ExtendedKeyUsageOID.CLIENT_AUTH]
        san = ext(cert, x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == dns
        assert san.get_values_for_type(x509.IPAddress) == ips
        assert certificates.clinic_identity(cert) == (name, ("N",))
    with pytest.raises(PkiError, match=r"DNS name 'bad\.\.host' is invalid"):
        p.issue_clinic("south", ["S"], move_host="bad..host")
    assert not (tmp_path / "clinics" / "south").exists()


def test_issue_clinic_refusals_leave_nothing(tmp_path: Path) -> None:
    p = Pki(tmp_path)
    with pytest.raises(PkiError, match="securepacs pki init"):
        p.issue_clinic("north", ["A"])
    p.ensure_ca()
    p.issue_clinic("north", ["A"])
    before = snapshot(tmp_path)
    with pytest.raises(PkiError, match="already exists"):
        p.issue_clinic("north", ["B"])
    for aets in ([], ["x" * 17], ["A\\B"], ["A\nB"], [""]):
        with pytest.raises(PkiError):
            p.issue_clinic("south", aets)
    with pytest.raises(PkiError, match="days=900"):
        p.issue_clinic("south", ["S"], days=900)
    assert snapshot(tmp_path) == before
    assert not p.clinic_dir("south").exists()


def test_issue_clinic_removes_partial_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = Pki(tmp_path)
    p.ensure_ca()
    real = authority.write_file

    def fail_on_p12(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
        if path.name == "clinic.p12":
            raise PkiError(f"cannot write {re.escape(str(path))}: disk full")
        real(path, data, mode, overwrite=overwrite)

    monkeypatch.setattr(authority, "write_file", fail_on_p12)
    with pytest.raises(PkiError, match="disk full"):
        p.issue_clinic("north", ["A"])
    assert not p.clinic_dir("north").exists()


def test_clinic_identity_of_other_certs(ca: tuple[certificates.PrivateKey, x509.Certificate]) -> None:
    assert certificates.clinic_identity(ca[1]) == (None, ())
    _, cert = certificates.make_cert(*ca, "x", usage="server", dns_names=["example.org"], days=1)
    assert certificates.clinic_identity(cert) == (None, ())


def test_write_crl(tmp_path: Path) -> None:
    p = Pki(tmp_path)
    with pytest.raises(PkiError, match="securepacs pki init"):
        p.write_crl([])
    p.ensure_ca()
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert p.write_crl([(1234567, when)], days=3) == p.crl_path
    crl = x509.load_pem_x509_crl(p.crl_path.read_bytes())
    ca_cert = pem_files.load_cert(p.ca_cert_path)
    assert crl.is_signature_valid(ca_cert.public_key())
    assert crl.issuer == ca_cert.subject
    entry = crl.get_revoked_certificate_by_serial_number(1234567)
    assert entry is not None and entry.revocation_date_utc == when
    assert crl.next_update_utc - crl.last_update_utc == timedelta(days=3)
    first = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    p.write_crl([])
    crl2 = x509.load_pem_x509_crl(p.crl_path.read_bytes())
    assert len(crl2) == 0
    assert crl2.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > first
    with pytest.raises(PkiError, match="serial -5"):
        p.write_crl([(-5, when)])
    with pytest.raises(PkiError, match="timezone-aware"):
        p.write_crl([(5, datetime(2024, 1, 1))])


def test_real_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The deployed key types: RSA 4096 CA, RSA 3072 leaves (Orthanc's TLS 1.2 suites are RSA-only)."""
    monkeypatch.setattr(certificates, "CA_KEY_KIND", REAL_CA_KIND)
    monkeypatch.setattr(certificates, "LEAF_KEY_KIND", REAL_LEAF_KIND)
    p = Pki(tmp_path)
    assert p.ensure_ca() and p.ensure_server(["localhost"])
    bundle = p.issue_clinic("north", ["A"])
    ca_cert = pem_files.load_cert(p.ca_cert_path)
    assert ca_cert.public_key().key_size == 4096
    assert timedelta(days=3649) < ca_cert.not_valid_after_utc - datetime.now(UTC) <= timedelta(days=3650)
    for path in (p.server_cert_path, bundle.cert_path):
        cert = pem_files.load_cert(path)
        public = cert.public_key()
        assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 3072
        assert ext(cert, x509.KeyUsage).value.key_encipherment
    assert timedelta(days=364) < bundle.not_after - datetime.now(UTC) <= timedelta(days=365)
