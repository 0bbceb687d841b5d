"""Accounts end to end against the real archive (nginx -> Orthanc -> plugin), with the real CLI.

User creation by CLI and by the admin REST API, login to a session (bearer token and cookie), logout,
lockout and unlock, the password policy, TOTP enrolment and login with a code, password change, disabled
accounts, and the idle logoff (with a second archive whose idle limit is a few seconds).
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import shutil
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_archive

from securepacs.access import totp

pytestmark = pytest.mark.integration

# Every denial is exactly 403: Orthanc 1.10's request filter cannot answer 401 (it would need a Basic
# challenge, which makes browsers prompt), and LoginFailed answers 403 for the same reason.
REFUSED = (403,)
SECRETS: list[str] = []  # every password and token used here: none may appear in the archive's log


def call(archive, path: str, *, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None,
         auth: tuple[str, str] | None = None, token: str | None = None,
         source: str | None = None) -> tuple[int, http.client.HTTPMessage, Any]:
    """One HTTPS request; a dict/list body is sent as JSON; the answer is parsed as JSON when it is JSON.
    ``source``: a loopback address to connect from (nginx forwards it as the client's address)."""
    all_headers = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    if auth:
        all_headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    ctx = ssl.create_default_context(cafile=str(archive.ca_cert))
    conn = http.client.HTTPSConnection(archive.host, archive.https_port, context=ctx, timeout=30,
                                       source_address=(source, 0) if source else None)
    try:
        conn.request(method, path, body=data, headers=all_headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        parsed: Any = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw
    return resp.status, resp.headers, parsed


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def cli_add(archive, name: str, role: str, clinic: str | None = None, password_file: Path | None = None) -> str | None:
    args = ["user", "add", name, "--role", role]
    if clinic:
        args += ["--clinic", clinic]
    if password_file:
        args += ["--password-file", str(password_file)]
    out = archive.cli(*args).stdout
    return out.splitlines()[-1].strip() if "Generated password" in out else None


def login(archive, username: str, password: str, code: str | None = None,
          source: str | None = None) -> tuple[int, Any, str | None]:
    body = {"username": username, "password": password}
    if code:
        body["totp"] = code
    status, headers, answer = call(archive, "/securepacs/login", method="POST", body=body, source=source)
    SECRETS.append(password)
    if status == 200:
        SECRETS.append(answer["token"])
    return status, answer, headers.get("Set-Cookie")


def rest_add(archive, name: str, role: str = "admin", password: str | None = None) -> str:
    # (Admins cannot create auditors through REST: separation of duties, see test_lockout_weapon.py.)
    body = {"username": name, "role": role}
    if password:
        body["password"] = password
    status, _, answer = call(archive, "/securepacs/api/users", method="POST", body=body,
                             auth=archive.admin_credential())
    assert status == 200, answer
    SECRETS.append(password or answer["password"])
    return password or answer["password"]


@pytest.fixture(scope="module")
def archive(native_archive):
    return native_archive


# -- creation and sessions ---------------------------------------------------------------------------------


def test_cli_user_logs_in_and_uses_bearer_and_cookie(archive):
    name = unique("phys")
    password = cli_add(archive, name, "physician", "clinicA")
    assert password, "the CLI printed no generated password"

    status, answer, cookie = login(archive, name, password)
    assert status == 200, answer
    token = answer["token"]
    assert answer["idle_seconds"] == 900
    assert cookie and cookie.startswith(f"securepacs_session={token};")
    for attribute in ("Path=/", "Secure", "HttpOnly", "SameSite=Strict"):
        assert attribute in cookie, cookie

    status, _, me = call(archive, "/securepacs/api/me", token=token)
    assert status == 200, me
    assert (me["username"], me["role"], me["clinic"]) == (name, "physician", "clinicA")
    assert me["authenticated_by"] == "bearer"
    status, _, me = call(archive, "/securepacs/api/me", headers={"Cookie": f"securepacs_session={token}"})
    assert status == 200 and me["authenticated_by"] == "cookie"

    # A cookie alone cannot log out (or do anything unsafe): the CSRF header is required.
    status, _, _ = call(archive, "/securepacs/logout", method="POST", headers={"Cookie": f"securepacs_session={token}"})
    assert status in REFUSED
    status, _, _ = call(archive, "/securepacs/api/me", token=token)
    assert status == 200
    status, headers, answer = call(archive, "/securepacs/logout", method="POST",
                                   headers={"Cookie": f"securepacs_session={token}", "X-Requested-With": "SecurePACS"})
    assert status == 200, answer
    assert "Max-Age=0" in headers.get("Set-Cookie", "")
    for auth in ({"token": token}, {"headers": {"Cookie": f"securepacs_session={token}"}}):
        status, _, _ = call(archive, "/securepacs/api/me", **auth)
        assert status in REFUSED


def test_admin_rest_creates_users_and_only_admins_may(archive):
    name = unique("audit")
    password = cli_add(archive, name, "auditor")
    status, answer, _ = login(archive, name, password)
    assert status == 200, answer

    # The new auditor (session) and a physician (Basic) are no admins.
    status, _, _ = call(archive, "/securepacs/api/users", token=answer["token"])
    assert status in REFUSED
    status, _, _ = call(archive, "/securepacs/api/users", method="POST",
                        body={"username": unique("x"), "role": "admin"}, token=answer["token"])
    assert status in REFUSED

    status, _, users = call(archive, "/securepacs/api/users", auth=archive.admin_credential())
    assert status == 200
    mine = [u for u in users if u["username"] == name]
    assert mine and mine[0]["role"] == "auditor" and mine[0]["status"] == "active"
    assert all("password_hash" not in u for u in users)

    status, _, answer = call(archive, "/securepacs/api/users", method="POST",
                             body={"username": name, "role": "admin"}, auth=archive.admin_credential())
    assert status == 409 and f"user {name!r} already exists" in answer["error"]


def test_weak_passwords_are_refused_with_the_rule(archive, tmp_path):
    status, _, answer = call(archive, "/securepacs/api/users", method="POST",
                             body={"username": unique("weak"), "role": "admin", "password": "short-1"},
                             auth=archive.admin_credential())
    assert status == 400
    assert answer == {"error": "password too short: expected at least 12 characters"}

    weak = tmp_path / "weak.pw"
    weak.write_text("alllowercasepw\n")  # 14 characters, one class
    res = archive.cli("user", "add", unique("weak"), "--role", "auditor", "--password-file", str(weak), check=False)
    assert res.returncode == 2
    assert "password too simple: expected at least 3 of lower-case, upper-case, digits" in res.stderr

    name = unique("chg")
    password = rest_add(archive, name)
    status, _, answer = call(archive, "/securepacs/api/me/password", method="POST",
                             body={"current": password, "new": f"{name}-Pass-1"}, auth=(name, password))
    assert status == 400 and f"password contains the user name {name!r}" in answer["error"]


# -- lockout -----------------------------------------------------------------------------------------------


def test_wrong_passwords_lock_until_an_admin_unlocks(archive):
    name = unique("lock")
    password = rest_add(archive, name, password="Right-password-123")
    for i in range(5):  # from several addresses: one address alone is throttled before it can lock
        status, answer, _ = login(archive, name, "Wrong-password-123", source=f"127.0.77.{10 + i // 2}")
        assert status == 403
        assert answer["error"].startswith("login failed")
    # Locked: the right password no longer works, neither by login nor by Basic.
    status, answer, _ = login(archive, name, password)
    assert status == 403
    status, _, _ = call(archive, "/securepacs/api/me", auth=(name, password))
    assert status in REFUSED
    listed = archive.cli("user", "list").stdout
    assert re.search(rf"^{re.escape(name)}\s+admin\s+-\s+locked until ", listed, re.MULTILINE), listed

    archive.cli("user", "unlock", name)
    status, answer, _ = login(archive, name, password)
    assert status == 200, answer


def test_admin_rest_unlocks_and_resets_passwords(archive):
    name = unique("reset")
    password = rest_add(archive, name)
    for i in range(5):
        login(archive, name, "Wrong-password-123", source=f"127.0.78.{10 + i // 2}")
    status, _, answer = call(archive, f"/securepacs/api/users/{name}/unlock", method="POST",
                             auth=archive.admin_credential())
    assert status == 200 and answer["user"]["locked"] is False
    status, _, answer = call(archive, f"/securepacs/api/users/{name}/reset-password", method="POST",
                             auth=archive.admin_credential())
    assert status == 200
    assert login(archive, name, password)[0] == 403
    assert login(archive, name, answer["password"])[0] == 200


# -- TOTP ----------------------------------------------------------------------------------------------------


def test_totp_enrolment_then_login_needs_the_code(archive):
    name = unique("totp")
    password = rest_add(archive, name)
    status, _, enrol = call(archive, "/securepacs/api/me/totp", method="POST", body={"password": password},
                            auth=(name, password))
    assert status == 200, enrol
    secret = enrol["secret"]
    assert enrol["otpauth_uri"].startswith("otpauth://totp/") and f"secret={secret}" in enrol["otpauth_uri"]
    status, _, answer = call(archive, "/securepacs/api/me/totp/confirm", method="POST",
                             body={"code": totp.code_at(secret, time.time())}, auth=(name, password))
    assert status == 200 and answer["totp"] is True, answer

    status, answer, _ = login(archive, name, password)
    assert status == 403 and answer.get("totp_required") is True, answer
    status, _, _ = call(archive, "/securepacs/api/me", auth=(name, password))
    assert status in REFUSED  # Basic no longer suffices
    # The confirming code is spent; the next step's code is within the accepted window.
    status, answer, _ = login(archive, name, password, totp.code_at(secret, time.time() + totp.STEP_SECONDS))
    assert status == 200, answer
    status, _, me = call(archive, "/securepacs/api/me", token=answer["token"])
    assert status == 200 and me["totp"] is True

    # Lost phone: the admin removes the factor, the password works alone again.
    archive.cli("user", "reset-totp", name)
    status, _, me = call(archive, "/securepacs/api/me", auth=(name, password))
    assert status == 200 and me["totp"] is False


# -- password change, disabled accounts ------------------------------------------------------------------


def test_password_change_ends_sessions(archive):
    name = unique("pwchg")
    password = rest_add(archive, name)
    status, answer, _ = login(archive, name, password)
    token = answer["token"]
    new = "Changed-" + uuid.uuid4().hex[:12]
    status, _, answer = call(archive, "/securepacs/api/me/password", method="POST",
                             body={"current": password, "new": new}, token=token)
    assert status == 200, answer
    assert call(archive, "/securepacs/api/me", token=token)[0] in REFUSED
    assert login(archive, name, password)[0] == 403
    assert login(archive, name, new)[0] == 200


def test_disabled_user_is_refused_everywhere(archive):
    name = unique("dis")
    password = rest_add(archive, name)
    token = login(archive, name, password)[1]["token"]
    archive.cli("user", "disable", name)
    assert login(archive, name, password)[0] == 403
    assert call(archive, "/securepacs/api/me", auth=(name, password))[0] in REFUSED
    assert call(archive, "/securepacs/api/me", token=token)[0] in REFUSED
    assert re.search(rf"^{re.escape(name)}\s+admin\s+-\s+disabled", archive.cli("user", "list").stdout, re.M)
    archive.cli("user", "enable", name)
    assert login(archive, name, password)[0] == 200


def test_no_password_or_token_reaches_the_log(archive):
    assert len(SECRETS) > 10, "the tests above did not run"
    log = archive.log_text()
    assert "authentication failed for user" in log  # the log these tests wrote to (warnings are shown)
    leaked = [s for s in SECRETS if s in log]
    assert not leaked, f"{len(leaked)} password(s)/token(s) in the archive log"


# -- idle logoff ---------------------------------------------------------------------------------------------

IDLE_SECONDS = 4


@pytest.fixture(scope="module")
def short_idle_archive() -> Iterator[Any]:
    arc = make_archive("securepacs-idle-")
    arc.env["SECUREPACS_SESSION_IDLE_SECONDS"] = str(IDLE_SECONDS)
    arc.start()
    try:
        yield arc
    finally:
        rc = arc.stop()
        shutil.rmtree(arc.root, ignore_errors=True)
        assert rc == 0, "the short-idle archive did not stop cleanly"


def test_idle_sessions_are_logged_off(short_idle_archive):
    arc = short_idle_archive
    runtime = json.loads((arc.data_dir / "config" / "10-runtime.json").read_text())
    assert runtime["SecurePACS"].get("SessionIdleSeconds") == IDLE_SECONDS, (
        "deploy must write SECUREPACS_SESSION_IDLE_SECONDS to SecurePACS.SessionIdleSeconds")
    name = unique("idle")
    password = rest_add(arc, name)
    status, answer, _ = login(arc, name, password)
    assert status == 200 and answer["idle_seconds"] == IDLE_SECONDS
    token = answer["token"]
    # Activity keeps the session alive well past the idle limit...
    for _ in range(4):
        time.sleep(IDLE_SECONDS / 2)
        assert call(arc, "/securepacs/api/me", token=token)[0] == 200
    # ...and a pause longer than the limit ends it.
    time.sleep(IDLE_SECONDS + 1.5)
    assert call(arc, "/securepacs/api/me", token=token)[0] in REFUSED
