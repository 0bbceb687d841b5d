"""durable.atomic_file: the one routine every key, secret and cursor is written through."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from securepacs.durable.atomic_file import write_atomically


def test_creates_with_the_mode_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomically(tmp_path / "pub.pem", b"public", 0o644)
    finally:
        os.umask(old)
    assert (tmp_path / "pub.pem").read_bytes() == b"public"
    assert stat.S_IMODE((tmp_path / "pub.pem").stat().st_mode) == 0o644


def test_replaces_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "cursor"
    target.write_bytes(b"old")
    write_atomically(target, b"new", 0o600)
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cursor"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_exclusive_refuses_an_existing_file_and_keeps_it(tmp_path: Path) -> None:
    target = tmp_path / "ca.key"
    target.write_bytes(b"the real key")
    with pytest.raises(FileExistsError):
        write_atomically(target, b"another key", 0o600, exclusive=True)
    assert target.read_bytes() == b"the real key"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.key"]


def test_exclusive_creates_when_absent(tmp_path: Path) -> None:
    write_atomically(tmp_path / "new.key", b"k", 0o600, exclusive=True)
    assert (tmp_path / "new.key").read_bytes() == b"k"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.key"]


def test_a_failed_write_leaves_the_old_file_and_no_debris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"old secret")

    def full_disk(_fd: int, _data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_atomically(target, b"new secret", 0o600)
    monkeypatch.undo()
    assert target.read_bytes() == b"old secret"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


def test_a_symlink_in_place_of_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"untouched")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "key").symlink_to(outside)
    write_atomically(tmp_path / "d" / "key", b"k", 0o600)
    assert outside.read_bytes() == b"untouched"
    assert not (tmp_path / "d" / "key").is_symlink()
