"""``clinic add`` returns only when the running archive accepts the clinic (issue 12, finding 10): the plugin's
modality sync marks in the store which generation Orthanc reflects; the command line waits for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from securepacs.archive import modalities
from securepacs.archive.modalities import APPLIED, NOT_CONFIRMED, NOT_RUNNING, ModalitySync, await_registration
from securepacs.cli.main import main
from securepacs.pki import certificates
from securepacs.store.database import Store


class Api:
    def __init__(self) -> None:
        self.modalities: dict[str, dict[str, Any]] = {}

    def list(self) -> dict[str, dict[str, Any]]:
        return dict(self.modalities)

    def put(self, name: str, body: dict[str, Any]) -> None:
        self.modalities[name] = body

    def delete(self, name: str) -> None:
        del self.modalities[name]


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "securepacs.db")
    yield s
    s.close()


def test_the_sync_marks_the_generation_it_applied_without_bumping_it(store: Store) -> None:
    clock = Clock()
    sync = ModalitySync(store, Api(), clock=clock)
    assert store.modalities_applied() is None
    store.add_clinic("north", ["NORTH"])
    sync.sync()
    generation = store.generation()
    assert store.modalities_applied() == (generation, clock.now, 0.0)
    assert store.generation() == generation  # the mark is not a change the sync would see again


def test_the_mark_is_refreshed_as_a_heartbeat_and_cleared_on_stop(store: Store) -> None:
    clock = Clock()
    sync = ModalitySync(store, Api(), clock=clock)
    sync.sync()
    sync.start(3600)  # the loop will not tick during the test
    first = store.modalities_applied()
    assert first is not None and first[2] == 3600
    clock.now += modalities.HEARTBEAT_SECONDS / 2
    sync.sync()
    assert store.modalities_applied() == first  # no store write on every tick
    clock.now += modalities.HEARTBEAT_SECONDS
    sync.sync()
    assert store.modalities_applied()[1] == clock.now
    sync.stop()
    assert store.modalities_applied()[1] == 0.0


def test_waiting_ends_when_the_plugin_applied_the_change_then_lets_the_gateway_settle(store: Store) -> None:
    clock = Clock()
    store.mark_modalities_applied(4, clock.now, 2.0)
    ticks = []

    def sleep(seconds: float) -> None:
        ticks.append(seconds)
        clock.sleep(seconds)
        if len(ticks) == 3:  # the plugin's next sync
            store.mark_modalities_applied(5, clock.now, 2.0)

    result = await_registration(store, 5, 15, settle=1.2, clock=clock, sleep=sleep)
    assert result.state == APPLIED and result.waited == pytest.approx(1.2)


def test_no_live_plugin_means_not_running_at_once(store: Store) -> None:
    clock = Clock()
    assert await_registration(store, 1, 15, clock=clock, sleep=clock.sleep).state == NOT_RUNNING  # never started
    store.mark_modalities_applied(1, 0.0, 2.0)  # stopped cleanly
    assert await_registration(store, 2, 15, clock=clock, sleep=clock.sleep) == (modalities.Registration(NOT_RUNNING, 0))
    store.mark_modalities_applied(1, clock.now - 60, 2.0)  # killed a minute ago
    assert await_registration(store, 2, 15, clock=clock, sleep=clock.sleep).state == NOT_RUNNING


def test_a_live_plugin_that_does_not_apply_the_change_is_reported(store: Store) -> None:
    clock = Clock()
    store.mark_modalities_applied(1, clock.now, 2.0)

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        store.mark_modalities_applied(1, clock.now, 2.0)  # alive, but stuck on generation 1

    result = await_registration(store, 2, 15, clock=clock, sleep=sleep)
    assert result.state == NOT_CONFIRMED and result.waited == pytest.approx(15, abs=0.2)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(certificates, "CA_KEY_KIND", "ec-p256")
    monkeypatch.setattr(certificates, "LEAF_KEY_KIND", "ec-p256")
    monkeypatch.setenv("SECUREPACS_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SECUREPACS_CERTS", str(tmp_path / "certs"))
    monkeypatch.setenv("SECUREPACS_HOSTNAMES", "pacs.example.org")
    assert main(["pki", "init"]) == 0
    return tmp_path


def test_clinic_add_with_the_archive_stopped_says_so_and_succeeds(env: Path, capsys) -> None:
    assert main(["clinic", "add", "north", "--aet", "NORTH"]) == 0
    assert "The archive is not running: it registers AE title(s) NORTH when it starts." in capsys.readouterr().out


def test_clinic_add_reports_a_running_archive_that_did_not_confirm(env: Path, capsys, monkeypatch) -> None:
    store = Store(env / "data" / "securepacs.db")
    store.mark_modalities_applied(store.generation(), modalities.time.time() + 3600, 0.2)  # alive, never applies
    store.close()
    assert main(["clinic", "add", "north", "--aet", "NORTH", "--wait", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "clinic enrolled, but the running archive did not confirm AE title(s) NORTH" in err


def test_clinic_add_wait_flag_is_validated(env: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["clinic", "add", "north", "--aet", "NORTH", "--wait", "-1"])
    assert exit_info.value.code == 2
    assert "'-1' is not a number of seconds 0-3600" in capsys.readouterr().err
