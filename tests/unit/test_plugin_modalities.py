"""Keeping Orthanc's DICOM modalities equal to the enrolled clinics (``desired_modalities``, ``ModalitySync``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from securepacs.archive.modalities import NO_MOVE_HOST, NO_MOVE_PORT, PREFIX, ModalitySync, desired_modalities
from securepacs.store.database import Store

HAND_MADE = {"AET": "WORKSTATION", "Host": "10.9.9.9", "Port": 104, "Manufacturer": "Generic"}


class FakeModalityApi:
    """Orthanc's /modalities as a dict, with a record of every write."""

    def __init__(self, modalities: dict[str, dict[str, Any]] | None = None) -> None:
        self.modalities: dict[str, dict[str, Any]] = dict(modalities or {})
        self.list_calls = 0
        self.puts: list[str] = []
        self.deletes: list[str] = []
        self.fail_next: Exception | None = None
        self.failing: Exception | None = None
        self.lock = threading.Lock()

    def list(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            self.list_calls += 1
            if self.failing is not None:
                raise self.failing
            if self.fail_next is not None:
                exc, self.fail_next = self.fail_next, None
                raise exc
            return {k: dict(v) for k, v in self.modalities.items()}

    def put(self, name: str, body: dict[str, Any]) -> None:
        with self.lock:
            self.puts.append(name)
            self.modalities[name] = dict(body)

    def delete(self, name: str) -> None:
        with self.lock:
            self.deletes.append(name)
            del self.modalities[name]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "securepacs.db")
    yield s
    s.close()


# -- desired state -------------------------------------------------------------------------------------
def test_nothing_enrolled_means_no_modalities(store: Store) -> None:
    assert desired_modalities(store) == {}


def test_each_aet_of_an_active_clinic_becomes_a_managed_modality(store: Store) -> None:
    store.add_clinic("north", ["NORTH_CT", "NORTH_MR"], move_host="10.1.2.3", move_port=11112)
    wanted = desired_modalities(store)
    assert sorted(wanted) == [f"{PREFIX}north-0", f"{PREFIX}north-1"]
    ct = wanted[f"{PREFIX}north-0"]
    assert (ct["AET"], ct["Host"], ct["Port"]) == ("NORTH_CT", "10.1.2.3", 11112)
    assert wanted[f"{PREFIX}north-1"]["AET"] == "NORTH_MR"


def test_modality_is_least_privilege_over_tls(store: Store) -> None:
    store.add_clinic("north", ["NORTH_CT"])
    body = desired_modalities(store)[f"{PREFIX}north-0"]
    assert body["UseDicomTls"] is True
    assert all(body[k] is True for k in ("AllowEcho", "AllowStore", "AllowFind", "AllowMove"))
    # C-GET cannot be tenant-checked by a plugin in Orthanc 1.10: refused until the gateway inspects it.
    assert all(body[k] is False for k in ("AllowGet", "AllowEventReport", "AllowNAction", "AllowFindWorklist"))


def test_clinic_without_retrieve_address_points_at_a_closed_loopback_port(store: Store) -> None:
    store.add_clinic("north", ["NORTH_CT"])
    body = desired_modalities(store)[f"{PREFIX}north-0"]
    assert (body["Host"], body["Port"]) == (NO_MOVE_HOST, NO_MOVE_PORT) == ("127.0.0.1", 1)


def test_revoked_clinic_has_no_modality(store: Store) -> None:
    store.add_clinic("north", ["NORTH_CT"])
    store.add_clinic("south", ["SOUTH_CT"])
    store.revoke_clinic("north")
    assert list(desired_modalities(store)) == [f"{PREFIX}south-0"]


# -- sync --------------------------------------------------------------------------------------------------
def test_sync_adds_the_enrolled_clinics(store: Store) -> None:
    store.add_clinic("north", ["NORTH_CT", "NORTH_MR"])
    api = FakeModalityApi()
    sync = ModalitySync(store, api)
    assert not sync.synced
    assert sync.sync() is True
    assert sync.synced
    assert api.modalities == desired_modalities(store)
    assert api.deletes == []


def test_sync_deletes_only_stale_managed_modalities(store: Store) -> None:
    store.add_clinic("north", ["NORTH_CT"])
    api = FakeModalityApi({
        "workstation": HAND_MADE,  # added by an admin: not ours
        f"{PREFIX}gone-0": {"AET": "GONE", "Host": "10.0.0.1", "Port": 104},  # a clinic no longer in the store
    })
    ModalitySync(store, api).sync()
    assert api.deletes == [f"{PREFIX}gone-0"]
    assert api.modalities["workstation"] == HAND_MADE
    assert "workstation" not in api.puts
    assert sorted(api.modalities) == [f"{PREFIX}north-0", "workstation"]


def test_hand_made_modality_with_a_clinic_aet_is_left_alone(store: Store) -> None:
    # Not ours by name, so not ours to touch, even if it reuses an AE title.
    store.add_clinic("north", ["NORTH_CT"])
    hand_made = {**HAND_MADE, "AET": "NORTH_CT"}
    api = FakeModalityApi({"north-by-hand": hand_made})
    ModalitySync(store, api).sync()
    assert api.modalities["north-by-hand"] == hand_made
    assert api.deletes == []


def test_sync_is_a_no_op_while_the_generation_is_unchanged(store: Store) -> None:
    store.add_clinic("north", ["NORTH_CT"])
    api = FakeModalityApi()
    sync = ModalitySync(store, api)
    assert sync.sync() is True
    calls = api.list_calls
    assert sync.sync() is False
    assert api.list_calls == calls  # Orthanc is not even asked
    assert api.puts == [f"{PREFIX}north-0"]


def test_sync_only_writes_what_differs(store: Store) -> None:
    store.add_clinic("north", ["NORTH_CT"])
    store.add_clinic("south", ["SOUTH_CT"])
    wanted = desired_modalities(store)
    # Orthanc reports extra keys and its own Manufacturer spelling: still the same modality.
    current = {name: {**body, "Manufacturer": "GenericNoWildcardInDates", "Timeout": 0}
               for name, body in wanted.items()}
    current[f"{PREFIX}south-0"]["Port"] = 4242  # drifted
    api = FakeModalityApi(current)
    assert ModalitySync(store, api).sync() is True
    assert api.puts == [f"{PREFIX}south-0"]
    assert api.deletes == []


def test_unrelated_store_change_pushes_nothing(store: Store) -> None:
    store.add_clinic("north", ["NORTH_CT"])
    api = FakeModalityApi()
    sync = ModalitySync(store, api)
    sync.sync()
    store.add_user("alice", "scrypt$x", "admin")  # bumps the generation
    assert sync.sync() is True
    assert api.puts == [f"{PREFIX}north-0"]
    assert api.deletes == []


def test_enrolment_and_revocation_by_another_connection(store: Store) -> None:
    api = FakeModalityApi({"workstation": HAND_MADE})
    sync = ModalitySync(store, api)
    sync.sync()
    cli = Store(store.path)  # ``securepacs clinic ...`` in another process
    try:
        cli.add_clinic("north", ["NORTH_CT"])
        cli.add_clinic("south", ["SOUTH_CT"])
        assert sync.sync() is True
        assert sorted(api.modalities) == [f"{PREFIX}north-0", f"{PREFIX}south-0", "workstation"]

        cli.revoke_clinic("north")
        assert sync.sync() is True
    finally:
        cli.close()
    assert api.deletes == [f"{PREFIX}north-0"]
    assert sorted(api.modalities) == [f"{PREFIX}south-0", "workstation"]
    assert all(body["AET"] != "NORTH_CT" for body in api.modalities.values())


def test_failed_sync_is_retried_at_the_same_generation(store: Store) -> None:
    store.add_clinic("north", ["NORTH_CT"])
    api = FakeModalityApi()
    api.fail_next = RuntimeError("Orthanc busy")
    sync = ModalitySync(store, api)
    with pytest.raises(RuntimeError):
        sync.sync()
    assert not sync.synced
    assert sync.sync() is True
    assert list(api.modalities) == [f"{PREFIX}north-0"]


def wait_for(condition: Any, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def test_background_loop_applies_changes_and_survives_errors(store: Store) -> None:
    api = FakeModalityApi()
    sync = ModalitySync(store, api)
    errors: list[Exception] = []
    sync.sync()
    api.fail_next = RuntimeError("database is locked")
    store.add_clinic("north", ["NORTH_CT"])
    sync.start(0.01, on_error=errors.append)
    try:
        assert wait_for(lambda: f"{PREFIX}north-0" in api.modalities)
        assert [str(e) for e in errors] == ["database is locked"]
        assert wait_for(lambda: sync.last_error is None)

        store.revoke_clinic("north")
        assert wait_for(lambda: api.modalities == {})
    finally:
        sync.stop()
    assert sync._thread is not None and not sync._thread.is_alive()


def test_background_loop_records_and_clears_the_last_error(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    api = FakeModalityApi()
    api.failing = RuntimeError("Orthanc busy")
    sync = ModalitySync(store, api)
    sync.start(0.01)
    try:
        assert wait_for(lambda: sync.last_error == "Orthanc busy")
        assert not sync.synced
        api.failing = None
        assert wait_for(lambda: sync.synced and sync.last_error is None)
    finally:
        sync.stop()
    assert "modality sync failed: Orthanc busy" in caplog.text


def test_stop_without_start_is_harmless(store: Store) -> None:
    ModalitySync(store, FakeModalityApi()).stop()


def test_behind_the_gateway_moves_go_through_its_relay_and_get_is_allowed(store: Store) -> None:
    store.add_clinic("north", ["NORTH_CT"], move_host="10.0.0.9", move_port=11112)
    store.add_clinic("south", ["SOUTH_CT"])  # no retrieve address
    wanted = desired_modalities(store, relay_port=2764)
    north, south = wanted[f"{PREFIX}north-0"], wanted[f"{PREFIX}south-0"]
    assert (north["Host"], north["Port"]) == ("127.0.0.1", 2764)  # the egress relay dials 10.0.0.9:11112
    assert (south["Host"], south["Port"]) == (NO_MOVE_HOST, NO_MOVE_PORT)
    assert north["AllowGet"] is True and south["AllowGet"] is True  # the gateway checks each C-GET
