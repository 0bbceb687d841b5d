"""The DICOM client against an in-process pynetdicom SCP over real mutual TLS on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _scp import TestSCP
from cryptography import x509
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dsutils import split_dataset
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from securepacs.cli import main
from securepacs.client import (
    ClientError,
    Connection,
    ConnectionFailed,
    TlsConfig,
    associate,
    echo,
    find,
    get,
    move,
    scu,
    store,
)
from securepacs.pki import certificates, pem_files


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_client_cert: Path
    rogue_client_key: Path
    p12: Path
    p12_pass: Path
    odd_name_cert: Path
    odd_name_key: Path


def _ec_key() -> certificates.PrivateKey:
    return certificates.generate_key("ec-p256")  # milliseconds, where RSA 3072 takes seconds


def _leaf(issuer_key: certificates.PrivateKey, issuer: x509.Certificate, cn: str, usage: str,
          **names: tuple[str, ...]) -> tuple[certificates.PrivateKey, x509.Certificate]:
    return certificates.make_cert(issuer_key, issuer, cn, usage=usage, days=1, key=_ec_key(), **names)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Our CA with server and clinic certificates, plus a rogue CA and a certificate for another name."""
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca = certificates.make_ca("Test CA", days=2, key=_ec_key())
    rogue_key, rogue = certificates.make_ca("Rogue CA", days=2, key=_ec_key())
    s_key, s_cert = _leaf(ca_key, ca, "server", "server", dns_names=("localhost",), ip_addresses=("127.0.0.1",))
    c_key, c_cert = _leaf(ca_key, ca, "clinic", "client")
    r_key, r_cert = _leaf(rogue_key, rogue, "intruder", "client")
    o_key, o_cert = _leaf(ca_key, ca, "elsewhere", "server", dns_names=("elsewhere.example",))

    def cert_file(name: str, cert: x509.Certificate) -> Path:
        pem_files.write_cert(d / name, cert)
        return d / name

    def key_file(name: str, key: certificates.PrivateKey) -> Path:
        pem_files.write_key(d / name, key)
        return d / name

    p12 = d / "clinic.p12"
    p12.write_bytes(pkcs12.serialize_key_and_certificates(
        b"clinic", c_key, c_cert, [ca], BestAvailableEncryption(b"correct horse")
    ))
    (d / "p12.pass").write_text("correct horse\n")
    (d / "p12.pass").chmod(0o600)
    return Pki(
        dir=d,
        ca=cert_file("ca.crt", ca),
        server_cert=cert_file("server.crt", s_cert),
        server_key=key_file("server.key", s_key),
        client_cert=cert_file("clinic.crt", c_cert),
        client_key=key_file("clinic.key", c_key),
        rogue_ca=cert_file("rogue-ca.crt", rogue),
        rogue_client_cert=cert_file("intruder.crt", r_cert),
        rogue_client_key=key_file("intruder.key", r_key),
        p12=p12,
        p12_pass=d / "p12.pass",
        odd_name_cert=cert_file("elsewhere.crt", o_cert),
        odd_name_key=key_file("elsewhere.key", o_key),
    )


def server_context(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(pki.ca))
    ctx.load_cert_chain(str(cert or pki.server_cert), str(key or pki.server_key))
    return ctx


def tls(pki: Pki, **overrides: object) -> TlsConfig:
    values: dict[str, object] = {"ca": pki.ca, "cert": pki.client_cert, "key": pki.client_key}
    values.update(overrides)
    return TlsConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def make_scp(pki: Pki) -> Iterator:
    servers: list[TestSCP] = []

    def start(**kwargs: object) -> TestSCP:
        kwargs.setdefault("ssl_context", server_context(pki))
        scp = TestSCP(**kwargs).start()  # type: ignore[arg-type]
        servers.append(scp)
        return scp

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def shared_scp(pki: Pki) -> Iterator[TestSCP]:
    # Stopping a pynetdicom server takes ~0.5 s (its poll interval): share one across the module.
    scp = TestSCP(ssl_context=server_context(pki)).start()
    yield scp
    scp.stop()


@pytest.fixture
def scp(shared_scp: TestSCP) -> TestSCP:
    shared_scp.reset()
    return shared_scp


def conn_for(scp: TestSCP, pki: Pki, **kwargs: object) -> Connection:
    kwargs.setdefault("tls", tls(pki))
    kwargs.setdefault("acse_timeout", 5.0)
    kwargs.setdefault("dimse_timeout", 10.0)
    return Connection("127.0.0.1", scp.port, **kwargs)  # type: ignore[arg-type]


def make_instance(path: Path, *, sop_class: str = CTImageStorage, syntax: str = ExplicitVRLittleEndian,
                  study: str | None = None, file_meta: bool = True) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Test^Patient"
    ds.PatientID = "TP-001"
    ds.Modality = "CT" if sop_class == CTImageStorage else "OT"
    ds.Rows, ds.Columns = 4, 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(32))
    path.parent.mkdir(parents=True, exist_ok=True)
    implicit = syntax == ImplicitVRLittleEndian
    if file_meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = syntax
        ds.preamble = b"\0" * 128
        dcmwrite(path, ds, enforce_file_format=True)
    else:
        dcmwrite(path, ds, implicit_vr=implicit, little_endian=True)
    return ds


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file, after its file meta information."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Five instances (two SOP class / syntax pairs) in nested folders, plus a text file."""
    root = tmp_path / "study"
    make_instance(root / "a.dcm")
    make_instance(root / "b.dcm")
    make_instance(root / "series2" / "c.dcm", syntax=ImplicitVRLittleEndian)
    make_instance(root / "series2" / "deeper" / "d", sop_class=SecondaryCaptureImageStorage)
    make_instance(root / "e.dcm")
    (root / "series2" / "notes.txt").write_text("not an image\n")
    return root


def dicom_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "notes.txt")


# --- echo and TLS ------------------------------------------------------------------------------


def test_echo_over_mutual_tls(scp: TestSCP, pki: Pki) -> None:
    assert echo(conn_for(scp, pki)) == 0x0000


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_echo_with_pinned_tls_version(scp: TestSCP, pki: Pki, version: str) -> None:
    conn = conn_for(scp, pki, tls=tls(pki, version=version))
    with associate(conn, [build_context(Verification)]) as assoc:
        negotiated = assoc.dul.socket.socket.version()
    assert negotiated == f"TLSv{version}"


def test_echo_with_p12_credentials(scp: TestSCP, pki: Pki) -> None:
    conn = conn_for(scp, pki, tls=TlsConfig(ca=pki.ca, p12=pki.p12, p12_pass_file=pki.p12_pass))
    assert echo(conn) == 0x0000


def test_p12_wrong_passphrase_is_named(pki: Pki, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("battery staple\n")
    with pytest.raises(ClientError, match=r"cannot open --p12 file .*clinic\.p12: wrong passphrase"):
        Connection("127.0.0.1", 1, tls=TlsConfig(ca=pki.ca, p12=pki.p12, p12_pass_file=wrong)).ssl_context()


def test_unreadable_key_file_is_named(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    with pytest.raises(ClientError, match=r"cannot read --key file .*nope\.key: No such file"):
        Connection("127.0.0.1", 1, tls=tls(pki, key=missing)).ssl_context()


def test_key_not_matching_cert_is_named(pki: Pki) -> None:
    with pytest.raises(ClientError, match=r"--key file .*intruder\.key does not belong to .*clinic\.crt"):
        Connection("127.0.0.1", 1, tls=tls(pki, key=pki.rogue_client_key)).ssl_context()


def test_tcp_nodelay_is_set_on_the_association_socket(scp: TestSCP, pki: Pki) -> None:
    with associate(conn_for(scp, pki), [build_context(Verification)]) as assoc:
        sock = assoc.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_untrusted_server_certificate(scp: TestSCP, pki: Pki) -> None:
    conn = conn_for(scp, pki, tls=tls(pki, ca=pki.rogue_ca))
    with pytest.raises(ConnectionFailed, match=r"server certificate of 127\.0\.0\.1:\d+ not trusted by --ca "
                                               r".*rogue-ca\.crt: .*certificate"):
        echo(conn)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_server_refuses_our_client_certificate(scp: TestSCP, pki: Pki, version: str) -> None:
    conn = conn_for(scp, pki, tls=tls(pki, cert=pki.rogue_client_cert, key=pki.rogue_client_key,
                                      version=version))
    with pytest.raises(ConnectionFailed,
                       match=r"the server 127\.0\.0\.1:\d+ refused our client certificate \(.*intruder\.crt\): "
                             r".*unknown ca"):
        echo(conn)


def test_server_certificate_for_another_name(make_scp, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    odd = make_scp(ssl_context=server_context(pki, pki.odd_name_cert, pki.odd_name_key))
    with pytest.raises(ConnectionFailed, match=r"does not name '127\.0\.0\.1'.*--no-hostname-check"):
        echo(conn_for(odd, pki))
    assert echo(conn_for(odd, pki, tls=tls(pki, check_hostname=False))) == 0x0000


def test_connection_refused_names_host_and_port(pki: Pki) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conn = Connection("127.0.0.1", port, tls=tls(pki), acse_timeout=5)
    with pytest.raises(ConnectionFailed, match=rf"connection refused by 127\.0\.0\.1:{port}"):
        echo(conn)


def test_plain_client_against_tls_server(scp: TestSCP, pki: Pki) -> None:
    with pytest.raises(ConnectionFailed, match=r"127\.0\.0\.1:\d+ .*is it a TLS port\?"):
        echo(conn_for(scp, pki, tls=None, acse_timeout=2))


def test_tls_client_against_plain_server(make_scp, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    plain = make_scp(ssl_context=None)
    with pytest.raises(ConnectionFailed, match=r"127\.0\.0\.1:\d+ did not answer with TLS"):
        echo(conn_for(plain, pki))


def test_rejected_association_names_the_ae_titles(make_scp, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    strict = make_scp(require_called_aet=True)
    with pytest.raises(ConnectionFailed, match=r"rejected the association .*-aec/--called-aet 'WRONG'"):
        echo(conn_for(strict, pki, called_aet="WRONG"))


def test_invalid_ae_title_is_refused() -> None:
    with pytest.raises(ClientError, match="calling AE title"):
        Connection("127.0.0.1", 2762, calling_aet="WAY-TOO-LONG-AE-TITLE")


# --- store -------------------------------------------------------------------------------------


def test_store_folder_sends_exact_file_bytes(scp: TestSCP, pki: Pki, folder: Path) -> None:
    summary = store(conn_for(scp, pki), [folder])
    assert (summary.success, summary.failure, summary.not_sent) == (5, 0, 1)
    assert [p.path.name for p in summary.problems] == ["notes.txt"]
    assert "not a DICOM file" in summary.problems[0].detail
    assert not summary.ok
    for path in dicom_files(folder):
        meta = dcmread(path, stop_before_pixels=True).file_meta
        got = scp.received[meta.MediaStorageSOPInstanceUID]
        assert got.transfer_syntax == meta.TransferSyntaxUID
        assert got.dataset_bytes == dataset_bytes(path), path
    assert pynetdicom_config.STORE_SEND_CHUNKED_DATASET is False  # restored after the store


def test_store_in_parallel_uses_several_associations(scp: TestSCP, pki: Pki, folder: Path) -> None:
    scp.store_delay = 0.02  # so that one association cannot take every file before the other starts
    summary = store(conn_for(scp, pki), [folder], parallel=2)
    assert summary.success == 5
    assert len(scp.received) == 5
    assert len({r.peer_port for r in scp.received.values()}) == 2


def test_store_splits_context_groups(scp: TestSCP, pki: Pki, folder: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Three SOP class / syntax pairs with one context per association: three batches.
    monkeypatch.setattr(scu, "MAX_CONTEXTS", 1)
    summary = store(conn_for(scp, pki), [folder])
    assert summary.success == 5
    assert len({r.peer_port for r in scp.received.values()}) == 3


def test_store_reports_failure_status_and_refused_context(make_scp, pki: Pki,  # type: ignore[no-untyped-def]
                                                          tmp_path: Path) -> None:
    bad = make_instance(tmp_path / "bad.dcm")
    make_instance(tmp_path / "good.dcm")
    make_instance(tmp_path / "odd.dcm", sop_class="1.2.826.0.1.3680043.8.498.999")  # unknown to the SCP
    scp = make_scp(fail_uids={str(bad.SOPInstanceUID)})
    summary = store(conn_for(scp, pki), [tmp_path])
    assert (summary.success, summary.failure, summary.not_sent) == (1, 1, 1)
    problems = {p.path.name: (p.outcome, p.detail) for p in summary.problems}
    assert problems["bad.dcm"][0] == "failure"
    assert problems["bad.dcm"][1].startswith("0xA700 (")
    assert problems["odd.dcm"][0] == "not sent"
    assert "did not accept" in problems["odd.dcm"][1]
    report = summary.report()
    assert "failure: 1" in report and "bad.dcm" in report


def test_store_sends_bare_dataset_without_file_meta(scp: TestSCP, pki: Pki, tmp_path: Path) -> None:
    ds = make_instance(tmp_path / "bare", syntax=ImplicitVRLittleEndian, file_meta=False)
    summary = store(conn_for(scp, pki), [tmp_path / "bare"])
    assert summary.success == 1
    assert str(ds.SOPInstanceUID) in scp.received


def test_store_missing_path_is_an_input_error(pki: Pki, tmp_path: Path) -> None:
    conn = Connection("127.0.0.1", 1, tls=tls(pki))
    with pytest.raises(ClientError, match=r"nothing-here: no such file or directory"):
        store(conn, [tmp_path / "nothing-here"])


def test_store_when_no_association_possible(pki: Pki, folder: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionFailed, match="connection refused"):
        store(Connection("127.0.0.1", port, tls=tls(pki), acse_timeout=5), [folder], parallel=2)


# --- find / move / get -------------------------------------------------------------------------


def _study(uid: str, patient_id: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = uid
    ds.PatientID = patient_id
    ds.ModalitiesInStudy = ["CT", "SR"]
    return ds


def test_find_yields_what_the_scp_returns(make_scp, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    scp = make_scp(matches=[_study("1.2.3", "P1"), _study("1.2.4", "P2")])
    results = list(find(conn_for(scp, pki), "STUDY", [("PatientID", ""), ("0020,000D", "")]))
    assert [str(r.StudyInstanceUID) for r in results] == ["1.2.3", "1.2.4"]
    sent = scp.identifiers[0]
    assert sent.QueryRetrieveLevel == "STUDY"
    assert "PatientID" in sent and "StudyInstanceUID" in sent


def test_find_rejects_unknown_key(scp: TestSCP, pki: Pki) -> None:
    with pytest.raises(ClientError, match="'NoSuchKeyword' is neither a DICOM keyword"):
        list(find(conn_for(scp, pki), "STUDY", {"NoSuchKeyword": "x"}))


def test_move_reports_sub_operation_counts(make_scp, pki: Pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    study = generate_uid()
    files = [tmp_path / f"{i}.dcm" for i in range(3)]
    datasets = [make_instance(p, study=study) for p in files]
    # The destination is a plain second SCP (the sub-association is the SCP's business, not ours).
    dest = make_scp(ssl_context=None, ae_title="DEST", fail_uids={str(datasets[0].SOPInstanceUID)})
    scp = make_scp(retrieve_files=files, move_destinations={"DEST": ("127.0.0.1", dest.port)})
    result = move(conn_for(scp, pki), "DEST", "STUDY", {"StudyInstanceUID": study})
    assert (result.completed, result.failed, result.warning) == (2, 1, 0)
    assert not result.ok
    assert result.failed_instances == (str(datasets[0].SOPInstanceUID),)
    assert scp.identifiers[0].StudyInstanceUID == study
    unknown = move(conn_for(scp, pki), "NOBODY", "STUDY", {"StudyInstanceUID": study})
    assert unknown.status == 0xA801


def test_get_writes_received_files(make_scp, pki: Pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = [tmp_path / "src" / "1.dcm", tmp_path / "src" / "2.dcm"]
    datasets = [make_instance(files[0]), make_instance(files[1], sop_class=SecondaryCaptureImageStorage)]
    scp = make_scp(retrieve_files=files)
    out = tmp_path / "out"
    result = get(conn_for(scp, pki), "STUDY", {"StudyInstanceUID": "1.2.3"}, out)
    assert result.ok and result.completed == 2 and result.files == 2
    for ds, src in zip(datasets, files, strict=True):
        written = out / f"{ds.SOPInstanceUID}.dcm"
        meta = dcmread(written, stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert dataset_bytes(written) == dataset_bytes(src)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{d.SOPInstanceUID}.dcm" for d in datasets)


# --- command line ------------------------------------------------------------------------------


def tls_args(pki: Pki) -> list[str]:
    return ["--ca", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key)]


def test_cli_echo(scp: TestSCP, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main.main(["client", "echo", *tls_args(pki), "-aet", "CLINIC1", "-aec", "SECUREPACS",
                   "-ta", "5", "127.0.0.1", str(scp.port)])
    assert rc == 0
    assert "0x0000" in capsys.readouterr().out


def test_cli_echo_connection_refused(pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = main.main(["client", "echo", *tls_args(pki), "127.0.0.1", str(port)])
    assert rc == 3
    assert f"connection refused by 127.0.0.1:{port}" in capsys.readouterr().err


def test_cli_requires_client_credentials(pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main.main(["client", "echo", "--ca", str(pki.ca), "127.0.0.1", "2762"])
    assert rc == 2
    assert "--cert and --key, or --p12" in capsys.readouterr().err


def test_cli_store(scp: TestSCP, pki: Pki, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (folder / "series2" / "notes.txt").unlink()
    rc = main.main(["client", "store", *tls_args(pki), "--parallel", "2", "--no-progress",
                   "127.0.0.1", str(scp.port), str(folder)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "stored 5 of 5 files" in out
    assert {r.calling_aet for r in scp.received.values()} == {"SPCLIENT"}


def test_cli_store_exit_status_when_a_file_is_not_sent(scp: TestSCP, pki: Pki, folder: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rc = main.main(["client", "store", *tls_args(pki), "127.0.0.1", str(scp.port), str(folder)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "notes.txt: not a DICOM file" in out


def test_cli_find_prints_json_lines(make_scp, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    scp = make_scp(matches=[_study("1.2.3", "P1")])
    rc = main.main(["client", "find", *tls_args(pki), "-S", "-k", "QueryRetrieveLevel=STUDY",
                   "-k", "PatientID=", "127.0.0.1", str(scp.port)])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [
        {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.3", "PatientID": "P1",
         "ModalitiesInStudy": ["CT", "SR"]}
    ]
