"""What a host runs — told only to those who may know (issue 20, item 4), against the real archive.

Shared (native Debian 12 and the compose image): the anonymous health report carries statuses only; the
detailed report (versions, unfixed CVEs, counters) answers admins and auditors, and refuses everyone else
with 403 (Orthanc's request filter refuses with 403 only). Native: Orthanc 1.10.1 is reported with every CVE
of the table and the platform is degraded, while the archive serves. Image: its Orthanc is at least the
newest fixed-in version of the table and no CVE is listed.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from _webapp_env import add_user

from securepacs import health
from securepacs.platform import versions
from securepacs.platform.cves import KNOWN

pytestmark = pytest.mark.integration

NEWEST_FIX = max(versions.require(c.fixed_in) for c in KNOWN)
VERSION_KEYS = {"orthanc", "pythonPlugin", "dicomWeb", "dcmtk"}


@pytest.fixture(scope="module")
def people(archive, tmp_path_factory) -> dict[str, tuple[str, str]]:
    """An auditor and a physician of clinicA (one pair per archive kind)."""
    folder = tmp_path_factory.mktemp("platform-users")
    suffix = archive.kind
    return {
        "auditor": add_user(archive, folder, f"ph-auditor-{suffix}", "auditor", None),
        "physician": add_user(archive, folder, f"ph-doc-{suffix}", "physician", "clinicA"),
    }


def detail(archive) -> dict:
    report = archive.admin_json(health.DETAIL_URI)
    assert isinstance(report, dict)
    return report


def test_anonymous_health_has_no_versions_aet_or_counters(archive, clinic_a):
    status, body = archive.https(health.PUBLIC_URI)
    assert status == 200, body[:300]
    report = json.loads(body)
    assert set(report) == {"service", "status", "components"}, report
    assert {"orthanc", "store", "dicom-tls", "modalities", "platform"} <= set(report["components"])
    assert all(c == {"status": c["status"]} for c in report["components"].values()), report
    text = body.decode()
    platform = detail(archive)["components"]["platform"]
    for disclosed in (*filter(None, platform["versions"].values()), "SECUREPACS", "CVE-", "generation", "Aet"):
        assert disclosed not in text, f"anonymous health discloses {disclosed!r}: {text}"


def test_admin_detail_names_the_versions(archive, clinic_a):
    report = detail(archive)
    assert report["version"], report
    assert report["components"]["orthanc"]["dicomAet"] == "SECUREPACS"
    assert isinstance(report["components"]["store"]["generation"], int)
    platform = report["components"]["platform"]
    found = platform["versions"]
    assert set(found) == VERSION_KEYS and all(found.values()), found
    assert re.fullmatch(r"3\.\d+\.\d+", found["dcmtk"]), found
    assert found["orthanc"] == report["components"]["orthanc"]["version"]


def test_health_detail_is_refused_to_all_but_admins_and_auditors(archive, clinic_a, people):
    status, body = archive.https(health.DETAIL_URI, auth=people["auditor"])
    assert status == 200, body[:300]
    assert json.loads(body)["components"]["platform"]["versions"]["orthanc"]
    for auth in (people["physician"], None, (people["auditor"][0], "not-the-password")):
        status, body = archive.https(health.DETAIL_URI, auth=auth)
        assert status == 403, (auth and auth[0], status, body[:200])
        assert b"pythonPlugin" not in body and b"CVE-" not in body
    status, _ = archive.https(health.DETAIL_URI, auth=archive.admin_credential(), method="POST", data=b"{}")
    assert status == 405


def test_the_local_route_is_not_reachable_through_nginx(archive, clinic_a):
    # nginx answers 404 for every internal route (the plugin would refuse one that came through it with 403).
    for auth in (None, archive.admin_credential()):
        status, body = archive.https(health.LOCAL_URI, auth=auth)
        assert status == 404, (status, body[:200])
        assert b"pythonPlugin" not in body


# -- native: Debian 12's Orthanc 1.10.1 ------------------------------------------------------------------------
def test_native_reports_orthanc_1_10_1_exposed_and_still_serves(native_archive):
    arc = native_archive
    report = detail(arc)
    platform = report["components"]["platform"]
    assert platform["status"] == "degraded" and report["status"] == "degraded"
    assert platform["versions"] == {"orthanc": "1.10.1", "pythonPlugin": "4.0", "dicomWeb": "1.7", "dcmtk": "3.6.7"}
    assert [c["id"] for c in platform["cves"]] == [c.id for c in KNOWN]
    assert platform["cves"][-1] == KNOWN[-1].as_json()
    assert all(c["status"] == "ok" for n, c in report["components"].items() if n != "platform"), report
    status, body = arc.https(health.PUBLIC_URI)
    assert status == 200 and json.loads(body)["components"]["platform"] == {"status": "degraded"}
    arc.assert_serving()  # degraded is a report, not an outage: start-up did not wait for it
    banner = arc.log_text()
    assert "Platform: Orthanc 1.10.1, python plugin 4.0, DICOMweb 1.7, DCMTK 3.6.7" in banner
    assert f"WARNING: Orthanc 1.10.1 has {len(KNOWN)} known unfixed vulnerabilities (CVE-2026-5437, " in banner


def test_native_cli_names_the_versions_and_exits_3(native_archive):
    res = native_archive.cli("health", check=False)
    assert res.returncode == 3, (res.stdout, res.stderr)
    assert "Platform: Orthanc 1.10.1, python plugin 4.0, DICOMweb 1.7, DCMTK 3.6.7" in res.stdout
    assert "CVE-2026-10528" in res.stdout and "platform: degraded" in res.stdout
    res = native_archive.cli("health", "--json", check=False)
    assert res.returncode == 3
    assert json.loads(res.stdout)["components"]["platform"]["versions"]["orthanc"] == "1.10.1"


# -- the image -------------------------------------------------------------------------------------------------
@pytest.mark.compose
def test_image_orthanc_has_every_known_fix(compose_archive):
    arc = compose_archive
    report = detail(arc)
    platform = report["components"]["platform"]
    running = versions.parse(platform["versions"]["orthanc"])
    assert running is not None and running >= NEWEST_FIX, (
        f"the image runs Orthanc {platform['versions']['orthanc']}, older than {NEWEST_FIX}, the newest fix in "
        "securepacs.platform.cves")
    assert platform["cves"] == [] and platform["status"] == "ok", platform
    assert report["status"] == "ok", report


@pytest.mark.compose
def test_image_healthcheck_cli_names_the_versions(compose_archive):
    arc = compose_archive
    # The command compose's healthcheck runs, in the container and as the user it runs there.
    res = arc.compose("exec", "-T", "https", "securepacs", "health", check=False)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert re.search(r"Platform: Orthanc 1\.1[3-9]\.\d+, python plugin \d+\.\d+, DICOMweb \d+\.\d+, "
                     r"DCMTK 3\.\d+\.\d+", res.stdout), res.stdout
    assert "WARNING" not in res.stdout
    assert "Platform: Orthanc" in arc.log_text()  # the archive container's start banner
    deadline = time.monotonic() + 120
    container = arc.compose("ps", "-q", "https").stdout.strip()
    while True:
        out = subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", container],
                             capture_output=True, text=True, check=True).stdout.strip()
        if out == "healthy":
            break
        assert out == "starting" and time.monotonic() < deadline, f"https container health: {out}"
        time.sleep(2)
