"""REST API of accounts: login/logout, the caller's own account, and user administration for admins.

``routes()`` lists ``(regex, access, handler)``; the registration authenticates every request again
(``Accounts.authenticate``) and hands the handler the principal. Handlers still check it themselves, so a
wiring mistake cannot open an admin route. Request bodies are JSON objects (``Content-Type:
application/json``, which a cross-site form cannot send); unknown fields are refused so a typo is not
silently ignored. Refusals are JSON ``{"error": "..."}``; credentials are refused with 403, not 401
(Orthanc can only send 401 with a Basic challenge, which would make browsers show a password dialog).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any

from securepacs.access import user_admin
from securepacs.access.accounts import SESSION_COOKIE, AccountError, Accounts, Throttled, TotpRequired, session_token
from securepacs.access.principal import Principal
from securepacs.store.database import Store
from securepacs.web.messages import Request, Response

Handler = Callable[[Request, Principal | None], Response]

ANONYMOUS = "anonymous"
AUTHENTICATED = "authenticated"
ADMIN = "admin"
MAX_BODY = 64 * 1024
NO_STORE = {"Cache-Control": "no-store"}  # answers carrying tokens, passwords or TOTP secrets
_CLEAR_COOKIE = f"{SESSION_COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict"
_USER = r"([^/]+)"  # validated by the handler, so a bad name gets a message rather than a 404
TOTP_REMOVAL = ("removing the second factor needs the password and a current code: expected POST "
                '/securepacs/api/me/totp/remove with {"password": ..., "code": ...}')


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _session_cookie(token: str, max_age: int) -> str:
    return f"{SESSION_COOKIE}={token}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict"


def _json_body(req: Request, fields: set[str], required: set[str]) -> dict[str, Any]:
    if len(req.body) > MAX_BODY:
        raise AccountError(f"request body of {len(req.body)} bytes is too large: expected at most {MAX_BODY}")
    content_type = req.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise AccountError(f"Content-Type {content_type!r} is not accepted: expected 'application/json'")
    try:
        body = json.loads(req.body or b"null")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise AccountError(f"request body is not a JSON object: expected an object with {sorted(fields)}")
    unknown = sorted(set(body) - fields)
    if unknown:
        raise AccountError(f"unknown field {unknown[0]!r}: expected only {sorted(fields)}")
    missing = sorted(required - set(body))
    if missing:
        raise AccountError(f"missing field {missing[0]!r}: expected {sorted(required)}")
    for key, value in body.items():
        if not isinstance(value, str) and not (value is None and key not in required):
            raise AccountError(f"field {key!r} = {value!r} is invalid: expected a string")
    return body


def _refusal(exc: AccountError) -> Response:
    body: dict[str, Any] = {"error": str(exc)}
    if isinstance(exc, TotpRequired):
        body["totp_required"] = True  # lets a login form ask for the code without parsing the message
    if isinstance(exc, Throttled):
        body["retry_after"] = exc.retry_after
        return Response.json(body, exc.status, {"Retry-After": str(exc.retry_after)})
    return Response.json(body, exc.status)


def _endpoint(methods: tuple[str, ...], access: str) -> Callable[[Handler], Handler]:
    """Method check, access check (defence in depth) and AccountError -> JSON refusal."""

    def wrap(handler: Handler) -> Handler:
        @wraps(handler)
        def run(req: Request, principal: Principal | None) -> Response:
            if req.method not in methods:
                return Response.json({"error": f"method {req.method} is not allowed: expected {' or '.join(methods)}"},
                                     405, {"Allow": ", ".join(methods)})
            if access != ANONYMOUS and principal is None:
                return Response.error(403, "authentication required")
            if access == ADMIN and (principal is None or not principal.is_admin):
                return Response.error(403, "admin role required")
            try:
                return handler(req, principal)
            except AccountError as exc:
                return _refusal(exc)

        return run

    return wrap


class AccountApi:
    def __init__(self, accounts: Accounts, store: Store):
        self._accounts = accounts
        self._store = store

    # -- anonymous / any authenticated user --------------------------------------------------------------
    def login(self, req: Request, _principal: Principal | None) -> Response:
        body = _json_body(req, {"username", "password", "totp"}, {"username", "password"})
        result = self._accounts.login(body["username"], body["password"], body.get("totp"), req.client_ip)
        # Session fixation: a session the client still presents (cookie or bearer) ends here; the answer sets
        # the new token, never a previous one.
        presented, _ = session_token(req.headers)
        if presented:
            self._accounts.logout(presented, req.client_ip)
        max_age = max(0, int(result.expires_at - self._accounts.now()))
        return Response.json(
            {"username": result.username, "token": result.token, "expires_at": _iso(result.expires_at),
             "idle_seconds": result.idle_seconds},
            headers={**NO_STORE, "Set-Cookie": _session_cookie(result.token, max_age)},
        )

    def logout(self, req: Request, _principal: Principal | None) -> Response:
        token, _ = session_token(req.headers)
        if token is None:
            raise AccountError("no session to end: expected a session token (Bearer or cookie); HTTP Basic "
                               "credentials have no session")
        self._accounts.logout(token, req.client_ip)
        # The browser drops what it cached of this session (the viewer's rendered images are private,
        # cacheable PHI) and its cookie; Clear-Site-Data is honoured over HTTPS only, which is all we serve.
        return Response.json({"logged_out": True},
                             headers={"Set-Cookie": _CLEAR_COOKIE, "Clear-Site-Data": '"cache", "cookies"'})

    def me(self, req: Request, principal: Principal | None) -> Response:
        assert principal is not None  # checked by _endpoint
        user = user_admin.get_user(self._store, principal.name)
        token, scheme = session_token(req.headers)
        session = self._accounts.session(token) if token else None
        return Response.json({
            "username": user.username,
            "role": user.role,
            "clinic": user.clinic,
            "totp": user.totp_secret is not None,
            "password_changed_at": user.password_changed_at,
            "authenticated_by": scheme if session else "basic",
            "session": None if session is None else {
                "expires_at": _iso(session.expires_at),
                "idle_seconds": self._accounts.settings.session_idle_seconds,
            },
        })

    def change_password(self, req: Request, principal: Principal | None) -> Response:
        assert principal is not None
        body = _json_body(req, {"current", "new"}, {"current", "new"})
        self._accounts.change_password(principal.name, body["current"], body["new"], req.client_ip)
        return Response.json({"password_changed": True,
                              "message": "password changed; every session of this account has ended: log in again"},
                             headers={"Set-Cookie": _CLEAR_COOKIE})

    def totp(self, req: Request, principal: Principal | None) -> Response:
        assert principal is not None
        if req.method == "DELETE":
            # Removal needs the password and a current code, and Orthanc passes no body with a DELETE.
            raise AccountError(TOTP_REMOVAL)
        body = _json_body(req, {"password"}, {"password"})
        enrolment = self._accounts.begin_totp(principal.name, body["password"], req.client_ip)
        return Response.json({
            "secret": enrolment.secret,
            "otpauth_uri": enrolment.uri,
            "confirm_before": _iso(enrolment.expires_at),
            "next": "add the secret to an authenticator app, then POST /securepacs/api/me/totp/confirm with "
                    '{"code": "<6 digits>"}',
        }, headers=NO_STORE)

    def totp_remove(self, req: Request, principal: Principal | None) -> Response:
        """Password and a current code: whoever holds only the session cannot downgrade the account."""
        assert principal is not None
        body = _json_body(req, {"password", "code"}, {"password", "code"})
        self._accounts.disable_totp(principal.name, body["password"], body["code"], req.client_ip)
        return Response.json({"totp": False, "message": "second factor removed; every session of this account "
                                                        "has ended: log in again"},
                             headers={"Set-Cookie": _CLEAR_COOKIE})

    def totp_confirm(self, req: Request, principal: Principal | None) -> Response:
        assert principal is not None
        body = _json_body(req, {"code"}, {"code"})
        self._accounts.confirm_totp(principal.name, body["code"])
        return Response.json({"totp": True, "message": "second factor active; every session of this account has "
                                                       "ended: log in again with a code"},
                             headers={"Set-Cookie": _CLEAR_COOKIE})

    # -- admin ---------------------------------------------------------------------------------------------
    def users(self, req: Request, principal: Principal | None) -> Response:
        assert principal is not None
        if req.method == "GET":
            clinic = req.get.get("clinic") or None
            now = self._accounts.now()
            revoked = user_admin.revoked_clinics(self._store)
            return Response.json([user_admin.describe(u, now, u.clinic in revoked)
                                  for u in self._store.list_users(clinic)])
        body = _json_body(req, {"username", "role", "clinic", "password"}, {"username", "role"})
        created = user_admin.create_user(self._store, body["username"], body["role"], body.get("clinic"),
                                         body.get("password"), actor=principal.name, admin_api=True)
        answer: dict[str, Any] = {"user": user_admin.describe(created.user, self._accounts.now())}
        if created.generated_password:
            answer["password"] = created.generated_password
            answer["message"] = "generated password: shown only in this answer, hand it over securely"
        return Response.json(answer, headers=NO_STORE)

    def user(self, req: Request, _principal: Principal | None) -> Response:
        user = user_admin.get_user(self._store, req.groups[0])
        revoked = user.clinic in user_admin.revoked_clinics(self._store)
        return Response.json(user_admin.describe(user, self._accounts.now(), revoked))

    def user_action(self, req: Request, principal: Principal | None) -> Response:
        assert principal is not None
        name, action = req.groups
        actor = principal.name
        answer: dict[str, Any] = {}
        if action == "reset-password":
            answer["password"] = user_admin.reset_password(self._store, name, actor=actor, admin_api=True)
            answer["message"] = ("generated password: shown only in this answer; the user's sessions have ended "
                                 "and any lockout is cleared")
        elif action in ("disable", "enable"):
            user_admin.set_disabled(self._store, name, action == "disable", actor=actor, admin_api=True)
        else:
            user_admin.unlock(self._store, name, actor=actor, admin_api=True)
        answer["user"] = user_admin.describe(user_admin.get_user(self._store, name), self._accounts.now())
        return Response.json(answer, headers=NO_STORE)

    def user_totp(self, req: Request, principal: Principal | None) -> Response:
        assert principal is not None
        user_admin.reset_totp(self._store, req.groups[0], actor=principal.name, admin_api=True)
        return Response.json({"user": user_admin.describe(user_admin.get_user(self._store, req.groups[0]),
                                                          self._accounts.now())})


def routes(accounts: Accounts, store: Store) -> list[tuple[str, str, Handler]]:
    """(URI regex, access, handler) for every account endpoint; access is anonymous|authenticated|admin."""
    api = AccountApi(accounts, store)
    table: list[tuple[str, tuple[str, ...], str, Handler]] = [
        ("/securepacs/login", ("POST",), ANONYMOUS, api.login),
        ("/securepacs/logout", ("POST",), AUTHENTICATED, api.logout),
        ("/securepacs/api/me", ("GET",), AUTHENTICATED, api.me),
        ("/securepacs/api/me/password", ("POST",), AUTHENTICATED, api.change_password),
        ("/securepacs/api/me/totp", ("POST", "DELETE"), AUTHENTICATED, api.totp),
        ("/securepacs/api/me/totp/confirm", ("POST",), AUTHENTICATED, api.totp_confirm),
        ("/securepacs/api/me/totp/remove", ("POST",), AUTHENTICATED, api.totp_remove),
        ("/securepacs/api/users", ("GET", "POST"), ADMIN, api.users),
        (f"/securepacs/api/users/{_USER}", ("GET",), ADMIN, api.user),
        (f"/securepacs/api/users/{_USER}/(disable|enable|reset-password|unlock)", ("POST",), ADMIN, api.user_action),
        (f"/securepacs/api/users/{_USER}/totp", ("DELETE",), ADMIN, api.user_totp),
    ]
    return [(pattern, access, _endpoint(methods, access)(handler)) for pattern, methods, access, handler in table]
