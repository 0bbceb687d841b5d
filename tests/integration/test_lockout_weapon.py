"""Lockout as a weapon, header trust and account edges, against the real archive (nginx -> Orthanc -> plugin,
the gateway, real TLS, the real CLI).

- Wrong passwords for the gateway's service account, through nginx or from a local process, never stop
  a clinic's C-GET; the internal routes are not reachable through nginx, and not to a local process that
  dresses up as nginx.
- One client address guessing the admin's password is throttled before the account locks; the real admin
  from another address still logs in. (The client address is the one nginx forwards: requests from
  127.0.0.x source addresses stand for different clients.)
- A loopback process cannot claim a client address with ``X-SecurePACS-Client-IP``.
- Admins cannot create or take over auditor accounts through REST; the CLI (root) can.
- Removing a second factor needs the password and a current code.
"""

from __future__ import annotations

import base64
import http.client
import json
import random
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from test_accounts_https import call

from securepacs.access import totp
from securepacs.access.accounts import LOGIN_FAILED
from securepacs.audit import iter_entries
from securepacs.client import get, store
from securepacs_tools.synth import StudySpec, write_study

pytestmark = pytest.mark.integration

CLIENT_IP_HEADER = "X-SecurePACS-Client-IP"
SECRET_HEADER = "X-SecurePACS-Proxy-Secret"
WRONG = "Wrong-password-12345"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def client_address() -> str:
    """A loopback source address of its own, standing for one more client (nginx forwards it)."""
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"


def https(archive, path: str, **kwargs: Any) -> tuple[int, http.client.HTTPMessage, Any]:
    """One HTTPS request through nginx, optionally from a chosen loopback source address (``source``)."""
    return call(archive, path, **kwargs)


def direct(archive, path: str, *, method: str = "GET", body: bytes = b"",
           headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One plain-HTTP request straight to Orthanc's loopback port, as any local process could send it."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    with socket.create_connection(("127.0.0.1", archive.http_port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def credential(path: Path) -> tuple[str, str]:
    fields = dict(line.split(": ", 1) for line in path.read_text().splitlines() if ": " in line)
    return fields["username"], fields["password"]


def login(archive, username: str, password: str, *, source: str | None = None, code: str | None = None):
    body = {"username": username, "password": password, **({"totp": code} if code else {})}
    return https(archive, "/securepacs/login", method="POST", body=body, source=source)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def archive(native_archive):
    return native_archive


@pytest.fixture(scope="module")
def gateway_account(archive) -> tuple[str, str]:
    return credential(archive.data_dir / "gateway" / "credential.txt")


@pytest.fixture(scope="module")
def proxy_secret(archive) -> str:
    path = archive.certs_dir / "proxy" / "secret"
    # (A stand-in where there is none, so that the tests still show what such an archive does.)
    return path.read_text().strip() if path.exists() else "no-proxy-secret-file-" + "0" * 22


OWNERSHIP = json.dumps({"clinic": "clinicA", "level": "STUDY",
                        "keys": {"StudyInstanceUID": ["1.2.826.0.1.3680043.10.1"]}}).encode()


# -- (1) the gateway's service account cannot be locked from outside -----------------------------------------


@pytest.fixture(scope="module")
def own_study(archive, tmp_path_factory) -> StudySpec:
    spec = StudySpec(seed="lockout-weapon", patient_id="LW-1", patient_name="LOCKOUT^WEAPON", slices=8,
                     rows=16, columns=16)
    root = tmp_path_factory.mktemp("lw-study")
    write_study(spec, root)
    summary = store(archive.conn(archive.clinics["clinicA"]), [root])
    assert summary.ok, summary.report()
    return spec


def test_wrong_passwords_for_the_service_account_never_stop_c_get(archive, gateway_account, own_study, tmp_path):
    """The reproduced attack: anonymous HTTPS requests with wrong passwords for the gateway's account.
    Before, 8 of them locked it and every C-GET failed for 15 minutes."""
    name, _ = gateway_account
    attacker = client_address()
    for _ in range(8):
        status, _, _ = https(archive, "/securepacs/api/me", headers={"Authorization": basic(name, WRONG)},
                             source=attacker)
        assert status == 403
    for _ in range(8):  # and the old fixed name, in case an attacker still guesses it
        assert https(archive, "/system", headers={"Authorization": basic("gateway", WRONG)}, source=attacker)[0] == 403
    # A local process with wrong passwords, straight on Orthanc's port: refused, but no lockout either.
    for _ in range(8):
        status, _ = direct(archive, "/securepacs/internal/ownership", method="POST", body=OWNERSHIP,
                           headers={"Authorization": basic(name, WRONG), "Content-Type": "application/json"})
        assert status == 403
    result = get(archive.conn(archive.clinics["clinicA"]), "STUDY", {"StudyInstanceUID": own_study.study_uid},
                 out_dir=tmp_path / "get")
    assert result.ok and result.files == 8, result.report("C-GET")


def test_the_service_account_name_is_not_guessable(gateway_account):
    name, _ = gateway_account
    assert name.startswith("svc-gateway-") and len(name) == len("svc-gateway-") + 12, name


# -- (2) internal routes: not through nginx, not to a process dressed up as nginx -----------------------------


def test_internal_routes_are_not_reachable_through_nginx(archive, gateway_account):
    auth = {"Authorization": basic(*gateway_account)}
    for path in ("/securepacs/internal/ownership", "/securepacs//internal/ownership",
                 "/securepacs/%69nternal/ownership", "/securepacs/internal"):
        status, _, _ = https(archive, path, method="POST", body={"clinic": "clinicA"}, headers=auth)
        assert status == 404, path


def test_internal_routes_refuse_a_local_process_posing_as_nginx(archive, gateway_account, proxy_secret):
    headers = {"Authorization": basic(*gateway_account), "Content-Type": "application/json"}
    # With nginx's client-address header but no secret: it claims to be proxied, so it is not internal.
    status, body = direct(archive, "/securepacs/internal/ownership", method="POST", body=OWNERSHIP,
                          headers={**headers, CLIENT_IP_HEADER: "203.0.113.50"})
    assert status == 403, body
    # With a guessed secret: a forgery.
    status, body = direct(archive, "/securepacs/internal/ownership", method="POST", body=OWNERSHIP,
                          headers={**headers, SECRET_HEADER: "x" * len(proxy_secret)})
    assert status == 403, body
    # Even nginx's own secret does not open it: whatever came through nginx is refused there.
    status, body = direct(archive, "/securepacs/internal/ownership", method="POST", body=OWNERSHIP,
                          headers={**headers, SECRET_HEADER: proxy_secret, CLIENT_IP_HEADER: "203.0.113.50"})
    assert status == 403, body
    # Control: the gateway's own request (no proxy headers) is answered.
    status, body = direct(archive, "/securepacs/internal/ownership", method="POST", body=OWNERSHIP, headers=headers)
    assert status == 200 and json.loads(body)["allowed"] is False, body


# -- (3) one address cannot lock the admin out --------------------------------------------------------------


def test_an_attacking_address_is_throttled_and_the_admin_still_logs_in(archive):
    admin, password = archive.admin_credential()
    attacker = client_address()
    answers = [login(archive, admin, WRONG, source=attacker) for _ in range(12)]
    # Four wrong passwords (one fewer than locks the account), then refused without any password check:
    # 403 (Orthanc 1.10's plugin API cannot send 429) naming the wait.
    assert [status for status, _, _ in answers] == [403] * 12
    assert [a["error"] for _, _, a in answers[:4]] == [answers[0][2]["error"]] * 4
    assert answers[0][2]["error"].startswith("login failed")
    for _, headers, answer in answers[4:]:
        assert answer["error"].startswith("too many failed attempts from this address"), answer
        assert int(headers["Retry-After"]) == answer["retry_after"] > 0
    status, _, answer = login(archive, admin, password, source=attacker)
    assert status == 403 and "retry_after" in answer, answer  # the right password is not checked either
    # HTTP Basic from that address is throttled too (Orthanc's filter can only answer 403).
    assert https(archive, "/system", headers={"Authorization": basic(admin, password)}, source=attacker)[0] == 403

    status, _, answer = login(archive, admin, password, source=client_address())
    assert status == 200, answer
    assert https(archive, "/system", headers={"Authorization": basic(admin, password)})[0] == 200
    user = next(u for u in archive.admin_json("/securepacs/api/users") if u["username"] == admin)
    assert user["locked"] is False and user["failed_logins"] == 0


def test_basic_guessing_from_one_address_does_not_lock_the_admin(archive):
    admin, password = archive.admin_credential()
    attacker = client_address()
    for _ in range(10):
        assert https(archive, "/system", headers={"Authorization": basic(admin, WRONG)}, source=attacker)[0] == 403
    assert https(archive, "/system", headers={"Authorization": basic(admin, password)},
                 source=client_address())[0] == 200


# -- (6) a loopback process cannot claim a client address ------------------------------------------------------


def _addresses_recorded_for(archive, user: str, timeout: float = 20) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        found = {p.get("network_access_point") for e in iter_entries(archive.data_dir / "audit" / "trail.jsonl")
                 if not e.is_checkpoint for p in e.body.get("participants", []) if p.get("user_id") == user}
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


@pytest.mark.parametrize("claimed", ["203.0.113.77", "not-an-ip"])
def test_a_forged_client_ip_header_is_not_the_client_address(archive, claimed):
    name = unique("forger")
    status, _ = direct(archive, "/system", headers={"Authorization": basic(name, WRONG), CLIENT_IP_HEADER: claimed})
    assert status == 403
    assert _addresses_recorded_for(archive, name) == {"127.0.0.1"}


def test_nginx_forwards_the_real_address_with_its_secret(archive, proxy_secret):
    name, source = unique("viaproxy"), client_address()
    status, _, _ = https(archive, "/system", headers={"Authorization": basic(name, WRONG), CLIENT_IP_HEADER: "1.2.3.4",
                                                      SECRET_HEADER: "x" * 43}, source=source)
    assert status == 403
    assert _addresses_recorded_for(archive, name) == {source}  # nginx replaced both of the client's headers
    assert proxy_secret not in archive.log_text()


# -- (4) separation of duties: auditors are managed on the host ------------------------------------------------


def test_admins_cannot_create_or_take_over_auditors_but_root_can(archive, tmp_path):
    admin = {"Authorization": basic(*archive.admin_credential())}
    name = unique("aud")
    status, _, answer = https(archive, "/securepacs/api/users", method="POST", body={"username": name,
                                                                                      "role": "auditor"},
                              headers=admin)
    assert status == 403 and answer["error"].startswith("auditor accounts are managed on the host only"), answer

    out = archive.cli("user", "add", name, "--role", "auditor").stdout  # root, on the host
    password = out.splitlines()[-1].strip()
    for action in ("reset-password", "unlock", "enable"):
        status, _, answer = https(archive, f"/securepacs/api/users/{name}/{action}", method="POST", headers=admin)
        assert status == 403, (action, answer)
    status, _, answer = https(archive, f"/securepacs/api/users/{name}/totp", method="DELETE", headers=admin)
    assert status == 403, answer
    assert login(archive, name, password, source=client_address())[0] == 200  # untouched

    # Disabling takes access away only: admins may. Enabling again takes root.
    assert https(archive, f"/securepacs/api/users/{name}/disable", method="POST", headers=admin)[0] == 200
    assert https(archive, f"/securepacs/api/users/{name}/enable", method="POST", headers=admin)[0] == 403
    archive.cli("user", "enable", name)
    pw_file = tmp_path / "pw"
    pw_file.write_text("Root-set-password-2026\n")
    archive.cli("user", "reset-password", name, "--password-file", str(pw_file))
    archive.cli("user", "unlock", name)
    assert login(archive, name, "Root-set-password-2026", source=client_address())[0] == 200


# -- (5) removing a second factor needs the password and a current code -----------------------------------


def test_removing_totp_needs_the_password_and_a_current_code(archive, tmp_path):
    name = unique("totp")
    pw_file = tmp_path / "pw"
    pw_file.write_text("Totp-user-password-2026\n")
    archive.cli("user", "add", name, "--role", "physician", "--clinic", "clinicA", "--password-file", str(pw_file))
    password = "Totp-user-password-2026"
    auth = {"Authorization": basic(name, password)}
    status, _, enrol = https(archive, "/securepacs/api/me/totp", method="POST", body={"password": password},
                             headers=auth)
    assert status == 200, enrol
    secret = enrol["secret"]
    # Each code is good once, within one step either side: confirm with the last step's, log in with this one's,
    # and the next step's is left for the removal.
    status, _, _ = https(archive, "/securepacs/api/me/totp/confirm", method="POST",
                         body={"code": totp.code_at(secret, time.time() - totp.STEP_SECONDS)}, headers=auth)
    assert status == 200
    status, _, answer = login(archive, name, password, code=totp.code_at(secret, time.time()))
    assert status == 200, answer
    session = {"Authorization": f"Bearer {answer['token']}"}

    # The session alone is not enough (and Orthanc passes no body with a DELETE: it names the way to do it).
    status, _, answer = https(archive, "/securepacs/api/me/totp", method="DELETE", headers=session)
    assert status == 400 and answer["error"].startswith("removing the second factor needs the password and a "
                                                        "current code"), answer
    status, _, answer = https(archive, "/securepacs/api/me/totp/remove", method="POST", body={"password": password},
                              headers=session)
    assert (status, answer) == (400, {"error": "missing field 'code': expected ['code', 'password']"})
    status, _, me = https(archive, "/securepacs/api/me", headers=session)
    assert status == 200 and me["totp"] is True

    code = totp.code_at(secret, time.time() + totp.STEP_SECONDS)
    status, _, answer = https(archive, "/securepacs/api/me/totp/remove", method="POST",
                              body={"password": "Not-the-password-1", "code": code}, headers=session)
    assert (status, answer["error"]) == (403, LOGIN_FAILED), answer
    status, _, answer = https(archive, "/securepacs/api/me/totp/remove", method="POST",
                              body={"password": password, "code": code}, headers=session)
    assert status == 200 and answer["totp"] is False, answer


# -- finding 3: a fresh session at every login ---------------------------------------------------------------


def test_login_ends_the_presented_session_and_sets_a_fresh_cookie(archive, tmp_path):
    name = unique("fix")
    pw_file = tmp_path / "pw"
    pw_file.write_text("Fixation-password-2026\n")
    archive.cli("user", "add", name, "--role", "physician", "--clinic", "clinicA", "--password-file", str(pw_file))
    status, _, first = login(archive, name, "Fixation-password-2026")
    assert status == 200
    old = first["token"]
    status, headers, second = https(archive, "/securepacs/login", method="POST",
                                    body={"username": name, "password": "Fixation-password-2026"},
                                    headers={"Cookie": f"securepacs_session={old}"})
    assert status == 200 and second["token"] != old
    assert headers["Set-Cookie"].startswith(f"securepacs_session={second['token']};")
    assert https(archive, "/securepacs/api/me", headers={"Cookie": f"securepacs_session={old}"})[0] == 403
    assert https(archive, "/securepacs/api/me", headers={"Authorization": f"Bearer {second['token']}"})[0] == 200
