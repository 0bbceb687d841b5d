"""The web app's routes in the HTTP role matrix: page shells for everyone, study pages and viewer data
only for the clinic that owns the study (and admins)."""

from __future__ import annotations

import pytest
from test_policy import ADMIN_P, AUDIT, DEVICE, DOCTOR, FOREIGN_INST, FOREIGN_STUDY, OWN_INST, OWN_STUDY, policy

from securepacs.access.principal import GATEWAY, Principal
from securepacs.archive.http_policy import HttpPolicy

__all__ = ["policy"]  # the fixture, imported for use here

GATEWAY_P = Principal("gw", GATEWAY, None)
VIEWER = "/securepacs/api/viewer"


@pytest.mark.parametrize("uri", ["/", "/login", "/list"])
def test_page_shells_for_every_logged_in_user_but_the_gateway(policy: HttpPolicy, uri: str) -> None:
    for who in (ADMIN_P, DOCTOR, DEVICE, AUDIT):
        assert policy.decide(who, "GET", uri, {}).allowed
    assert not policy.decide(GATEWAY_P, "GET", uri, {}).allowed
    assert not policy.decide(DOCTOR, "POST", uri, {}).allowed


@pytest.mark.parametrize(("own", "foreign"), [
    (f"/view/{OWN_STUDY}", f"/view/{FOREIGN_STUDY}"),
    (f"/study/{OWN_STUDY}", f"/study/{FOREIGN_STUDY}"),
    (f"{VIEWER}/studies/{OWN_STUDY}", f"{VIEWER}/studies/{FOREIGN_STUDY}"),
    (f"{VIEWER}/instances/{OWN_INST}/metadata", f"{VIEWER}/instances/{FOREIGN_INST}/metadata"),
    (f"{VIEWER}/instances/{OWN_INST}/frames/0/rendered", f"{VIEWER}/instances/{FOREIGN_INST}/frames/0/rendered"),
])
def test_study_pages_and_viewer_data_are_tenant_checked(policy: HttpPolicy, own: str, foreign: str) -> None:
    assert policy.decide(DOCTOR, "GET", own, {}).allowed
    verdict = policy.decide(DOCTOR, "GET", foreign, {})
    assert not verdict.allowed and "is not the clinic's" in verdict.reason
    assert policy.decide(ADMIN_P, "GET", foreign, {}).allowed
    assert not policy.decide(AUDIT, "GET", own, {}).allowed
    assert not policy.decide(DOCTOR, "POST", own, {}).allowed


@pytest.mark.parametrize("uri", [f"/view/{OWN_STUDY}/x", f"/view/{OWN_STUDY.upper()}", "/view/../system",
                                 f"{VIEWER}/instances/{OWN_INST}/frames/123456/rendered", f"{VIEWER}/studies"])
def test_near_misses_are_refused(policy: HttpPolicy, uri: str) -> None:
    assert not policy.decide(DOCTOR, "GET", uri, {}).allowed
