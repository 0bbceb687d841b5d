"""The HTTP filter's decision for requests reaching Orthanc through nginx.

Anonymous requests are allowed only to the exact allow-list (health, login). Everything else is
authenticated by :class:`~securepacs.accounts.Accounts` and then put to the injected authorisation
policy; anything the policy does not allow is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from securepacs.accounts import Accounts
from securepacs.identity import Principal
from securepacs.webapp import urls as webapp_urls

log = logging.getLogger(__name__)

# (method, exact URI): no prefix matching, so "/securepacs/health/../system" is not anonymous.
ANONYMOUS = frozenset({("GET", "/securepacs/health"), ("POST", "/securepacs/login")})

# OrthancPluginHttpMethod values as passed by the Python plugin's request filter.
HTTP_METHODS = {1: "GET", 2: "POST", 3: "PUT", 4: "DELETE"}


class Verdict(Protocol):
    allowed: bool
    reason: str


# policy(principal, method, uri, get_arguments) -> (allowed, reason), or an object with those attributes
Policy = Callable[[Principal, str, str, Mapping[str, str]], "tuple[bool, str] | Verdict"]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    user: str | None  # set once credentials were verified, also when the policy refuses
    client_ip: str
    reason: str
    principal: Principal | None = None


class HttpAuthenticator:
    def __init__(self, accounts: Accounts, policy: Policy, *, trusted_proxies: tuple[str, ...],
                 client_ip_header: str):
        self._accounts = accounts
        self._policy = policy
        self._proxies = frozenset(trusted_proxies)
        self._ip_header = client_ip_header.lower()
        self._anonymous = ANONYMOUS | webapp_urls.anonymous()  # + the login page and its assets (exact paths)

    def client_ip(self, peer_ip: str, headers: Mapping[str, str]) -> str:
        """The real client address: from the proxy's header only when the peer is a trusted proxy."""
        if peer_ip in self._proxies:
            forwarded = headers.get(self._ip_header)
            if forwarded:
                return forwarded.strip()
        return peer_ip

    def authorize(self, uri: str, method: str, peer_ip: str, headers: Mapping[str, str],
                  get: Mapping[str, str] | None = None) -> Decision:
        ip = self.client_ip(peer_ip, headers)
        if (method, uri) in self._anonymous:
            return Decision(True, None, ip, "anonymous endpoint")
        result = self._accounts.authenticate(method, headers, ip)
        if result.principal is None and method == "GET" and webapp_urls.LOGIN_REDIRECTS.fullmatch(uri):
            # The page's handler sees no session either and answers only a redirect to the login page.
            return Decision(True, result.username, ip, "page without a session: redirected to the login page")
        if result.principal is None:
            return Decision(False, result.username, ip, result.reason)
        verdict = self._policy(result.principal, method, uri, get or {})
        allowed, reason = verdict if isinstance(verdict, tuple) else (verdict.allowed, verdict.reason)
        return Decision(allowed is True, result.principal.name, ip, reason, result.principal)

    def principal(self, method: str, headers: Mapping[str, str], client_ip: str = "") -> Principal | None:
        """Who sent a request to one of the plugin's own routes (authenticated again there: Orthanc does not
        pass the filter's result on; the credential cache keeps this cheap)."""
        return self._accounts.authenticate(method, headers, client_ip).principal
