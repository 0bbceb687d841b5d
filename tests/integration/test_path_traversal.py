"""Path tricks against the tenant checks: ``..``, percent-encoded dots and slashes, backslashes, ``//``.

The plugin's filter decides on the URI Orthanc hands it, and Orthanc routes on the same URI; nginx passes
the client's URI on unchanged (``proxy_pass`` without a URI part). So the question for every
tenant-checked route (WADO-RS study/series/instance/frames, metadata, rendered, QIDO below a study,
WADO-URI, Orthanc REST) is: when a clinic B physician starts a path at one of B's own resources and
climbs out of it into clinic A's, does the decision follow where the request really lands?

Every case is run three ways:
  * as the admin: exactly 200 with A's data, so the path really resolves to A's resource (without this
    a 403 would prove nothing, a mangled path is refused anyway);
  * as B's physician: exactly 403 and none of A's identifiers in the body;
  * mirrored (from A's resource into B's own) as B's physician: exactly 200, so the filter judged the
    resolved resource and not the UID at the start of the path.
Paths that climb above the root, or carry a NUL, are refused by nginx with exactly 400.
"""

from __future__ import annotations

import io
import json
import secrets
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

import pydicom
import pytest

from securepacs.client import store
from securepacs.dicom.identifiers import orthanc_id
from securepacs_tools.synth import StudySpec, write_study

pytestmark = pytest.mark.integration


@dataclass
class Side:
    spec: StudySpec
    sops: list[str] = field(default_factory=list)

    @property
    def ids(self) -> dict[str, str]:
        s = self.spec
        sop = self.sops[0]
        return {"study": s.study_uid, "series": s.series_uid, "sop": sop,
                "ostudy": orthanc_id(s.patient_id, s.study_uid),
                "oseries": orthanc_id(s.patient_id, s.study_uid, s.series_uid),
                "oinst": orthanc_id(s.patient_id, s.study_uid, s.series_uid, sop)}

    def tokens(self) -> set[str]:
        found = set(self.ids.values()) | set(self.sops) | {self.spec.patient_id}
        found |= {orthanc_id(self.spec.patient_id, self.spec.study_uid, self.spec.series_uid, u) for u in self.sops}
        return found | set(self.spec.patient_name.split("^"))


@dataclass
class Pair:
    archive: object
    a: Side
    b: Side
    physician_b: tuple[str, str]
    direct: dict[str, bytes] = field(default_factory=dict)

    def get(self, path: str, auth: tuple[str, str] | None) -> tuple[int, bytes]:
        return self.archive.https(path, auth=auth)

    def leaked(self, side: Side, body: bytes) -> list[str]:
        """``side``'s identifiers in a body (inside the files too, when it is a ZIP archive)."""
        if body.startswith(b"PK\x03\x04"):
            with zipfile.ZipFile(io.BytesIO(body)) as archive:
                body = b"".join(archive.read(name) for name in archive.namelist())
        text = body.decode("utf-8", "replace")
        return sorted(t for t in side.tokens() if t in text)

    def shows(self, side: Side, target: str, body: bytes) -> bool:
        """Is ``body`` the target resource of ``side``? Its identifiers are in it, or (rendered images,
        which carry none) it is byte for byte what the direct URI gives the admin."""
        if self.leaked(side, body):
            return True
        uri = "/" + target.format(**side.ids)
        if uri not in self.direct:
            status, self.direct[uri] = self.get(uri, self.archive.admin_credential())
            assert status == 200, f"the admin cannot GET {uri}: {status}"
        return body == self.direct[uri]


@pytest.fixture(scope="module")
def pair(native_archive, tmp_path_factory) -> Pair:
    archive = native_archive
    root = tmp_path_factory.mktemp("traversal")
    tag = secrets.token_hex(3).upper()
    clinic_b = archive.clinics.get("clinicB") or archive.enrol("clinicB", "CLINICB")
    sides = []
    for name, clinic in (("a", archive.clinics["clinicA"]), ("b", clinic_b)):
        mark = f"{name.upper()}{tag}"
        spec = StudySpec(seed=f"traversal-{mark}", patient_id=f"TRAV{mark}",
                         patient_name=f"TRAVSURNAME{mark}^TRAVGIVEN{mark}", slices=2, rows=16, columns=16)
        paths = write_study(spec, root / name)
        assert store(archive.conn(clinic), [root / name]).ok
        sides.append(Side(spec, sorted(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                                       for p in paths)))
    password = "Tr-" + secrets.token_urlsafe(18)
    (root / "pw").write_text(password + "\n")
    user = f"trav-dr-b-{tag.lower()}"
    archive.cli("user", "add", user, "--role", "physician", "--clinic", "clinicB", "--password-file", str(root / "pw"))
    return Pair(archive, sides[0], sides[1], (user, password))


# Targets: every tenant-checked read route, relative to the root (no leading slash).
TARGETS: dict[str, str] = {
    "WADO-RS study": "dicom-web/studies/{study}",
    "WADO-RS study metadata": "dicom-web/studies/{study}/metadata",
    "WADO-RS study rendered": "dicom-web/studies/{study}/rendered",
    "QIDO-RS series of a study": "dicom-web/studies/{study}/series",
    "WADO-RS series": "dicom-web/studies/{study}/series/{series}",
    "WADO-RS series metadata": "dicom-web/studies/{study}/series/{series}/metadata",
    "WADO-RS series rendered": "dicom-web/studies/{study}/series/{series}/rendered",
    "WADO-RS instance": "dicom-web/studies/{study}/series/{series}/instances/{sop}",
    "WADO-RS instance metadata": "dicom-web/studies/{study}/series/{series}/instances/{sop}/metadata",
    "WADO-RS instance rendered": "dicom-web/studies/{study}/series/{series}/instances/{sop}/rendered",
    "WADO-RS frame": "dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/1",
    "WADO-RS frame rendered": "dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/1/rendered",
    "WADO-URI": "wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
                "&contentType=application/dicom",
    "REST study": "studies/{ostudy}",
    "REST study archive": "studies/{ostudy}/archive",
    "REST series": "series/{oseries}",
    "REST instance file": "instances/{oinst}/file",
    "REST instance tags": "instances/{oinst}/tags",
    "REST frame preview": "instances/{oinst}/frames/0/preview",
}

# Where the climb starts: B's own, allowed resources (the deepest DICOMweb one has 9 segments, so a 9-step
# climb lands exactly on the root; the REST one 3).
STARTS: dict[str, tuple[str, int]] = {
    "WADO-RS frame": ("dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/1", 9),
    "REST instance": ("instances/{oinst}/tags", 3),
}

# One step up, spelled in the ways a filter that matched the raw URI could be fooled by.
STEPS: dict[str, str] = {
    "dot-dot": "../",
    "percent-encoded dots": "%2e%2e/",
    "upper-case encoding": "%2E%2E/",
    "half-encoded dots": ".%2e/",
    "encoded slash": "..%2f",
    "fully encoded": "%2e%2e%2f",
    "backslash": "..%5c",
}


def climb(start: str, depth: int, step: str, target: str) -> str:
    return f"/{start}/{step * depth}{target}"


def double_slashes(_start: str, _depth: int, _step: str, target: str) -> str:
    path, sep, query = target.partition("?")
    return "//" + path.replace("/", "//") + sep + query


def encoded_slashes(_start: str, _depth: int, _step: str, target: str) -> str:
    path, sep, query = target.partition("?")
    return "/" + path.replace("/", "%2F") + sep + query


Builder = Callable[[str, int, str, str], str]
CASES: list[tuple[str, str, str, Builder]] = [
    (f"{start} {step}", start, step, climb) for start in STARTS for step in STEPS
] + [("double slashes", "REST instance", "", double_slashes), ("encoded slashes", "REST instance", "", encoded_slashes)]


def build(builder: Builder, start: str, step: str, origin: dict[str, str], target: str, to: dict[str, str]) -> str:
    path, depth = STARTS[start]
    return builder(path.format(**origin), depth, STEPS.get(step, ""), target.format(**to))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_traversal_into_another_clinics_resource_is_refused(pair: Pair, case) -> None:
    _name, start, step, builder = case
    admin = pair.archive.admin_credential()
    wrong = []
    for target_name, target in TARGETS.items():
        if builder is encoded_slashes and target_name == "WADO-URI":
            continue  # a single segment: nothing to encode
        attack = build(builder, start, step, pair.b.ids, target, pair.a.ids)
        status, body = pair.get(attack, admin)
        assert status == 200 and pair.shows(pair.a, target, body), (
            f"{target_name}: {attack} -> {status} for the admin: the path does not reach A's resource, so "
            "this case would prove nothing")
        status, body = pair.get(attack, pair.physician_b)
        if status != 403:
            wrong.append(f"{target_name}: {attack} -> {status}, expected exactly 403")
        if leaked := pair.leaked(pair.a, body):
            wrong.append(f"{target_name}: {attack} leaked {leaked}")
        # The mirror: from A's resource into B's own is served, so the filter judged where the path lands.
        mirror = build(builder, start, step, pair.a.ids, target, pair.b.ids)
        status, body = pair.get(mirror, pair.physician_b)
        if status != 200 or pair.leaked(pair.a, body) or not pair.shows(pair.b, target, body):
            wrong.append(f"{target_name}: mirror {mirror} -> {status}, expected exactly 200 with B's data only")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("path", [
    "/../dicom-web/studies/{study}/metadata",
    "/%2e%2e/dicom-web/studies/{study}/metadata",
    "/dicom-web/../../dicom-web/studies/{study}/metadata",
    "/studies/{ostudy}/../../../studies/{ostudy}",
    "/dicom-web/studies/{study}%00/metadata",
])
def test_paths_above_the_root_or_with_nul_are_bad_requests(pair: Pair, path: str) -> None:
    uri = path.format(**pair.a.ids)
    for who, auth in (("admin", pair.archive.admin_credential()), ("clinic B", pair.physician_b)):
        status, body = pair.get(uri, auth)
        assert status == 400, f"{who} GET {uri} -> {status}, expected exactly 400 (nginx)"
        assert not pair.leaked(pair.a, body), f"{who} GET {uri} leaked A's data"


def test_query_parameters_cannot_widen_a_study_scoped_search(pair: Pair) -> None:
    """The study (and series) in the path is what QIDO-RS below a study searches; a query key naming
    another clinic's study or series does not replace it."""
    a, b = pair.a.ids, pair.b.ids
    for uri in (f"/dicom-web/studies/{b['study']}/series?StudyInstanceUID={a['study']}",
                f"/dicom-web/studies/{b['study']}/series?0020000D={a['study']}",
                f"/dicom-web/studies/{b['study']}/instances?StudyInstanceUID={a['study']}",
                f"/dicom-web/studies/{b['study']}/series/{b['series']}/instances?SeriesInstanceUID={a['series']}",
                f"/dicom-web/studies/{b['study']}/instances?PatientID={pair.a.spec.patient_id}"):
        status, body = pair.get(uri, pair.physician_b)
        assert status == 200, f"{uri} -> {status}"
        assert not pair.leaked(pair.a, body), f"{uri} leaked {pair.leaked(pair.a, body)}"
        assert all(item["0020000D"]["Value"] == [b["study"]] for item in json.loads(body)), uri


def test_wado_uri_filter_and_handler_read_the_same_object_uid(pair: Pair) -> None:
    """A repeated ``objectUID``: the filter must judge the value Orthanc serves (the last one)."""
    a, b = pair.a.ids, pair.b.ids
    base = (f"/wado?requestType=WADO&studyUID={b['study']}&seriesUID={b['series']}"
            "&contentType=application/dicom")
    status, body = pair.get(f"{base}&objectUID={b['sop']}&objectUID={a['sop']}", pair.physician_b)
    assert status == 403 and not pair.leaked(pair.a, body), status
    status, body = pair.get(f"{base}&objectUID={a['sop']}&objectUID={b['sop']}", pair.physician_b)
    assert status == 200, status
    served = pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True)
    assert served.SOPInstanceUID == b["sop"] and served.StudyInstanceUID == b["study"]
    for variant in (f"{base}&ObjectUID={a['sop']}", f"{base}&objectUID=%20{a['sop']}"):
        status, body = pair.get(variant, pair.physician_b)
        assert status == 403 and not pair.leaked(pair.a, body), (variant, status)
