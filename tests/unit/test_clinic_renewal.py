"""``securepacs clinic renew``: a fresh bundle for a clinic, from what the store says it is now."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from securepacs.cli.main import main
from securepacs.pki import certificates, enrolment, pem_files, renewal
from securepacs.pki.authority import Pki
from securepacs.pki.certificates import PkiError
from securepacs.pki.enrolment import EnrolmentError
from securepacs.store.database import Store
from securepacs.store.records import StoreError


@pytest.fixture(autouse=True)
def fast_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(certificates, "CA_KEY_KIND", "ec-p256")
    monkeypatch.setattr(certificates, "LEAF_KEY_KIND", "ec-p256")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Store, Pki]]:
    store = Store(tmp_path / "data" / "securepacs.db")
    p = Pki(tmp_path / "certs")
    p.ensure_ca()
    yield store, p
    store.close()


def usages(path: Path) -> list[x509.ObjectIdentifier]:
    return list(pem_files.load_cert(path).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_renewal_gives_an_old_client_only_bundle_the_scp_role(world: tuple[Store, Pki]) -> None:
    store, p = world
    # A clinic enrolled before issue 12: retrieve address in the store, clientAuth-only bundle on disk.
    store.add_clinic("north", ["NORTH"], "10.0.0.5", 11112)
    old = p.issue_clinic("north", ["NORTH"], days=30)
    assert usages(old.cert_path) == [ExtendedKeyUsageOID.CLIENT_AUTH]

    clinic, new, superseded = renewal.renew(store, p, "north", days=60)
    assert clinic.name == "north" and new.directory == old.directory and new.serial != old.serial
    assert usages(new.cert_path) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    san = pem_files.load_cert(new.cert_path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert certificates.clinic_identity(pem_files.load_cert(new.cert_path)) == ("north", ("NORTH",))
    old_key = pem_files.load_key(superseded / "clinic.key")
    assert pem_files.load_key(new.key_path).private_numbers() != old_key.private_numbers()
    # The previous bundle is kept aside (its certificate stays valid until it expires); both are recorded.
    assert superseded == p.certs_dir / "clinics" / ".superseded" / f"north-{old.serial}"
    assert pem_files.load_cert(superseded / "clinic.crt").serial_number == old.serial
    assert [c.serial for c in store.certificates("north")] == [str(new.serial)]  # only renew() records here
    assert enrolment.list_clinics(store)[0].days_left in (59, 60)


def test_renewal_refusals_keep_the_bundle(world: tuple[Store, Pki], monkeypatch: pytest.MonkeyPatch) -> None:
    store, p = world
    enrolment.enrol(store, p, "north", ["NORTH"])
    bundle = p.clinic_dir("north")
    before = (bundle / "clinic.crt").read_bytes()
    with pytest.raises(EnrolmentError, match="366 days is invalid"):
        renewal.renew(store, p, "north", days=366)
    with pytest.raises(StoreError, match="unknown clinic 'south'"):
        renewal.renew(store, p, "south")

    def broken(*args: object, **kwargs: object) -> None:
        raise PkiError("disk full")

    monkeypatch.setattr(Pki, "issue_clinic", broken)
    with pytest.raises(PkiError, match="disk full"):
        renewal.renew(store, p, "north")
    assert (bundle / "clinic.crt").read_bytes() == before  # moved back
    monkeypatch.undo()
    enrolment.revoke(store, p, "north")
    with pytest.raises(EnrolmentError, match="revoked clinic gets no new certificate"):
        renewal.renew(store, p, "north")


def test_cli_clinic_renew(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SECUREPACS_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SECUREPACS_CERTS", str(tmp_path / "certs"))
    monkeypatch.setenv("SECUREPACS_HOSTNAMES", "pacs.example.org,localhost,127.0.0.1")
    assert main(["pki", "init"]) == 0
    assert main(["clinic", "add", "north", "--aet", "NORTH", "--host", "scp.north.example", "--port", "11112"]) == 0
    capsys.readouterr()
    assert main(["clinic", "renew", "north", "--days", "30"]) == 0
    out = capsys.readouterr().out
    assert "Renewed the certificate of clinic 'north'" in out
    assert "Previous bundle moved to" in out and "stays valid until it expires" in out
    assert "certificate of the SCP at scp.north.example:11112" in out
    assert main(["clinic", "renew", "nowhere"]) == 2
    assert "unknown clinic 'nowhere'" in capsys.readouterr().err
