"""Clinic enrolment and revocation, through the service module and the ``securepacs`` command line."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from securepacs.cli.main import main
from securepacs.pki import certificates, enrolment, pem_files
from securepacs.pki.authority import Pki
from securepacs.pki.certificates import PkiError
from securepacs.pki.enrolment import EnrolmentError
from securepacs.store.database import Store
from securepacs.store.records import StoreError


@pytest.fixture(autouse=True)
def fast_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    # Key size is covered by test_pki.test_real_defaults; here EC keys keep the tests fast.
    monkeypatch.setattr(certificates, "CA_KEY_KIND", "ec-p256")
    monkeypatch.setattr(certificates, "LEAF_KEY_KIND", "ec-p256")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Store, Pki]]:
    store = Store(tmp_path / "data" / "securepacs.db")
    p = Pki(tmp_path / "certs")
    p.ensure_ca()
    yield store, p
    store.close()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SECUREPACS_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SECUREPACS_CERTS", str(tmp_path / "certs"))
    # Explicit names: the default asks the resolver for this host's FQDN.
    monkeypatch.setenv("SECUREPACS_HOSTNAMES", "pacs.example.org,localhost,127.0.0.1")
    for name in ("SECUREPACS_AET", "SECUREPACS_DICOM_PORT"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def state(store: Store, p: Pki) -> tuple[Any, ...]:
    return store.list_clinics(), store.certificates(), store.generation(), files(p.certs_dir)


# -- service module ----------------------------------------------------------------------------------


def test_enrol(world: tuple[Store, Pki]) -> None:
    store, p = world
    clinic, bundle = enrolment.enrol(store, p, "north", ["NORTH_CT", " MR 1"], "10.0.0.5", 11112, days=30)
    assert clinic.name == "north" and clinic.aets == ("NORTH_CT", "MR 1")  # AE padding is not significant
    assert store.get_clinic("north").move_host == "10.0.0.5"
    assert store.clinic_for_aet("MR 1") == store.get_clinic("north")
    [rec] = store.certificates("north")
    assert int(rec.serial) == bundle.serial
    assert rec.fingerprint_sha256 == bundle.fingerprint
    assert rec.subject == "O=SecurePACS clinic,CN=north"
    assert datetime.fromisoformat(rec.not_after) == bundle.not_after
    cert = pem_files.load_cert(bundle.cert_path)
    assert certificates.clinic_identity(cert) == ("north", ("NORTH_CT", "MR 1"))
    assert bundle.directory == p.clinic_dir("north")


def test_enrol_needs_a_ca(tmp_path: Path) -> None:
    store = Store(tmp_path / "securepacs.db")
    p = Pki(tmp_path / "certs")
    with pytest.raises(EnrolmentError, match="run `securepacs pki init` first"):
        enrolment.enrol(store, p, "north", ["A"])
    assert store.list_clinics() == [] and not p.certs_dir.exists()
    store.close()


@pytest.mark.parametrize(("name", "aets", "kwargs", "match"), [
    ("north", ["OTHER"], {}, "clinic 'north' already exists"),
    ("south", ["SOUTH", "NORTH_CT"], {}, "AE title 'NORTH_CT' is already enrolled for clinic 'north'"),
    ("south", ["A" * 17], {}, "AE title 'AAAAAAAAAAAAAAAAA' is invalid"),
    ("south", ["A\\B"], {}, "is invalid: expected 1-16 printable ASCII"),
    ("south", ["A\x01B"], {}, "is invalid: expected 1-16 printable ASCII"),
    ("south", [""], {}, "AE title '' is invalid"),
    ("south", ["   "], {}, "not only spaces"),
    ("south", ["S", "S"], {}, "AE title 'S' is given twice"),
    ("south", [], {}, "at least one AE title"),
    ("south", "SOUTH", {}, "not a single string"),
    ("../south", ["S"], {}, "clinic name '../south' is invalid"),
    (".south", ["S"], {}, "clinic name '.south' is invalid"),
    ("s" * 65, ["S"], {}, "clinic name 's+' is invalid"),
    ("south", ["S"], {"move_port": 104}, "needs both a host and a port"),
    ("south", ["S"], {"move_host": "10.0.0.1"}, "needs both a host and a port"),
    ("south", ["S"], {"move_host": "10.0.0.1", "move_port": 0}, "C-MOVE port 0 is invalid"),
    ("south", ["S"], {"move_host": "10.0.0.1", "move_port": 70000}, "C-MOVE port 70000 is invalid"),
    ("south", ["S"], {"move_host": "bad host", "move_port": 104}, "C-MOVE host 'bad host' is invalid"),
    ("south", ["S"], {"days": 0}, "lifetime 0 days is invalid"),
    ("south", ["S"], {"days": 826}, "lifetime 826 days is invalid"),
    ("south", ["SECUREPACS"], {"reserved_aets": ("SECUREPACS",)}, "archive's own AE title"),
])
def test_enrol_refusals_change_nothing(world: tuple[Store, Pki], name: str, aets: list[str],
                                       kwargs: dict[str, Any], match: str) -> None:
    store, p = world
    enrolment.enrol(store, p, "north", ["NORTH_CT", "NORTH_MR"])
    before = state(store, p)
    with pytest.raises(EnrolmentError, match=match):
        enrolment.enrol(store, p, name, aets, **kwargs)
    assert state(store, p) == before


def test_revoked_names_and_aets_are_not_reused(world: tuple[Store, Pki]) -> None:
    store, p = world
    enrolment.enrol(store, p, "north", ["NORTH_CT"])
    enrolment.revoke(store, p, "north")
    before = state(store, p)
    with pytest.raises(EnrolmentError, match=r"already exists \(revoked at"):
        enrolment.enrol(store, p, "north", ["OTHER"])
    with pytest.raises(EnrolmentError, match=r"for clinic 'north' \(revoked"):
        enrolment.enrol(store, p, "south", ["NORTH_CT"])
    assert state(store, p) == before


def test_leftover_bundle_directory_is_refused(world: tuple[Store, Pki]) -> None:
    store, p = world
    p.clinic_dir("north").mkdir(parents=True)
    with pytest.raises(EnrolmentError, match=r"bundle directory .* already exists"):
        enrolment.enrol(store, p, "north", ["A"])
    assert store.list_clinics() == []


def test_enrol_rolls_back_when_issuing_fails(world: tuple[Store, Pki], monkeypatch: pytest.MonkeyPatch) -> None:
    store, p = world

    def broken(*args: object, **kwargs: object) -> None:
        raise PkiError("cannot write clinic.key: disk full")

    monkeypatch.setattr(p, "issue_clinic", broken)
    with pytest.raises(PkiError, match="disk full"):
        enrolment.enrol(store, p, "north", ["A"])
    assert store.list_clinics() == [] and store.clinic_for_aet("A") is None
    assert not p.clinic_dir("north").exists()


def test_enrol_rolls_back_when_recording_fails(world: tuple[Store, Pki], monkeypatch: pytest.MonkeyPatch) -> None:
    store, p = world

    def broken(rec: object) -> None:
        raise StoreError("database is locked")

    monkeypatch.setattr(store, "add_certificate", broken)
    with pytest.raises(StoreError, match="locked"):
        enrolment.enrol(store, p, "north", ["A"])
    assert store.list_clinics() == [] and store.certificates() == []
    assert not p.clinic_dir("north").exists()


def test_revoke_writes_crl(world: tuple[Store, Pki]) -> None:
    store, p = world
    _, north = enrolment.enrol(store, p, "north", ["N"])
    _, south = enrolment.enrol(store, p, "south", ["S"])
    assert enrolment.revoke(store, p, "north") == [str(north.serial)]
    assert store.get_clinic("north").revoked_at is not None
    crl = x509.load_pem_x509_crl(p.crl_path.read_bytes())
    assert crl.is_signature_valid(pem_files.load_cert(p.ca_cert_path).public_key())
    assert crl.get_revoked_certificate_by_serial_number(north.serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(south.serial) is None
    enrolment.revoke(store, p, "south")
    crl = x509.load_pem_x509_crl(p.crl_path.read_bytes())
    assert {r.serial_number for r in crl} == {north.serial, south.serial}  # all revoked, not just the last


def test_revoke_refusals_change_nothing(world: tuple[Store, Pki], tmp_path: Path) -> None:
    store, p = world
    enrolment.enrol(store, p, "north", ["N"])
    before = state(store, p)
    with pytest.raises(StoreError, match="unknown clinic 'nowhere'"):
        enrolment.revoke(store, p, "nowhere")
    with pytest.raises(EnrolmentError, match=r"clinic name '\.\./north' is invalid"):
        enrolment.revoke(store, p, "../north")
    with pytest.raises(EnrolmentError, match="run `securepacs pki init`"):
        enrolment.revoke(store, Pki(tmp_path / "elsewhere"), "north")
    assert state(store, p) == before


def test_list_clinics(world: tuple[Store, Pki]) -> None:
    store, p = world
    assert enrolment.list_clinics(store) == []
    _, bundle = enrolment.enrol(store, p, "north", ["N2", "N1"], days=100)
    enrolment.enrol(store, p, "south", ["S"], days=10)
    enrolment.revoke(store, p, "south")
    north, south = enrolment.list_clinics(store)
    assert (north.clinic, north.aets, north.status) == ("north", ("N1", "N2"), "active")
    assert north.expires == bundle.not_after and north.days_left == 99
    assert (south.clinic, south.status) == ("south", "revoked")
    later = enrolment.list_clinics(store, now=datetime.now(UTC) + timedelta(days=101))
    assert later[0].status == "expired" and later[0].days_left < 0


# -- command line ------------------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_pki_init_and_show(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "pki", "init")
    assert code == 0 and "CA created" in out and "server certificate created" in out and "CRL created" in out
    key_bytes = (env / "certs" / "ca" / "ca.key").read_bytes()
    server_key = (env / "certs" / "server" / "server.key").read_bytes()
    code, out, _ = cli(capsys, "pki", "init")
    assert code == 0 and "CA already existed" in out and "server certificate already existed" in out
    assert (env / "certs" / "ca" / "ca.key").read_bytes() == key_bytes
    assert (env / "certs" / "server" / "server.key").read_bytes() == server_key
    code, out, _ = cli(capsys, "pki", "init", "--hostname", "new.example.org")
    assert code == 0 and "re-issued (does not cover new.example.org)" in out
    code, out, _ = cli(capsys, "pki", "show")
    assert code == 0 and "CN=SecurePACS CA" in out and "DNS:new.example.org" in out and "days left" in out


def test_cli_pki_init_bad_hostname(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "pki", "init", "--hostname", "bad host")
    assert code == 2 and err.startswith("securepacs: error: DNS name 'bad host' is invalid")
    assert not (env / "certs").exists()


def test_cli_clinic_lifecycle(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli(capsys, "pki", "init")
    code, out, err = cli(capsys, "clinic", "add", "north", "--aet", "NORTH CT", "--aet", "NORTH_MR",
                         "--host", "10.0.0.5", "--port", "11112", "--days", "90")
    assert code == 0, err
    bundle = env / "certs" / "clinics" / "north"
    passphrase = (bundle / "clinic.p12.pass").read_text().strip()
    assert str(bundle) in out and "clinic.p12.pass" in out
    assert passphrase not in out and passphrase not in err
    assert f"echoscu +tls {bundle}/clinic.key {bundle}/clinic.crt +cf {bundle}/ca.crt -aet 'NORTH CT'" in out
    assert "securepacs client echo -aet 'NORTH CT' -aec SECUREPACS" in out
    assert "pacs.example.org 2762" in out

    code, out, _ = cli(capsys, "clinic", "list")
    header, row = out.splitlines()
    assert header.split() == ["NAME", "AE", "TITLES", "STATUS", "EXPIRES", "DAYS", "LEFT"]
    assert row.split()[:2] == ["north", "NORTH"] and "active" in row and row.split()[-1] == "89"

    code, out, _ = cli(capsys, "clinic", "revoke", "north")
    assert code == 0
    assert "unregisters AE title(s) NORTH CT, NORTH_MR within a few seconds" in out
    assert "crl.pem" in out and "live ones aborted within seconds" in out
    code, out, _ = cli(capsys, "clinic", "list")
    assert "revoked" in out.splitlines()[1]


@pytest.mark.parametrize(("argv", "match"), [
    (["clinic", "add", "south", "--aet", "NORTH_CT"], "AE title 'NORTH_CT' is already enrolled"),
    (["clinic", "add", "north", "--aet", "OTHER"], "clinic 'north' already exists"),
    (["clinic", "add", "south", "--aet", "ABCDEFGHIJKLMNOPQ"], "AE title 'ABCDEFGHIJKLMNOPQ' is invalid"),
    (["clinic", "add", "south", "--aet", "A\\B"], "is invalid"),
    (["clinic", "add", "south", "--aet", "A\tB"], "is invalid"),
    (["clinic", "add", "south", "--aet", ""], "AE title '' is invalid"),
    (["clinic", "add", "south", "--aet", "SECUREPACS"], "archive's own AE title"),
    (["clinic", "add", "south", "--aet", "S", "--port", "104"], "needs both a host and a port"),
    (["clinic", "revoke", "nowhere"], "unknown clinic 'nowhere'"),
])
def test_cli_errors_change_nothing(env: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                   match: str) -> None:
    cli(capsys, "pki", "init")
    cli(capsys, "clinic", "add", "north", "--aet", "NORTH_CT")
    store = Store(env / "data" / "securepacs.db")
    p = Pki(env / "certs")
    before = state(store, p)
    code, _, err = cli(capsys, *argv)
    assert code == 2
    assert err.startswith("securepacs: error: ") and match in err and err.count("\n") == 1
    assert state(store, p) == before
    store.close()


def test_cli_clinic_add_without_ca(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "clinic", "add", "north", "--aet", "N")
    assert code == 2 and "run `securepacs pki init` first" in err
    assert not (env / "certs").exists()
    store = Store(env / "data" / "securepacs.db")
    assert store.list_clinics() == []
    store.close()
