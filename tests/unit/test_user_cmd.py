"""``securepacs user ...`` against a store in a temporary data dir (the same one the plugin would open)."""

from __future__ import annotations

import io
import logging
import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest

from securepacs.access import passwords
from securepacs.cli.main import main
from securepacs.store.database import Store

PW = "Doctor-password-5678"


@pytest.fixture(autouse=True)
def fast_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    real = passwords.hash_password
    monkeypatch.setattr(passwords, "hash_password", lambda password: real(password, n=2**10))


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SECUREPACS_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SECUREPACS_CERTS", str(tmp_path / "certs"))
    monkeypatch.setenv("SECUREPACS_HOSTNAMES", "localhost")  # the default asks the resolver for the FQDN
    store = Store(tmp_path / "data" / "securepacs.db")
    store.add_clinic("north", ["NORTH_CT"])
    store.add_user("admin", passwords.hash_password("Admin-password-1234"), "admin")
    store.close()
    return tmp_path


@pytest.fixture
def store(env: Path) -> Iterator[Store]:
    s = Store(env / "data" / "securepacs.db")
    yield s
    s.close()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def password_file(directory: Path, text: str) -> str:
    path = directory / "pw.txt"
    path.write_text(text)
    return str(path)


def test_add_generates_and_prints_a_password_once(env: Path, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "user", "add", "bob", "--role", "physician", "--clinic", "north")
    assert code == 0, err
    assert "Created user 'bob' with role 'physician' for clinic 'north'." in out
    printed = out.splitlines()[-1].strip()
    user = store.get_user("bob")
    assert user is not None and passwords.verify_password(printed, user.password_hash)
    assert out.count(printed) == 1 and printed not in err


def test_add_with_a_password_file(env: Path, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "user", "add", "audrey", "--role", "auditor",
                         "--password-file", password_file(env, PW + "\n"))
    assert code == 0, err
    assert PW not in out and "Generated" not in out
    user = store.get_user("audrey")
    assert user is not None and passwords.verify_password(PW, user.password_hash)


def test_add_with_the_password_on_stdin(env: Path, store: Store, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(PW + "\n"))
    code, _, err = cli(capsys, "user", "add", "audrey", "--role", "auditor", "--password-file", "-")
    assert code == 0, err
    user = store.get_user("audrey")
    assert user is not None and passwords.verify_password(PW, user.password_hash)


@pytest.mark.parametrize("argv", [
    ["user", "add", "bob", "--role", "auditor", "--password", PW],
    ["user", "add", "bob", "--role", "auditor", f"--password={PW}"],
    ["user", "reset-password", "admin", "--password", PW],
    ["user", "add", "bob", "--role", "auditor", "--passw", PW],  # no abbreviation of --password-file either
])
def test_a_password_on_the_command_line_is_refused_without_echo(env: Path, store: Store,
                                                                capsys: pytest.CaptureFixture[str],
                                                                argv: list[str]) -> None:
    before = store.list_users()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    if "--passw " not in " ".join(argv):
        assert "passwords are not accepted on the command line" in err
        assert PW not in err
    assert store.list_users() == before


@pytest.mark.parametrize(("argv", "message"), [
    (["user", "add", "bob", "--role", "physician"], "role 'physician' acts for one clinic: expected a clinic name"),
    (["user", "add", "bob", "--role", "physician", "--clinic", "south"], "clinic 'south' is not enrolled"),
    (["user", "add", "bob", "--role", "admin", "--clinic", "north"], "role 'admin' acts for no clinic"),
    (["user", "add", "bob:x", "--role", "auditor"], "user name 'bob:x' is invalid"),
    (["user", "add", "Admin", "--role", "auditor"], "user 'Admin' already exists as 'admin'"),
    (["user", "add", "admin", "--role", "auditor"], "user 'admin' already exists"),
    (["user", "add", "bob", "--role", "auditor", "--password-file", "{dir}/missing"],
     "cannot read the password file '{dir}/missing'"),
    (["user", "add", "bob", "--role", "auditor", "--password-file", "{weak}"], "password too short"),
    (["user", "add", "bob", "--role", "auditor", "--password-file", "{empty}"], "is empty"),
    (["user", "disable", "nobody"], "unknown user 'nobody'"),
    (["user", "enable", "nobody"], "unknown user 'nobody'"),
    (["user", "unlock", "nobody"], "unknown user 'nobody'"),
    (["user", "reset-password", "nobody"], "unknown user 'nobody'"),
    (["user", "reset-totp", "admin"], "user 'admin' has no second factor"),
    (["user", "disable", "admin"], "user 'admin' is the only enabled admin"),
])
def test_refusals_exit_2_with_one_line_naming_the_value(env: Path, store: Store, capsys: pytest.CaptureFixture[str],
                                                        argv: list[str], message: str) -> None:
    (env / "weak").write_text("short\n")
    (env / "empty").write_text("\n")
    fill = {"dir": str(env), "weak": str(env / "weak"), "empty": str(env / "empty")}
    before = store.list_users()
    code, _, err = cli(capsys, *(a.format(**fill) for a in argv))
    assert code == 2
    assert err.startswith("securepacs: error: ") and message.format(**fill) in err and err.count("\n") == 1
    assert store.list_users() == before


def test_invalid_role_is_an_argparse_error(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["user", "add", "bob", "--role", "root"])
    assert info.value.code == 2
    assert "invalid choice: 'root'" in capsys.readouterr().err


def test_list(env: Path, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    cli(capsys, "user", "add", "bob", "--role", "physician", "--clinic", "north")
    cli(capsys, "user", "add", "carol", "--role", "clinic-device", "--clinic", "north")
    cli(capsys, "user", "add", "dave", "--role", "auditor")
    store.set_totp_secret("bob", "JBSWY3DPEHPK3PXP")
    store.record_login_failure("carol", 4_000_000_000, 1, 900)  # locked far into the future
    store.set_disabled("dave", True)
    code, out, _ = cli(capsys, "user", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "CLINIC", "STATUS", "TOTP", "CREATED"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["admin"].split()[1:5] == ["admin", "-", "active", "no"]
    assert rows["bob"].split()[1:5] == ["physician", "north", "active", "yes"]
    assert "locked until 2096-10-02T07:21:40+00:00" in rows["carol"]
    assert rows["dave"].split()[1:4] == ["auditor", "-", "disabled"]
    code, out, _ = cli(capsys, "user", "list", "--clinic", "north")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["bob", "carol"]
    store.revoke_clinic("north")
    _, out, _ = cli(capsys, "user", "list", "--clinic", "north")
    assert "clinic revoked" in out.splitlines()[1]
    _, out, _ = cli(capsys, "user", "list", "--clinic", "south")
    assert out.strip() == "no user accounts for clinic 'south'"


def test_disable_enable_unlock_reset_totp(env: Path, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    cli(capsys, "user", "add", "bob", "--role", "auditor")
    store.create_session("h" * 64, "bob", 1.0, 4_000_000_000.0)
    code, out, _ = cli(capsys, "user", "disable", "bob")
    assert code == 0 and out.strip() == "User 'bob' is disabled (its sessions have ended)."
    user = store.get_user("bob")
    assert user is not None and user.disabled and store.get_session("h" * 64) is None
    code, out, _ = cli(capsys, "user", "enable", "bob")
    user = store.get_user("bob")
    assert code == 0 and user is not None and not user.disabled

    store.record_login_failure("bob", 4_000_000_000, 1, 900)
    code, out, _ = cli(capsys, "user", "unlock", "bob")
    user = store.get_user("bob")
    assert code == 0 and out.strip() == "User 'bob' is unlocked." and user is not None and user.locked_until is None

    store.set_totp_secret("bob", "JBSWY3DPEHPK3PXP")
    code, out, _ = cli(capsys, "user", "reset-totp", "bob")
    user = store.get_user("bob")
    assert code == 0 and user is not None and user.totp_secret is None


def test_reset_password(env: Path, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    cli(capsys, "user", "add", "bob", "--role", "auditor", "--password-file", password_file(env, PW))
    code, out, _ = cli(capsys, "user", "reset-password", "bob")
    assert code == 0 and "sessions have ended" in out
    new = out.splitlines()[-1].strip()
    user = store.get_user("bob")
    assert user is not None and passwords.verify_password(new, user.password_hash)
    assert not passwords.verify_password(PW, user.password_hash)

    code, out, _ = cli(capsys, "user", "reset-password", "bob", "--password-file", password_file(env, "Chosen-pass-42"))
    user = store.get_user("bob")
    assert code == 0 and "Chosen-pass-42" not in out
    assert user is not None and passwords.verify_password("Chosen-pass-42", user.password_hash)


def test_multi_line_password_file_is_refused(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "user", "add", "bob", "--role", "auditor",
                       "--password-file", password_file(env, PW + "\nsecond line\n"))
    assert code == 2 and "has more than one line" in err


def test_changes_are_logged_with_the_os_account(env: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="securepacs")
    monkeypatch.setenv("USER", "somebody-else")  # not trusted: the uid decides
    monkeypatch.setenv("SUDO_USER", "operator1")
    code, out, _ = cli(capsys, "user", "add", "bob", "--role", "auditor")
    assert code == 0
    me = pwd.getpwuid(os.getuid()).pw_name
    assert f"user 'bob' created (role 'auditor', clinic None) by 'cli:{me} (sudo by operator1)'" in caplog.text
    assert out.splitlines()[-1].strip() not in caplog.text  # the generated password is printed, never logged
