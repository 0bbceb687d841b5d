"""One uid per process, natively: the audit signer alone holds the checkpoint key, the gateway and nginx do
not run as Orthanc, and a trail rewritten by the Orthanc uid (what a compromised Orthanc could do) is caught.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Archive, _start, make_archive, stop_archive

from securepacs.audit import iter_entries
from securepacs.client import store
from securepacs_tools.synth import StudySpec, write_study

# PKCS#8 PEM header, spelled in two parts so that no tracked file looks like it holds a key.
PEM_KEY_HEADER = "-----BEGIN " + "PRIVATE KEY-----"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the separation needs root to start each process as its own uid"),
]

STUDY = StudySpec(seed="privsep", patient_id="PRIVSEP-1", slices=6, rows=16, columns=16)
ATTEST_TIMEOUT = 60.0  # the signer attests every 5 s; generous for a loaded machine

# What a compromised Orthanc can do without the key: edit a record, recompute every hash after it, and
# re-sign in-trail checkpoints if (and only if) it can read the checkpoint key.
REWRITE = r"""
import sys
from securepacs.audit.chain import GENESIS, KIND_CHECKPOINT, make_entry, parse_line
from securepacs.audit.keys import load_checkpoint_private_key, sign_checkpoint
from securepacs.audit.record import utc_now
trail, key_path, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    key = load_checkpoint_private_key(key_path)
except Exception:
    key = None
entries = [parse_line(line) for line in open(trail, "rb").read().splitlines(keepends=True)]
out, prev, last = [], GENESIS, None
for e in entries:
    body = e.body
    if e.seq == at:
        body = {**body, "outcome": 12 if body.get("outcome") != 12 else 0}
    if e.kind == KIND_CHECKPOINT and key is not None:
        body = sign_checkpoint(key, {"covers_hash": last.hash, "covers_seq": last.seq, "reason": "time",
                                     "time": utc_now()})
    last, line = make_entry(e.seq, prev, e.kind, body)
    out.append(line)
    prev = last.hash
with open(trail, "r+b") as fh:
    fh.write(b"".join(out))
    fh.truncate()
print("re-signed" if key is not None else "rehashed")
"""


@pytest.fixture(scope="module")
def separated(tmp_path_factory) -> Iterator[Archive]:
    archive = make_archive("securepacs-privsep-")
    _start(archive)
    try:
        archive.enrol("sepA", "SEPA")
        data = tmp_path_factory.mktemp("privsep-data")
        write_study(STUDY, data / "study")
        archive.env["PRIVSEP_DATA"] = str(data / "study")
        yield archive
    finally:
        if archive.running():
            stop_archive(archive)
        shutil.rmtree(archive.root, ignore_errors=True)


def key_path(archive: Archive) -> Path:
    return archive.certs_dir / "audit" / "checkpoint.key"


def attestations(archive: Archive) -> list[dict]:
    path = archive.certs_dir / "audit" / "checkpoints.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def as_user(user: str, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *cmd], capture_output=True, text=True, timeout=60,
                          check=False)


def processes() -> list[tuple[int, int, str, str]]:
    """(pid, ppid, user, command line) of every process, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid = int(fields["Uid"].split()[0])
        out.append((int(entry.name), int(fields["PPid"]), _user_name(uid), cmdline))
    return out


def _user_name(uid: int) -> str:
    # Processes of containers (the compose stack, the benchmark's image) run as uids this host may not know.
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def children(pid: int) -> dict[str, str]:
    """The launcher's children: {what: user name}."""
    found = {}
    for _, ppid, user, args in processes():
        if ppid != pid:
            continue
        for what, marker in (("signer", "securepacs.audit.signer"), ("gateway", "securepacs.gateway"),
                             ("orthanc", "Orthanc "), ("nginx", "nginx")):
            if marker in args:
                found[what] = user
    return found


def nginx_workers(archive: Archive) -> set[str]:
    table = processes()
    masters = {pid for pid, ppid, _, args in table if ppid == archive.proc.pid and "nginx" in args}
    return {user for _, ppid, user, _ in table if ppid in masters}


def wait_attested(archive: Archive, seq: int) -> dict:
    deadline = time.monotonic() + ATTEST_TIMEOUT
    while time.monotonic() < deadline:
        done = [a for a in attestations(archive) if a["kind"] == "attest" and a["covers_seq"] >= seq]
        if done:
            return done[-1]
        time.sleep(0.5)
    raise AssertionError(f"no attestation covering seq {seq} within {ATTEST_TIMEOUT:.0f} s: {attestations(archive)}")


def last_seq(archive: Archive) -> int:
    return max(e.seq for e in iter_entries(archive.data_dir / "audit" / "trail.jsonl"))


def test_each_process_runs_under_its_own_uid(separated: Archive) -> None:
    users = children(separated.proc.pid)
    assert users == {"signer": "securepacs-audit", "orthanc": "orthanc", "gateway": "securepacs-gw",
                     "nginx": "root"}, users
    assert nginx_workers(separated) == {"www-data"}  # nginx's master binds and reads the key; workers are www-data


def test_the_orthanc_uid_cannot_read_the_checkpoint_key_nor_write_the_attestations(separated: Archive) -> None:
    key = key_path(separated)
    assert key.is_file()
    denied = as_user("orthanc", "cat", str(key))
    assert denied.returncode == 1 and "Permission denied" in denied.stderr, denied
    # ... nor the gateway's uid; the signer's uid can.
    assert as_user("securepacs-gw", "cat", str(key)).returncode == 1
    assert as_user("securepacs-audit", "cat", str(key)).stdout.split("\n", 1)[0] == PEM_KEY_HEADER
    wait_attested(separated, 1)
    forged = as_user("orthanc", "sh", "-c", f"echo '{{}}' >> {separated.certs_dir / 'audit' / 'checkpoints.jsonl'}")
    assert forged.returncode != 0 and "Permission denied" in forged.stderr, forged
    assert as_user("orthanc", "test", "-w", str(key.parent)).returncode == 1  # cannot replace the directory's files


def test_the_gateway_uid_reads_the_store_only_and_no_images(separated: Archive) -> None:
    data = separated.data_dir
    assert as_user("securepacs-gw", "test", "-r", str(data / "securepacs.db")).returncode == 0
    assert as_user("securepacs-gw", "test", "-w", str(data / "securepacs.db")).returncode == 1
    images = as_user("securepacs-gw", "ls", str(data / "orthanc"))
    assert images.returncode == 2 and "Permission denied" in images.stderr, images
    assert as_user("securepacs-gw", "cat", str(data / "secrets" / "admin-credential.txt")).returncode == 1
    # ... and it appends to the trail (through the trail group), as the signer reads it.
    assert as_user("securepacs-gw", "test", "-w", str(data / "audit" / "trail.jsonl")).returncode == 0


def test_the_signer_attests_while_the_archive_ingests(separated: Archive) -> None:
    clinic = separated.clinics["sepA"]
    before = last_seq(separated)
    assert store(separated.conn(clinic), [Path(separated.env["PRIVSEP_DATA"])]).ok
    stored = [e.seq for e in iter_entries(separated.data_dir / "audit" / "trail.jsonl")
              if e.seq > before and e.body.get("event", {}).get("code") == "110104"]
    assert len(stored) == STUDY.slices
    attested = wait_attested(separated, stored[-1])
    assert attested["key_id"] and attested["signature"]
    report = separated.cli("audit", "verify")
    assert report.returncode == 0 and "signer attestations" in report.stdout, report.stdout


def test_a_trail_rewritten_by_the_orthanc_uid_is_detected(separated: Archive) -> None:
    trail = separated.data_dir / "audit" / "trail.jsonl"
    target = next(e.seq for e in iter_entries(trail) if e.body.get("event", {}).get("code") == "110104")
    wait_attested(separated, last_seq(separated))
    rewrite = as_user("orthanc", sys.executable, "-c", REWRITE, str(trail), str(key_path(separated)), str(target))
    assert rewrite.returncode == 0, rewrite.stderr
    assert rewrite.stdout.strip() == "rehashed"  # it could not read the key to re-sign anything
    result = separated.cli("audit", "verify", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "attested" in result.stdout or "diverge" in result.stdout, result.stdout
    # The signer noticed on its own too, and says so in its file for good.
    deadline = time.monotonic() + ATTEST_TIMEOUT
    while not any(a["kind"] == "diverged" for a in attestations(separated)):
        assert time.monotonic() < deadline, attestations(separated)[-3:]
        time.sleep(0.5)
    assert pwd.getpwuid((separated.certs_dir / "audit" / "checkpoints.jsonl").stat().st_uid).pw_name == \
        "securepacs-audit"
