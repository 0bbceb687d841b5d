"""Compose: one uid per service, each with only the mounts it needs, and audit records with real peers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _netns import second_host

from securepacs.audit import iter_entries
from securepacs_tools.synth import StudySpec, instance

# PKCS#8 PEM header, spelled in two parts so that no tracked file looks like it holds a key.
PEM_KEY_HEADER = "-----BEGIN " + "PRIVATE KEY-----"
pytestmark = pytest.mark.compose

SERVICES = {"archive": "orthanc", "gateway": "securepacs-gw", "https": "securepacs-web", "signer": "securepacs-audit"}
DATA = "/var/lib/securepacs"
KEY = "/etc/securepacs/certs/audit/checkpoint.key"


def _container(arc, service: str) -> str:
    return arc.compose("ps", "-q", service).stdout.strip()


def _inspect(container: str) -> dict:
    out = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]


def _exec(arc, service: str, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "exec", _container(arc, service), *cmd], capture_output=True, text=True,
                          timeout=60, check=False)


def _mounts(arc, service: str) -> dict[str, bool]:
    """{destination: read-write} of a service's container."""
    return {m["Destination"]: m["RW"] for m in _inspect(_container(arc, service))["Mounts"]}


def test_each_service_runs_as_its_own_uid(compose_archive):
    uids = {}
    for service, user in SERVICES.items():
        assert _inspect(_container(compose_archive, service))["Config"]["User"] == user
        res = _exec(compose_archive, service, "id", "-un")
        assert res.stdout.strip() == user, (service, res)
        uids[service] = _exec(compose_archive, service, "id", "-u").stdout.strip()
        # Every process in the container, not only the first one (nginx's workers included).
        ps = _exec(compose_archive, service, "sh", "-c", "cat /proc/[0-9]*/status | grep '^Uid:' | sort -u")
        assert {line.split()[1] for line in ps.stdout.splitlines()} == {uids[service]}, (service, ps.stdout)
    assert len(set(uids.values())) == len(SERVICES), uids


def test_each_service_mounts_only_what_it_needs(compose_archive):
    arc = compose_archive
    assert _mounts(arc, "https") == {"/etc/securepacs/certs": False}  # no data, no trail, no gateway state
    assert _mounts(arc, "signer") == {f"{DATA}/audit": False, "/etc/securepacs/certs/audit": True}
    assert _mounts(arc, "gateway") == {DATA: False, f"{DATA}/gateway": True, f"{DATA}/audit": True,
                                       "/etc/securepacs/certs": False}
    assert _mounts(arc, "archive") == {DATA: True, f"{DATA}/audit": True, "/etc/securepacs/certs": False,
                                       "/etc/securepacs/certs/audit": False}


def test_nginx_and_the_gateway_cannot_read_phi(compose_archive):
    arc = compose_archive
    # nginx: the data is not there at all.
    # (orthanc owns the image's empty mountpoint; the https service's own uid may not even list it.)
    res = subprocess.run(["docker", "exec", "-u", "orthanc", _container(arc, "https"), "ls", "-A", DATA],
                         capture_output=True, text=True, timeout=60, check=True)
    assert res.stdout == "", res.stdout
    # The gateway: Orthanc's images and index are not readable, the store is readable and read-only.
    images = _exec(arc, "gateway", "ls", f"{DATA}/orthanc")
    assert images.returncode == 2 and "Permission denied" in images.stderr, images
    assert _exec(arc, "gateway", "head", "-c", "16", f"{DATA}/securepacs.db").stdout == "SQLite format 3\0"
    write = _exec(arc, "gateway", "python3", "-c", "import sqlite3; "
                  "sqlite3.connect('/var/lib/securepacs/securepacs.db').execute('DELETE FROM clinics')")
    assert write.returncode == 1 and "readonly database" in write.stderr, write
    # The mount itself is read-only: even the store's owner could not write it in that container.
    touch = subprocess.run(["docker", "exec", "-u", "orthanc", _container(arc, "gateway"), "sh", "-c",
                            f": >> {DATA}/securepacs.db"], capture_output=True, text=True, timeout=60, check=False)
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr, touch


def test_only_the_signer_reads_the_checkpoint_key(compose_archive):
    arc = compose_archive
    for service in ("archive", "gateway"):
        res = _exec(arc, service, "cat", KEY)
        assert res.returncode == 1 and ("Permission denied" in res.stderr or "No such file" in res.stderr), res
    assert _exec(arc, "signer", "cat", KEY).stdout.split("\n", 1)[0] == PEM_KEY_HEADER
    # The archive cannot add attestations either (its mount is read-only, the file is the signer's).
    forged = _exec(arc, "archive", "sh", "-c", "echo '{}' >> /etc/securepacs/certs/audit/checkpoints.jsonl")
    assert forged.returncode != 0, forged


def _attested(arc) -> list[dict]:
    path = arc.certs_dir / "audit" / "checkpoints.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_signer_attests_the_trail(compose_archive):
    arc = compose_archive
    deadline = time.monotonic() + 60
    while not any(a["kind"] == "attest" for a in _attested(arc)):
        assert time.monotonic() < deadline, "the signer service attested nothing within 60 s"
        time.sleep(1)
    res = arc.cli("audit", "verify")
    assert "signer attestations" in res.stdout, res.stdout


def _bridge_gateway(arc) -> str:
    networks = _inspect(_container(arc, "archive"))["NetworkSettings"]["Networks"]
    return next(iter(networks.values()))["Gateway"]


def _peer_addresses(arc, aet: str, after: int) -> list[str]:
    out = []
    for e in iter_entries(arc.data_dir / "audit" / "trail.jsonl"):
        if e.seq <= after or e.is_checkpoint or e.body["event"]["code"] != "110114":
            continue
        out += [p.get("network_access_point") for p in e.body["participants"] if p.get("ae_title") == aet]
    return out


def _store_from(ns: str, arc, clinic, host: str, path) -> None:
    """C-STORE ``path`` with the real client CLI from inside network namespace ``ns``."""
    tls = arc.conn(clinic).tls
    # The certificate names 127.0.0.1, not the address dialled from the other host.
    cmd = ["ip", "netns", "exec", ns, str(Path(sys.executable).parent / "securepacs"), "client", "store",
           "-aet", clinic.aets[0], "-aec", arc.aet, "--cert", str(tls.cert), "--key", str(tls.key),
           "--ca", str(tls.ca), "--no-hostname-check", "--no-progress", host, str(arc.dicom_port), str(path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, f"store from {ns} failed: {res.stdout[-1000:]} {res.stderr[-2000:]}"


def test_audit_records_carry_the_real_client_address(compose_archive, tmp_path):
    """A client on another host (a network namespace over a veth link) keeps its address through Docker's
    DNAT. (Clients on the archive's own host are masqueraded to the bridge's address by Docker's hairpin
    rule, so only a real second host shows this.)"""
    arc = compose_archive
    clinic = arc.enrol("peerclinic", "PEERCT")
    arc.wait_modalities(present=("PEERCT",))
    path = tmp_path / "one.dcm"
    instance(StudySpec(seed="compose-peer", slices=1, rows=8, columns=8), 0).save_as(path, enforce_file_format=True)
    before = max(e.seq for e in iter_entries(arc.data_dir / "audit" / "trail.jsonl"))
    with second_host() as (ns, host_ip, ns_ip):
        _store_from(ns, arc, clinic, host_ip, path)
    deadline = time.monotonic() + 20
    while not _peer_addresses(arc, "PEERCT", before):
        assert time.monotonic() < deadline, "no User Authentication record for the association"
        time.sleep(0.5)
    assert _peer_addresses(arc, "PEERCT", before) == [ns_ip]
    assert ns_ip != _bridge_gateway(arc)
