# ruff: noqa: F811  (pytest fixtures imported from _accounts_env are parameters here)
"""The HTTP filter's decision (``HttpAuthenticator``): anonymous allow-list, Basic credentials through
``Accounts``, the injected policy, and the client address behind the trusted proxy."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from _accounts_env import Clock, clock  # noqa: F401 (the fake clock fixture)

from securepacs.access import accounts as accounts_mod
from securepacs.access import passwords
from securepacs.access.accounts import Accounts, AccountSettings
from securepacs.access.principal import ROLES, Principal
from securepacs.archive.http_auth import HttpAuthenticator
from securepacs.store.database import Store

# passwords.hash_password binds SCRYPT_N as a default at definition time: patching the constant would not
# make it cheaper, so the users here are hashed with a small n passed explicitly.
FAST_N = 2**10
ADMIN_PW = "Admin-password-1234"
DOCTOR_PW = "Doctor-password-5678"
PROXY = "127.0.0.1"
HEADER = "X-SecurePACS-Client-IP"
SECRET = "unit-test-proxy-secret-0123456789abcdefghij"
SECRET_HEADER = "x-securepacs-proxy-secret"


def via_nginx(ip: str = "203.0.113.9") -> dict[str, str]:
    """The two headers nginx adds to every request it forwards."""
    return {SECRET_HEADER: SECRET, HEADER.lower(): ip}


def fast_hash(password: str) -> str:
    return passwords.hash_password(password, n=FAST_N)


def basic(username: str, password: str, scheme: str = "Basic") -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"authorization": f"{scheme} {token}"}  # Orthanc passes header names in lower case


def admin_only(principal: Principal, method: str, uri: str, get: Mapping[str, str]) -> tuple[bool, str]:
    return principal.is_admin, "admin" if principal.is_admin else f"role {principal.role!r} refused {method} {uri}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "securepacs.db")
    s.add_clinic("north", ["NORTH_CT"])
    s.add_user("alice", fast_hash(ADMIN_PW), "admin")
    s.add_user("bob", fast_hash(DOCTOR_PW), "physician", "north")
    yield s
    s.close()


@pytest.fixture
def make_auth(store: Store, clock: Clock) -> Callable[..., HttpAuthenticator]:
    def make(cache_seconds: int = 60, policy: Callable[..., object] = admin_only) -> HttpAuthenticator:
        accounts = Accounts(store, AccountSettings(auth_cache_seconds=cache_seconds), clock=clock)
        return HttpAuthenticator(accounts, policy, trusted_proxies=(PROXY, "::1"),  # type: ignore[arg-type]
                                 client_ip_header=HEADER, proxy_secret=SECRET)
    return make


@pytest.fixture
def auth(make_auth: Callable[..., HttpAuthenticator]) -> HttpAuthenticator:
    return make_auth()


@pytest.fixture
def verify_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count scrypt verifications (the real function still runs)."""
    calls: list[str] = []
    real = passwords.verify_password

    def counting(password: str, encoded: str) -> bool:
        calls.append(encoded)
        return real(password, encoded)

    monkeypatch.setattr(passwords, "verify_password", counting)
    return calls


def sql(store: Store, statement: str, *args: object) -> None:
    """Change the store's file behind its back, as ``securepacs user ...`` in another process would."""
    with sqlite3.connect(store.path) as db:
        db.execute(statement, args)
    db.close()


# -- anonymous allow-list ------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "uri"), [("GET", "/securepacs/health"), ("POST", "/securepacs/login")])
def test_anonymous_endpoints(auth: HttpAuthenticator, method: str, uri: str) -> None:
    decision = auth.authorize(uri, method, PROXY, {})
    assert decision.allowed and decision.user is None and decision.principal is None
    assert decision.reason == "anonymous endpoint"


@pytest.mark.parametrize(("method", "uri"), [
    *((m, "/securepacs/health") for m in ("POST", "PUT", "DELETE", "OTHER")),
    *((m, "/securepacs/login") for m in ("GET", "PUT", "DELETE", "OTHER")),
])
def test_anonymous_endpoints_only_for_their_method(auth: HttpAuthenticator, method: str, uri: str) -> None:
    assert not auth.authorize(uri, method, PROXY, {}).allowed


@pytest.mark.parametrize("uri", ["/securepacs/health/", "/securepacs/healthz", "/securepacs/health/../../system",
                                 "/SECUREPACS/HEALTH", "/securepacs/login/", "/securepacs/logout",
                                 "/securepacs/api/me", "/system", "/app/explorer.html", "/assets/view.html",
                                 "/assets/../system", "/view/x", "/view/", "/listing"])
def test_only_the_exact_uris_are_anonymous(auth: HttpAuthenticator, uri: str) -> None:
    for method in ("GET", "POST"):
        decision = auth.authorize(uri, method, PROXY, {})
        assert not decision.allowed
        assert decision.reason == "no valid credentials"


@pytest.mark.parametrize("uri", ["/", "/list", "/view/0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d",
                                 "/study/0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d"])
def test_web_pages_without_a_session_reach_their_login_redirect(auth: HttpAuthenticator, uri: str) -> None:
    # The page handler answers such a caller with a redirect to the login page and nothing else.
    assert auth.authorize(uri, "GET", PROXY, {}).allowed
    assert not auth.authorize(uri, "POST", PROXY, {}).allowed


@pytest.mark.parametrize("uri", ["/login", "/assets/view.js", "/assets/app.css"])
def test_login_page_and_assets_are_anonymous(auth: HttpAuthenticator, uri: str) -> None:
    assert auth.authorize(uri, "GET", PROXY, {}).reason == "anonymous endpoint"


# -- credentials and policy ------------------------------------------------------------------------------
def test_admin_is_allowed_by_the_policy(auth: HttpAuthenticator) -> None:
    decision = auth.authorize("/system", "GET", PROXY, basic("alice", ADMIN_PW))
    assert decision.allowed
    assert (decision.user, decision.reason) == ("alice", "admin")
    assert decision.principal == Principal("alice", "admin", None)


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
def test_admin_is_allowed_every_method(auth: HttpAuthenticator, method: str) -> None:
    assert auth.authorize("/instances", method, PROXY, basic("alice", ADMIN_PW)).allowed


def test_policy_refusal_keeps_the_verified_user(auth: HttpAuthenticator) -> None:
    decision = auth.authorize("/studies", "GET", PROXY, basic("bob", DOCTOR_PW))
    assert not decision.allowed
    assert decision.user == "bob"
    assert decision.reason == "role 'physician' refused GET /studies"
    assert decision.principal == Principal("bob", "physician", "north")


def test_policy_gets_principal_method_uri_and_arguments(make_auth: Callable[..., HttpAuthenticator]) -> None:
    seen: list[tuple[object, ...]] = []

    def policy(principal: Principal, method: str, uri: str, get: Mapping[str, str]) -> tuple[bool, str]:
        seen.append((principal.name, method, uri, dict(get)))
        return True, "ok"

    auth = make_auth(policy=policy)
    assert auth.authorize("/tools/find", "POST", PROXY, basic("bob", DOCTOR_PW), {"expand": "1"}).allowed
    assert seen == [("bob", "POST", "/tools/find", {"expand": "1"})]


def test_policy_is_not_asked_without_credentials(make_auth: Callable[..., HttpAuthenticator]) -> None:
    def policy(*_: object) -> tuple[bool, str]:
        raise AssertionError("policy asked for an unauthenticated request")

    assert not make_auth(policy=policy).authorize("/system", "GET", PROXY, {}).allowed


@dataclass(frozen=True)
class _Verdict:
    allowed: bool
    reason: str


@pytest.mark.parametrize(("verdict", "allowed"), [
    (_Verdict(True, "v"), True), (_Verdict(False, "v"), False), ((True, "v"), True), ((False, "v"), False),
    ((1, "v"), False),  # only a real True allows: a sloppy truthy value fails closed
])
def test_policy_may_answer_a_pair_or_a_verdict(
    make_auth: Callable[..., HttpAuthenticator], verdict: object, allowed: bool
) -> None:
    decision = make_auth(policy=lambda *_: verdict).authorize("/x", "GET", PROXY, basic("alice", ADMIN_PW))
    assert (decision.allowed, decision.reason) == (allowed, "v")


def test_principal_helper(auth: HttpAuthenticator) -> None:
    assert auth.principal("GET", basic("bob", DOCTOR_PW)) == Principal("bob", "physician", "north")
    assert auth.principal("GET", basic("bob", "wrong")) is None
    assert auth.principal("GET", {}) is None


def test_scheme_is_case_insensitive(auth: HttpAuthenticator) -> None:
    assert auth.authorize("/system", "GET", PROXY, basic("alice", ADMIN_PW, scheme="basic")).allowed
    assert auth.authorize("/system", "GET", PROXY, basic("alice", ADMIN_PW, scheme="BASIC")).allowed


def test_password_may_contain_a_colon(store: Store, auth: HttpAuthenticator) -> None:
    store.add_user("carol", fast_hash("Pass:word:with:colons1"), "admin")
    assert auth.authorize("/system", "GET", PROXY, basic("carol", "Pass:word:with:colons1")).allowed
    assert not auth.authorize("/system", "GET", PROXY, basic("carol", "Pass")).allowed


def test_no_header_is_denied(auth: HttpAuthenticator) -> None:
    decision = auth.authorize("/system", "GET", PROXY, {})
    assert not decision.allowed and decision.user is None
    assert decision.reason == "no valid credentials"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Basic",
        "Basic ",
        "Basic !!!not-base64!!!",
        "Basic " + _b64(b"alice:" + ADMIN_PW.encode())[:-2],  # truncated: bad padding
        "Basic " + _b64(b"alice"),  # no colon
        "Basic " + _b64(b":" + ADMIN_PW.encode()),  # empty user name
        "Basic " + _b64(b"\xffalice:\xfe"),  # not UTF-8
        "Bearer " + _b64(b"alice:" + ADMIN_PW.encode()),  # not a session token
        "Bearer",
        "Digest " + _b64(b"alice:" + ADMIN_PW.encode()),  # other scheme
        _b64(b"alice:" + ADMIN_PW.encode()),  # no scheme
    ],
    ids=["empty", "scheme-only", "scheme-space", "not-base64", "bad-padding", "no-colon", "no-user",
         "not-utf8", "bearer", "bearer-only", "digest", "no-scheme"],
)
def test_malformed_authorization_is_denied(auth: HttpAuthenticator, verify_calls: list[str], header: str) -> None:
    decision = auth.authorize("/system", "GET", PROXY, {"authorization": header})
    assert not decision.allowed and decision.user is None
    assert decision.reason in ("no valid credentials", "unknown or ended session")
    assert verify_calls == []  # rejected before any password work


def test_wrong_password_is_denied(auth: HttpAuthenticator, caplog: pytest.LogCaptureFixture) -> None:
    headers = {**basic("alice", ADMIN_PW + "x"), **via_nginx()}
    decision = auth.authorize("/system", "GET", PROXY, headers)
    assert not decision.allowed and decision.user is None
    assert "authentication failed for user 'alice' via HTTP Basic from '203.0.113.9' (failure 1 of 5)" in caplog.text
    assert ADMIN_PW not in caplog.text


def test_unknown_user_is_denied_after_a_dummy_verification(auth: HttpAuthenticator, verify_calls: list[str]) -> None:
    decision = auth.authorize("/system", "GET", PROXY, basic("mallory", ADMIN_PW))
    assert not decision.allowed and decision.user is None
    # Same scrypt work as for a real user, so response timing does not reveal which user names exist.
    assert verify_calls == [accounts_mod.DUMMY_HASH]


def test_dummy_hash_is_well_formed_with_real_parameters() -> None:
    scheme, n, r, p, salt, key = accounts_mod.DUMMY_HASH.split("$")
    assert scheme == "scrypt"
    assert (int(n), int(r), int(p)) == (passwords.SCRYPT_N, passwords.SCRYPT_R, passwords.SCRYPT_P)
    assert len(base64.b64decode(salt, validate=True)) == 16
    assert len(base64.b64decode(key, validate=True)) == 32


# -- account state -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", [r for r in ROLES if r != "admin"])
def test_every_role_but_admin_is_denied_by_an_admin_only_policy(store: Store, auth: HttpAuthenticator,
                                                                role: str) -> None:
    clinic = "north" if role in ("physician", "clinic-device") else None
    store.add_user("user", fast_hash("User-password-0000"), role, clinic)
    decision = auth.authorize("/system", "GET", PROXY, basic("user", "User-password-0000"))
    assert not decision.allowed
    assert decision.user == "user"


@pytest.mark.parametrize("role", ["superuser", "Admin", ""])
def test_unknown_roles_are_refused_before_the_policy(store: Store, make_auth: Callable[..., HttpAuthenticator],
                                                     role: str) -> None:
    store.add_user("user", fast_hash("User-password-0000"), role)
    auth = make_auth(policy=lambda *_: (True, "anything"))
    decision = auth.authorize("/system", "GET", PROXY, basic("user", "User-password-0000"))
    assert not decision.allowed
    assert decision.reason == f"account has unknown role {role!r}"


def test_disabled_user_is_denied(store: Store, auth: HttpAuthenticator) -> None:
    sql(store, "UPDATE users SET disabled = 1 WHERE username = ?", "alice")
    decision = auth.authorize("/system", "GET", PROXY, basic("alice", ADMIN_PW))
    assert not decision.allowed
    assert (decision.user, decision.reason) == ("alice", "account disabled")


def test_disabled_user_is_denied_even_when_cached(
    store: Store, auth: HttpAuthenticator, verify_calls: list[str]
) -> None:
    assert auth.authorize("/system", "GET", PROXY, basic("alice", ADMIN_PW)).allowed
    sql(store, "UPDATE users SET disabled = 1 WHERE username = ?", "alice")
    decision = auth.authorize("/system", "GET", PROXY, basic("alice", ADMIN_PW))
    assert not decision.allowed and decision.reason == "account disabled"
    assert len(verify_calls) == 1  # the credential was still cached: disabling does not depend on expiry


def test_deleted_user_is_denied_even_when_cached(store: Store, auth: HttpAuthenticator) -> None:
    assert auth.authorize("/system", "GET", PROXY, basic("alice", ADMIN_PW)).allowed
    sql(store, "DELETE FROM users WHERE username = ?", "alice")
    assert not auth.authorize("/system", "GET", PROXY, basic("alice", ADMIN_PW)).allowed


def test_role_change_applies_even_when_cached(store: Store, auth: HttpAuthenticator) -> None:
    assert auth.authorize("/system", "GET", PROXY, basic("alice", ADMIN_PW)).allowed
    sql(store, "UPDATE users SET role = 'auditor' WHERE username = ?", "alice")
    assert not auth.authorize("/system", "GET", PROXY, basic("alice", ADMIN_PW)).allowed


def test_revoked_clinic_is_denied_even_when_cached(store: Store, make_auth: Callable[..., HttpAuthenticator]) -> None:
    auth = make_auth(policy=lambda *_: (True, "ok"))
    assert auth.authorize("/x", "GET", PROXY, basic("bob", DOCTOR_PW)).allowed
    store.revoke_clinic("north")
    decision = auth.authorize("/x", "GET", PROXY, basic("bob", DOCTOR_PW))
    assert not decision.allowed
    assert decision.reason.startswith("clinic 'north' was revoked at ")


# -- verification cache ------------------------------------------------------------------------------------
def test_second_request_is_served_from_cache(auth: HttpAuthenticator, verify_calls: list[str]) -> None:
    for _ in range(3):
        assert auth.authorize("/system", "GET", PROXY, basic("alice", ADMIN_PW)).allowed
    assert len(verify_calls) == 1


def test_password_change_invalidates_the_cache(
    store: Store, auth: HttpAuthenticator, verify_calls: list[str]
) -> None:
    assert auth.authorize("/system", "GET", PROXY, basic("alice", ADMIN_PW)).allowed
    new_password = "A-brand-new-password"
    sql(store, "UPDATE users SET password_hash = ? WHERE username = ?", fast_hash(new_password), "alice")

    assert not auth.authorize("/system", "GET", PROXY, basic("alice", ADMIN_PW)).allowed
    assert len(verify_calls) == 2  # the cached old credential was not accepted without checking
    assert auth.authorize("/system", "GET", PROXY, basic("alice", new_password)).allowed


def test_cache_entry_expires(auth: HttpAuthenticator, clock: Clock, verify_calls: list[str]) -> None:
    assert auth.authorize("/system", "GET", PROXY, basic("alice", ADMIN_PW)).allowed
    clock.now += 59
    assert auth.authorize("/system", "GET", PROXY, basic("alice", ADMIN_PW)).allowed
    assert len(verify_calls) == 1
    clock.now += 2
    assert auth.authorize("/system", "GET", PROXY, basic("alice", ADMIN_PW)).allowed
    assert len(verify_calls) == 2


def test_cache_can_be_disabled(make_auth: Callable[..., HttpAuthenticator], verify_calls: list[str]) -> None:
    auth = make_auth(cache_seconds=0)
    for _ in range(2):
        assert auth.authorize("/system", "GET", PROXY, basic("alice", ADMIN_PW)).allowed
    assert len(verify_calls) == 2


def test_cache_does_not_let_a_wrong_password_in(auth: HttpAuthenticator, verify_calls: list[str]) -> None:
    assert auth.authorize("/system", "GET", PROXY, basic("alice", ADMIN_PW)).allowed
    assert not auth.authorize("/system", "GET", PROXY, basic("alice", ADMIN_PW[:-1])).allowed
    assert len(verify_calls) == 2


def test_failed_attempts_are_not_cached(auth: HttpAuthenticator, verify_calls: list[str]) -> None:
    for _ in range(2):
        assert not auth.authorize("/system", "GET", PROXY, basic("alice", "wrong-password")).allowed
    assert len(verify_calls) == 2


def test_cached_credential_of_one_user_does_not_serve_another(
    store: Store, auth: HttpAuthenticator, verify_calls: list[str]
) -> None:
    store.add_user("alice2", fast_hash(ADMIN_PW), "admin")
    assert auth.authorize("/system", "GET", PROXY, basic("alice", ADMIN_PW)).allowed
    assert auth.authorize("/system", "GET", PROXY, basic("alice2", ADMIN_PW)).allowed
    assert len(verify_calls) == 2


def test_cache_holds_no_password(auth: HttpAuthenticator) -> None:
    auth.authorize("/system", "GET", PROXY, basic("alice", ADMIN_PW))
    cache = auth._accounts._cache.entries
    assert len(cache) == 1
    assert not any(ADMIN_PW.encode() in key for key in cache)
    assert not any(ADMIN_PW in value[0] for value in cache.values())


# -- client address ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("peer", [PROXY, "::1"])
def test_client_ip_from_header_when_peer_is_a_trusted_proxy(auth: HttpAuthenticator, peer: str) -> None:
    assert auth.client_ip(peer, {**via_nginx(" 203.0.113.9 ")}) == "203.0.113.9"
    assert auth.client_ip(peer, {**via_nginx("2001:DB8::1")}) == "2001:db8::1"  # canonical form


@pytest.mark.parametrize("value", ["not-an-ip", "203.0.113.9, 198.51.100.1", "203.0.113.9'\nforged", "1.2.3.4.5"])
def test_client_ip_header_must_parse_as_an_address(auth: HttpAuthenticator, value: str) -> None:
    assert auth.client_ip(PROXY, via_nginx(value)) == PROXY


def test_client_ip_header_without_the_proxy_secret_is_ignored(auth: HttpAuthenticator) -> None:
    """Any local process can reach Orthanc's loopback port: only nginx (which knows the secret) names the
    client; another process claiming an address is attributed to its own peer address."""
    origin = auth.origin(PROXY, {HEADER.lower(): "203.0.113.9"})
    assert (origin.client_ip, origin.via_proxy, origin.internal, origin.forged) == (PROXY, False, False, False)


def test_a_wrong_proxy_secret_is_refused_outright(auth: HttpAuthenticator) -> None:
    headers = {**basic("alice", ADMIN_PW), SECRET_HEADER: SECRET[:-1] + "x", HEADER.lower(): "203.0.113.9"}
    decision = auth.authorize("/system", "GET", PROXY, headers)
    assert (decision.allowed, decision.client_ip) == (False, PROXY)
    assert decision.reason.startswith("refused: wrong proxy secret")


def test_without_a_configured_secret_nothing_is_proxied_or_internal(store: Store, clock: Clock) -> None:
    auth = HttpAuthenticator(Accounts(store, clock=clock), admin_only, trusted_proxies=(PROXY,),
                             client_ip_header=HEADER)
    assert auth.origin(PROXY, {}) == auth.origin(PROXY, {}).__class__(PROXY, False, False)
    assert auth.origin(PROXY, via_nginx()).forged


# -- internal routes and service accounts ---------------------------------------------------------------------
GATEWAY_PW = "Gateway-password-0123456789"


@pytest.fixture
def gateway(store: Store) -> str:
    store.add_user("svc-gateway-0123456789ab", fast_hash(GATEWAY_PW), "gateway")
    return "svc-gateway-0123456789ab"


def gateway_only(principal: Principal, method: str, uri: str, get: Mapping[str, str]) -> tuple[bool, str]:
    return principal.role == "gateway", "gateway"


@pytest.mark.parametrize("uri", ["/securepacs/internal/ownership", "//securepacs//internal/ownership",
                                 "/securepacs/internal"])
def test_internal_routes_are_refused_through_nginx(make_auth: Callable[..., HttpAuthenticator], gateway: str,
                                                   uri: str) -> None:
    auth = make_auth(policy=gateway_only)
    for headers in (via_nginx(), {HEADER.lower(): "203.0.113.9"}):
        decision = auth.authorize(uri, "POST", PROXY, {**basic(gateway, GATEWAY_PW), **headers})
        assert not decision.allowed and decision.reason.startswith("internal route"), headers
    assert auth.authorize(uri, "POST", PROXY, basic(gateway, GATEWAY_PW)).allowed  # the gateway itself


def test_a_service_account_through_nginx_is_an_unknown_name(make_auth: Callable[..., HttpAuthenticator],
                                                            gateway: str, store: Store,
                                                            verify_calls: list[str]) -> None:
    auth = make_auth(policy=lambda *_: (True, "anything"))
    decision = auth.authorize("/system", "GET", PROXY, {**basic(gateway, GATEWAY_PW), **via_nginx()})
    assert (decision.allowed, decision.user, decision.reason) == (False, None, "no valid credentials")
    assert verify_calls == [accounts_mod.DUMMY_HASH]  # same cost and answer as an unknown name


def test_wrong_passwords_never_lock_a_service_account(make_auth: Callable[..., HttpAuthenticator], gateway: str,
                                                      store: Store) -> None:
    auth = make_auth(policy=gateway_only)
    for _ in range(20):  # from outside (through nginx) and from a local process
        assert not auth.authorize("/x", "GET", PROXY, {**basic(gateway, "wrong"), **via_nginx()}).allowed
        assert not auth.authorize("/x", "GET", PROXY, basic(gateway, "wrong")).allowed
    user = store.get_user(gateway)
    assert user is not None and (user.failed_logins, user.locked_until) == (0, None)
    assert auth.authorize("/x", "GET", PROXY, basic(gateway, GATEWAY_PW)).allowed


def test_a_locked_service_account_still_works_internally(make_auth: Callable[..., HttpAuthenticator], gateway: str,
                                                         store: Store, clock: Clock) -> None:
    store.record_login_failure(gateway, clock.now, 1, 900)  # locked by an earlier version
    assert make_auth(policy=gateway_only).authorize("/x", "GET", PROXY, basic(gateway, GATEWAY_PW)).allowed


def test_client_ip_header_is_ignored_from_an_untrusted_peer(auth: HttpAuthenticator) -> None:
    assert auth.client_ip("198.51.100.7", {"x-securepacs-client-ip": "127.0.0.1"}) == "198.51.100.7"


@pytest.mark.parametrize("headers", [{}, {"x-securepacs-client-ip": ""}, {"x-forwarded-for": "203.0.113.9"}])
def test_client_ip_falls_back_to_the_peer(auth: HttpAuthenticator, headers: dict[str, str]) -> None:
    assert auth.client_ip(PROXY, headers) == PROXY


def test_decision_carries_the_client_ip(auth: HttpAuthenticator) -> None:
    headers = via_nginx()
    assert auth.authorize("/securepacs/health", "GET", PROXY, headers).client_ip == "203.0.113.9"
    assert auth.authorize("/system", "GET", PROXY, headers).client_ip == "203.0.113.9"
    assert auth.authorize("/system", "GET", "198.51.100.7", headers).client_ip == "198.51.100.7"
