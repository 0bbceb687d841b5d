"""securepacs.platform: the CVE table, version parsing and the running Orthanc's exposure."""

from __future__ import annotations

import re

import pytest

from securepacs.platform import exposure, versions
from securepacs.platform.cves import KNOWN, Cve
from securepacs.platform.versions import Version, parse

OPEN_IN_1_12 = [f"CVE-2026-{n}" for n in range(5437, 5446)]


# -- the table ---------------------------------------------------------------------------------------------
def test_table_has_one_row_per_known_cve_with_a_valid_fixed_in_version() -> None:
    ids = [cve.id for cve in KNOWN]
    assert ids == [*OPEN_IN_1_12, "CVE-2026-10528"]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"CVE-\d{4}-\d{4,}", i) for i in ids)
    assert {cve.id: cve.fixed_in for cve in KNOWN} == {**dict.fromkeys(OPEN_IN_1_12, "1.12.11"),
                                                       "CVE-2026-10528": "1.13.0"}
    for cve in KNOWN:
        versions.require(cve.fixed_in)
        assert cve.description and "\n" not in cve.description and len(cve.description) <= 120, cve


def test_a_row_as_json() -> None:
    assert KNOWN[0].as_json() == {"id": "CVE-2026-5437", "fixedIn": "1.12.11", "description": KNOWN[0].description}
    # Part of CVE-2026-10528's fix is DCMTK's (see the table's comment): only that row names a DCMTK release.
    # It is also the one SecurePACS mitigates in front of Orthanc (securepacs.dataset_limits).
    assert KNOWN[-1].as_json() == {"id": "CVE-2026-10528", "fixedIn": "1.13.0", "dcmtkFixedIn": "3.7.1",
                                   "description": KNOWN[-1].description, "mitigation": KNOWN[-1].mitigation}
    assert [c.id for c in KNOWN if c.mitigation] == ["CVE-2026-10528"]
    assert [c.id for c in KNOWN if c.dcmtk_fixed_in] == ["CVE-2026-10528"]


# -- versions ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "numbers"), [
    ("1.10.1", (1, 10, 1)),
    ("1.13.0+dfsg-1+b1", (1, 13)),
    ("1.10.1+dfsg-2+deb12u1", (1, 10, 1)),
    ("1:3.6.7-9~deb12u4", (3, 6, 7)),
    ("3.7.0+really3.7.0-7", (3, 7)),
    ("4.0+ds-1+b7", (4,)),
    (" 1.24 ", (1, 24)),
    ("1.12.11~rc1", (1, 12, 11)),
])
def test_parse_reads_upstream_and_debian_versions(text: str, numbers: tuple[int, ...]) -> None:
    assert parse(text) == Version(False, numbers)


@pytest.mark.parametrize("text", ["", None, "unknown", "1.x", "v1.2", "1.2.", "1..2", "abc-1.2"])
def test_parse_refuses_what_is_not_a_version(text: str | None) -> None:
    assert parse(text) is None


def test_require_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match=r"version '1\.x' is invalid: expected digits and dots"):
        versions.require("1.x")


def test_ordering_is_numeric_and_mainline_is_newest() -> None:
    ordered = ["1.9.7", "1.10.1", "1.12.7", "1.12.10", "1.12.11", "1.13", "1.13.1", "2.0", "mainline"]
    parsed = [versions.require(v) for v in ordered]
    assert sorted(parsed) == parsed and len(set(parsed)) == len(parsed)
    assert parse("1.13") == parse("1.13.0") == parse("1.13.0+dfsg-1+b1")
    assert parse("Mainline") == parse("mainline") > versions.require("99.0")
    assert str(parse("1.13.0")) == "1.13" and str(parse("mainline")) == "mainline" and str(parse("0")) == "0"


# -- exposure ----------------------------------------------------------------------------------------------
def ids(cves: list[Cve]) -> list[str]:
    return [c.id for c in cves]


@pytest.mark.parametrize(("running", "dcmtk", "expected"), [
    ("1.10.1", "3.6.7", [*OPEN_IN_1_12, "CVE-2026-10528"]),  # Debian 12
    ("1.12.7", "3.6.9", [*OPEN_IN_1_12, "CVE-2026-10528"]),  # Debian 13
    ("1.12.10", "3.7.1", [*OPEN_IN_1_12, "CVE-2026-10528"]),
    ("1.12.11", "3.7.1", ["CVE-2026-10528"]),
    ("1.13.0", "3.7.0", ["CVE-2026-10528"]),  # forky / sid, the image: DCMTK's part of the fix is missing
    ("1.13.0", None, ["CVE-2026-10528"]),  # DCMTK unknown: not ruled out
    ("1.13.0+dfsg-1+b1", "3.7.1", []),
    ("1.13.0", "3.7.1", []),
    ("1.14.2", "3.8", []),
    ("mainline", "3.7.1", []),
])
def test_unfixed_lists_the_cves_fixed_after_the_running_versions(running: str, dcmtk: str | None,
                                                                  expected: list[str]) -> None:
    assert ids(exposure.unfixed(running, dcmtk_version=dcmtk)) == expected


@pytest.mark.parametrize("running", [None, "", "garbage"])
def test_an_unreadable_version_rules_nothing_out(running: str | None) -> None:
    assert ids(exposure.unfixed(running)) == ids(list(KNOWN))


def test_unfixed_takes_another_table() -> None:
    table = [Cve("CVE-2030-1", "2.0", "a"), Cve("CVE-2030-2", "1.5", "b")]
    assert ids(exposure.unfixed("1.13.0", table)) == ["CVE-2030-1"]


FACTS_1_10 = {"orthanc": "1.10.1", "pythonPlugin": "4.0", "dicomWeb": "1.7", "dcmtk": "3.6.7"}
IMAGE = {"orthanc": "1.13.0", "pythonPlugin": "7.1", "dicomWeb": "1.24", "dcmtk": "3.7.0"}


def test_component_of_debian_12_is_degraded_with_every_cve() -> None:
    platform = exposure.component({**FACTS_1_10, "unrelated": "x"})
    assert platform["status"] == "degraded"
    assert platform["versions"] == FACTS_1_10
    assert [c["id"] for c in platform["cves"]] == ids(list(KNOWN))
    assert platform["cves"][0] == KNOWN[0].as_json()


def test_component_with_every_fix_is_ok_and_missing_facts_are_none() -> None:
    platform = exposure.component({"orthanc": "1.13.0", "dcmtk": "3.7.1"})
    assert platform == {"status": "ok", "cves": [],
                        "versions": {"orthanc": "1.13.0", "pythonPlugin": None, "dicomWeb": None, "dcmtk": "3.7.1"}}


def test_component_of_the_forky_image_lists_the_dcmtk_side_of_cve_2026_10528() -> None:
    platform = exposure.component(IMAGE)
    assert platform["status"] == "degraded" and [c["id"] for c in platform["cves"]] == ["CVE-2026-10528"]


def test_describe_names_every_version_and_warns_once() -> None:
    lines = exposure.describe(exposure.component(FACTS_1_10))
    assert lines[0] == "Platform: Orthanc 1.10.1, python plugin 4.0, DICOMweb 1.7, DCMTK 3.6.7"
    [warning] = lines[1:]
    assert warning.startswith("WARNING: Orthanc 1.10.1 (DCMTK 3.6.7) has 10 known unfixed vulnerabilities "
                              "(CVE-2026-5437, ")
    assert "CVE-2026-10528); Orthanc 1.13 or newer with DCMTK 3.7.1 or newer fixes them" in warning
    lines = exposure.describe(exposure.component(IMAGE))
    assert lines[1].startswith("WARNING: Orthanc 1.13.0 (DCMTK 3.7.0) has 1 known unfixed vulnerability "
                               "(CVE-2026-10528); ")


def test_describe_without_exposure_or_without_a_report() -> None:
    assert exposure.describe(exposure.component({"orthanc": "1.13.0", "dcmtk": "3.7.1"})) == [
        "Platform: Orthanc 1.13.0, python plugin unknown, DICOMweb unknown, DCMTK 3.7.1"]
    assert exposure.describe(None)[0].startswith("Platform versions: not reported")
    assert exposure.describe({"status": "error", "error": "RuntimeError"})[0].startswith("Platform versions: not")
