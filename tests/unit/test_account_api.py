# ruff: noqa: F811  (pytest fixtures imported from _accounts_env are parameters here)
"""The accounts REST API, called the way the plugin's route registration calls it: the URI is matched
against ``routes()``, the request authenticated with ``Accounts.authenticate`` and the principal passed in."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

# The shared fixtures are imported by name; tests receive them as parameters of the same names.
from _accounts_env import ADMIN_PW, PW, Clock, accounts, clock, fast_hash, store  # noqa: F401

from securepacs.access import account_api, passwords, totp
from securepacs.access.accounts import LOGIN_FAILED, Accounts
from securepacs.access.principal import Principal
from securepacs.store.database import Store
from securepacs.web.messages import Request, Response

JSON = {"content-type": "application/json"}


class Client:
    def __init__(self, accounts: Accounts, store: Store):
        self.accounts = accounts
        self.routes = account_api.routes(accounts, store)

    def call(self, method: str, uri: str, body: Any = None, headers: dict[str, str] | None = None,
             get: dict[str, str] | None = None, principal: Principal | str | None = "auth") -> Response:
        headers = dict(headers or {})
        raw = b""
        if body is not None:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers = {**JSON, **headers}
        for pattern, access, handler in self.routes:
            match = re.fullmatch(pattern, uri)
            if match:
                if principal == "auth":
                    principal = None if access == "anonymous" else self.accounts.authenticate(method, headers).principal
                req = Request(method, uri, match.groups(), headers, get or {}, raw, "203.0.113.9")
                return handler(req, principal)  # type: ignore[arg-type]
        raise AssertionError(f"no route for {uri!r}")


def data(resp: Response) -> Any:
    return json.loads(resp.body)


def basic(username: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


ADMIN = basic("alice", ADMIN_PW)
BOB = basic("bob", PW)


@pytest.fixture
def client(accounts: Accounts, store: Store) -> Client:
    return Client(accounts, store)


def login(client: Client, username: str = "bob", password: str = PW, **extra: str) -> Response:
    return client.call("POST", "/securepacs/login", {"username": username, "password": password, **extra})


# -- routes ----------------------------------------------------------------------------------------------
def test_route_table() -> None:
    table = {(p, a) for p, a, _ in account_api.routes(None, None)}  # type: ignore[arg-type]
    assert ("/securepacs/login", "anonymous") in table
    assert {a for p, a in table if p.startswith("/securepacs/api/users")} == {"admin"}
    assert {a for p, a in table if p.startswith(("/securepacs/api/me", "/securepacs/logout"))} == {"authenticated"}


@pytest.mark.parametrize(("uri", "pattern"), [
    ("/securepacs/api/users/bob", r"/securepacs/api/users/([^/]+)"),
    ("/securepacs/api/users/bob/disable", r"/securepacs/api/users/([^/]+)/(disable|enable|reset-password|unlock)"),
    ("/securepacs/api/users/bob/totp", r"/securepacs/api/users/([^/]+)/totp"),
    ("/securepacs/api/me/totp/confirm", "/securepacs/api/me/totp/confirm"),
])
def test_each_uri_matches_exactly_one_route(uri: str, pattern: str) -> None:
    matching = [p for p, _, _ in account_api.routes(None, None) if re.fullmatch(p, uri)]  # type: ignore[arg-type]
    assert matching == [pattern]


@pytest.mark.parametrize("uri", ["/securepacs/api/users/bob/delete", "/securepacs/api/users/bob/disable/x",
                                 "/securepacs/api/me/x", "/securepacs/login/x"])
def test_other_uris_match_no_route(uri: str) -> None:
    assert not [p for p, _, _ in account_api.routes(None, None) if re.fullmatch(p, uri)]  # type: ignore[arg-type]


# -- login / logout --------------------------------------------------------------------------------------
def test_login_answers_a_token_and_a_strict_cookie(client: Client, clock: Clock) -> None:
    resp = login(client)
    assert resp.status == 200
    body = data(resp)
    assert body["username"] == "bob" and body["idle_seconds"] == 900
    assert body["expires_at"] == "2023-11-15T10:13:20+00:00"  # 12 h after the fake now
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith(f"securepacs_session={body['token']}; ")
    attributes = {a.strip() for a in cookie.split(";")[1:]}
    assert {"Path=/", "Secure", "HttpOnly", "SameSite=Strict", "Max-Age=43200"} == attributes
    assert resp.headers["Cache-Control"] == "no-store"
    assert client.call("GET", "/securepacs/api/me", headers=bearer(body["token"])).status == 200


def test_login_failure_is_a_generic_403(client: Client) -> None:
    for username, password in (("bob", "wrong"), ("nobody", PW)):
        resp = login(client, username, password)
        assert (resp.status, data(resp)) == (403, {"error": LOGIN_FAILED})
        assert "Set-Cookie" not in resp.headers


def test_login_tells_a_form_to_ask_for_the_code(client: Client, accounts: Accounts, clock: Clock) -> None:
    secret = accounts.begin_totp("bob", PW).secret
    accounts.confirm_totp("bob", totp.code_at(secret, clock.now))
    clock.now += 30
    resp = login(client)
    assert resp.status == 403 and data(resp)["totp_required"] is True
    resp = login(client, totp=totp.code_at(secret, clock.now))
    assert resp.status == 200


@pytest.mark.parametrize(("body", "headers", "message"), [
    (b'{"username": "bob", "password": "x"}', {"content-type": "text/plain"},
     "Content-Type 'text/plain' is not accepted: expected 'application/json'"),
    (b'{"username": "bob", "password": "x"}', {"content-type": ""}, "Content-Type '' is not accepted"),
    (b"not json", {}, "request body is not a JSON object"),
    (b'["bob"]', {}, "request body is not a JSON object"),
    (b'{"username": "bob"}', {}, "missing field 'password'"),
    (b'{"username": "bob", "password": "x", "otp": "1"}', {}, "unknown field 'otp': expected only ['password', "
                                                             "'totp', 'username']"),
    (b'{"username": 7, "password": "x"}', {}, "field 'username' = 7 is invalid: expected a string"),
    (b'{"username": null, "password": "x"}', {}, "field 'username' = None is invalid: expected a string"),
    (b"{" + b" " * 70000 + b"}", {}, "request body of 70002 bytes is too large: expected at most 65536"),
])
def test_malformed_login_requests_are_400_and_named(client: Client, body: bytes, headers: dict[str, str],
                                                    message: str) -> None:
    resp = client.call("POST", "/securepacs/login", body, headers)
    assert resp.status == 400
    assert message in data(resp)["error"]


def test_wrong_method_is_405_with_allow(client: Client) -> None:
    resp = client.call("GET", "/securepacs/login")
    assert resp.status == 405 and resp.headers["Allow"] == "POST"
    resp = client.call("PUT", "/securepacs/api/users", {}, ADMIN)
    assert resp.status == 405 and resp.headers["Allow"] == "GET, POST"


def test_logout(client: Client) -> None:
    token = data(login(client))["token"]
    resp = client.call("POST", "/securepacs/logout", headers=bearer(token))
    assert resp.status == 200 and data(resp) == {"logged_out": True}
    assert resp.headers["Set-Cookie"].startswith("securepacs_session=; ") and "Max-Age=0" in resp.headers["Set-Cookie"]
    assert client.call("GET", "/securepacs/api/me", headers=bearer(token)).status == 403


def test_logout_with_the_cookie_needs_the_csrf_header(client: Client) -> None:
    token = data(login(client))["token"]
    cookie = {"cookie": f"securepacs_session={token}"}
    assert client.call("POST", "/securepacs/logout", headers=cookie).status == 403
    assert client.call("POST", "/securepacs/logout", headers={**cookie, "x-requested-with": "SecurePACS"}).status == 200
    assert client.call("GET", "/securepacs/api/me", headers=cookie).status == 403


def test_logout_with_basic_has_no_session(client: Client) -> None:
    resp = client.call("POST", "/securepacs/logout", headers=BOB)
    assert resp.status == 400 and "no session to end" in data(resp)["error"]


# -- own account -----------------------------------------------------------------------------------------
def test_me(client: Client) -> None:
    resp = client.call("GET", "/securepacs/api/me", headers=BOB)
    assert data(resp) == {"username": "bob", "role": "physician", "clinic": "north", "totp": False,
                          "password_changed_at": None, "authenticated_by": "basic", "session": None}
    token = data(login(client))["token"]
    me = data(client.call("GET", "/securepacs/api/me", headers=bearer(token)))
    assert me["authenticated_by"] == "bearer"
    assert me["session"] == {"expires_at": "2023-11-15T10:13:20+00:00", "idle_seconds": 900}


@pytest.mark.parametrize(("method", "uri"), [("GET", "/securepacs/api/me"), ("POST", "/securepacs/api/me/password"),
                                             ("POST", "/securepacs/logout"), ("DELETE", "/securepacs/api/me/totp"),
                                             ("POST", "/securepacs/api/me/totp/remove")])
def test_own_account_routes_need_a_principal(client: Client, method: str, uri: str) -> None:
    resp = client.call(method, uri, headers={})
    assert (resp.status, data(resp)) == (403, {"error": "authentication required"})


def test_change_password(client: Client) -> None:
    resp = client.call("POST", "/securepacs/api/me/password", {"current": PW, "new": "New-password-4321"}, BOB)
    assert resp.status == 200 and data(resp)["password_changed"] is True
    assert "Max-Age=0" in resp.headers["Set-Cookie"]
    assert login(client).status == 403
    assert login(client, password="New-password-4321").status == 200


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"current": "wrong", "new": "New-password-4321"}, 403, LOGIN_FAILED),
    ({"current": PW, "new": "weak"}, 400, "password too short: expected at least 12 characters"),
    ({"current": PW, "new": "bob-is-best-1234"}, 400, "password contains the user name 'bob'"),
    ({"current": PW}, 400, "missing field 'new'"),
])
def test_change_password_refusals(client: Client, body: dict[str, str], status: int, message: str) -> None:
    resp = client.call("POST", "/securepacs/api/me/password", body, BOB)
    assert resp.status == status and message in data(resp)["error"]
    assert login(client).status == 200  # unchanged


def test_totp_enrolment_flow(client: Client, clock: Clock) -> None:
    resp = client.call("POST", "/securepacs/api/me/totp", {"password": PW}, BOB)
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    body = data(resp)
    assert body["otpauth_uri"].startswith("otpauth://totp/") and body["secret"] in body["otpauth_uri"]
    resp = client.call("POST", "/securepacs/api/me/totp/confirm", {"code": "000000"}, BOB)
    if totp.code_at(body["secret"], clock.now) != "000000":
        assert resp.status == 400 and "code does not match" in data(resp)["error"]
    resp = client.call("POST", "/securepacs/api/me/totp/confirm", {"code": totp.code_at(body["secret"], clock.now)},
                       BOB)
    assert resp.status == 200 and data(resp)["totp"] is True
    # From now on: no Basic, and login needs the code.
    assert client.call("GET", "/securepacs/api/me", headers=BOB).status == 403
    clock.now += 30
    token = data(login(client, totp=totp.code_at(body["secret"], clock.now)))["token"]
    assert data(client.call("GET", "/securepacs/api/me", headers=bearer(token)))["totp"] is True

    # Removing it needs the password and a current code: the session alone is not enough (and Orthanc passes
    # no body with a DELETE, so that is refused with the way to do it).
    resp = client.call("DELETE", "/securepacs/api/me/totp", headers=bearer(token))
    assert (resp.status, data(resp)) == (400, {"error": account_api.TOTP_REMOVAL})
    resp = client.call("POST", "/securepacs/api/me/totp/remove", {"password": PW}, bearer(token))
    assert (resp.status, data(resp)) == (400, {"error": "missing field 'code': expected ['code', 'password']"})
    clock.now += 30
    code = totp.code_at(body["secret"], clock.now)
    resp = client.call("POST", "/securepacs/api/me/totp/remove", {"password": "Wrong-password-1", "code": code},
                       bearer(token))
    assert (resp.status, data(resp)) == (403, {"error": LOGIN_FAILED})
    resp = client.call("POST", "/securepacs/api/me/totp/remove", {"password": PW, "code": code}, bearer(token))
    assert resp.status == 200 and data(resp)["totp"] is False
    assert client.call("GET", "/securepacs/api/me", headers=BOB).status == 200


def test_totp_begin_needs_the_password(client: Client) -> None:
    resp = client.call("POST", "/securepacs/api/me/totp", {"password": "wrong"}, BOB)
    assert resp.status == 403


# -- admin -----------------------------------------------------------------------------------------------
ADMIN_CALLS = [
    ("GET", "/securepacs/api/users", None),
    ("POST", "/securepacs/api/users", {"username": "eve", "role": "admin"}),
    ("GET", "/securepacs/api/users/bob", None),
    ("POST", "/securepacs/api/users/bob/disable", None),
    ("POST", "/securepacs/api/users/alice/reset-password", None),
    ("POST", "/securepacs/api/users/bob/unlock", None),
    ("DELETE", "/securepacs/api/users/bob/totp", None),
]


@pytest.mark.parametrize(("method", "uri", "body"), ADMIN_CALLS)
@pytest.mark.parametrize("principal", [None, Principal("bob", "physician", "north"),
                                       Principal("audrey", "auditor", None),
                                       Principal("CT", "clinic-device", "north", via="dicom")])
def test_admin_routes_refuse_everyone_else(client: Client, store: Store, method: str, uri: str, body: Any,
                                           principal: Principal | None) -> None:
    # The handler checks the role itself, whatever principal the registration hands it.
    resp = client.call(method, uri, body, principal=principal)
    assert resp.status == 403
    assert store.get_user("eve") is None
    user = store.get_user("bob")
    assert user is not None and not user.disabled


def test_list_and_get_users(client: Client, store: Store) -> None:
    users = data(client.call("GET", "/securepacs/api/users", headers=ADMIN))
    assert [u["username"] for u in users] == ["alice", "bob"]
    assert all("password_hash" not in u for u in users)
    assert [u["username"] for u in data(client.call("GET", "/securepacs/api/users", headers=ADMIN,
                                                    get={"clinic": "north"}))] == ["bob"]
    bob = data(client.call("GET", "/securepacs/api/users/bob", headers=ADMIN))
    assert (bob["role"], bob["clinic"], bob["status"]) == ("physician", "north", "active")
    store.revoke_clinic("north")
    assert data(client.call("GET", "/securepacs/api/users/bob", headers=ADMIN))["status"] == "clinic revoked"
    resp = client.call("GET", "/securepacs/api/users/nobody", headers=ADMIN)
    assert (resp.status, data(resp)) == (404, {"error": "unknown user 'nobody'"})
    resp = client.call("GET", "/securepacs/api/users/Bad%20Name", headers=ADMIN)
    assert resp.status == 400 and "user name 'Bad%20Name' is invalid" in data(resp)["error"]


def test_create_user_with_a_generated_password(client: Client) -> None:
    resp = client.call("POST", "/securepacs/api/users", {"username": "carol", "role": "clinic-device",
                                                         "clinic": "north"}, ADMIN)
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    body = data(resp)
    assert body["user"]["username"] == "carol" and body["user"]["clinic"] == "north"
    assert login(client, "carol", body["password"]).status == 200


def test_create_user_with_a_given_password(client: Client) -> None:
    body = data(client.call("POST", "/securepacs/api/users", {"username": "audrey", "role": "admin",
                                                              "password": "Auditor-pass-99", "clinic": None}, ADMIN))
    assert "password" not in body
    assert login(client, "audrey", "Auditor-pass-99").status == 200


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"username": "bob", "role": "admin"}, 409, "user 'bob' already exists"),
    ({"username": "carol", "role": "admin", "password": "weak"}, 400, "password too short"),
    ({"username": "carol", "role": "root"}, 400, "role 'root' is invalid"),
    ({"username": "carol", "role": "physician"}, 400, "role 'physician' acts for one clinic"),
    ({"username": "carol", "role": "physician", "clinic": "south"}, 400, "clinic 'south' is not enrolled"),
    ({"username": "carol smith", "role": "auditor"}, 400, "user name 'carol smith' is invalid"),
    ({"username": "BOB", "role": "admin"}, 409, "user 'BOB' already exists as 'bob'"),
    ({"username": "carol"}, 400, "missing field 'role'"),
    ({"username": "carol", "role": "auditor", "admin": "yes"}, 400, "unknown field 'admin'"),
])
def test_create_user_refusals(client: Client, body: dict[str, str], status: int, message: str) -> None:
    resp = client.call("POST", "/securepacs/api/users", body, ADMIN)
    assert resp.status == status
    assert message in data(resp)["error"]


def test_disable_enable_unlock_reset(client: Client, store: Store) -> None:
    token = data(login(client))["token"]
    resp = client.call("POST", "/securepacs/api/users/bob/disable", headers=ADMIN)
    assert resp.status == 200 and data(resp)["user"]["status"] == "disabled"
    assert client.call("GET", "/securepacs/api/me", headers=bearer(token)).status == 403
    assert login(client).status == 403
    assert data(client.call("POST", "/securepacs/api/users/bob/enable", headers=ADMIN))["user"]["disabled"] is False
    assert login(client).status == 200

    store.record_login_failure("bob", client.accounts.now(), 1, 900)  # locked (from several addresses)
    assert data(client.call("GET", "/securepacs/api/users/bob", headers=ADMIN))["locked"] is True
    assert login(client).status == 403
    assert data(client.call("POST", "/securepacs/api/users/bob/unlock", headers=ADMIN))["user"]["locked"] is False
    assert login(client).status == 200

    resp = client.call("POST", "/securepacs/api/users/bob/reset-password", headers=ADMIN)
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    assert login(client).status == 403
    assert login(client, password=data(resp)["password"]).status == 200


AUDITOR_ACTIONS = [
    ("POST", "/securepacs/api/users", {"username": "eve", "role": "auditor"}, "add"),
    ("POST", "/securepacs/api/users/audrey/enable", None, "enable"),
    ("POST", "/securepacs/api/users/audrey/reset-password", None, "reset-password"),
    ("POST", "/securepacs/api/users/audrey/unlock", None, "unlock"),
    ("DELETE", "/securepacs/api/users/audrey/totp", None, "reset-totp"),
]


@pytest.mark.parametrize(("method", "uri", "body", "action"), AUDITOR_ACTIONS)
def test_admins_cannot_create_or_take_over_auditors(client: Client, store: Store, method: str, uri: str,
                                                    body: Any, action: str) -> None:
    """Separation of duties: admins cannot read the trail, so they must not make themselves an auditor."""
    store.add_user("audrey", passwords.hash_password("Auditor-pass-99"), "auditor")
    store.set_totp_secret("audrey", totp.new_secret())
    before = store.get_user("audrey")
    resp = client.call(method, uri, body, ADMIN)
    assert resp.status == 403
    assert data(resp)["error"].startswith("auditor accounts are managed on the host only")
    assert f"`securepacs user {action} ...` run as root" in data(resp)["error"]
    assert store.get_user("audrey") == before and store.get_user("eve") is None
    # Disabling only takes access away: an admin may still do that (e.g. a compromised auditor account).
    assert client.call("POST", "/securepacs/api/users/audrey/disable", headers=ADMIN).status == 200


def test_admins_cannot_manage_service_accounts(client: Client, store: Store) -> None:
    store.add_user("svc-gateway-0123456789ab", passwords.hash_password("Gateway-pass-99"), "gateway")
    for action in ("disable", "reset-password", "unlock"):
        resp = client.call("POST", f"/securepacs/api/users/svc-gateway-0123456789ab/{action}", headers=ADMIN)
        assert resp.status == 403 and "service account" in data(resp)["error"]


def test_login_ends_a_presented_session_and_sets_a_new_cookie(client: Client) -> None:
    """Session fixation: whatever session the client presents at login ends; the answer's cookie is new."""
    old = data(login(client))["token"]
    resp = client.call("POST", "/securepacs/login", {"username": "bob", "password": PW},
                       {"cookie": f"securepacs_session={old}"})
    new = data(resp)["token"]
    assert new != old and resp.headers["Set-Cookie"].startswith(f"securepacs_session={new};")
    assert client.call("GET", "/securepacs/api/me", headers={"cookie": f"securepacs_session={old}"}).status == 403
    assert client.call("GET", "/securepacs/api/me", headers=bearer(new)).status == 200


def test_a_throttled_login_answers_403_with_retry_after(client: Client) -> None:
    for _ in range(4):
        assert login(client, password="Wrong-password-1").status == 403
    resp = login(client)  # even the right password is not checked now
    assert resp.status == 403 and resp.headers["Retry-After"] == "60"
    assert data(resp) == {"error": "too many failed attempts from this address: try again in 60 s", "retry_after": 60}


def test_admin_cannot_disable_the_last_admin(client: Client) -> None:
    resp = client.call("POST", "/securepacs/api/users/alice/disable", headers=ADMIN)
    assert resp.status == 400 and "only enabled admin" in data(resp)["error"]


def test_admin_removes_a_lost_second_factor(client: Client, accounts: Accounts, clock: Clock) -> None:
    secret = accounts.begin_totp("bob", PW).secret
    accounts.confirm_totp("bob", totp.code_at(secret, clock.now))
    assert data(client.call("DELETE", "/securepacs/api/users/bob/totp", headers=ADMIN))["user"]["totp"] is False
    assert login(client).status == 200
    resp = client.call("DELETE", "/securepacs/api/users/bob/totp", headers=ADMIN)
    assert resp.status == 400 and "has no second factor" in data(resp)["error"]
