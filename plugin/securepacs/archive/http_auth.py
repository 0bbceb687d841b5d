"""The HTTP filter's decision for requests reaching Orthanc through nginx (or from a local service).

Where a request comes from (:meth:`HttpAuthenticator.origin`): Orthanc's HTTP port is loopback-only, so
nginx and local processes (the gateway, but also anything else running on the host) share one peer
address. nginx adds a per-deployment secret header; only a request carrying it is "through nginx", and
only then is nginx's client-address header believed — and only when it parses as an IP address. A
request with a wrong secret is a forgery and is refused outright. A request without the secret and
without a client-address header is "internal": only such requests may use the internal routes
(``/securepacs/internal/...``) and the service accounts; everything through nginx is refused there.

Anonymous requests are allowed only to the exact allow-list (health, login). Everything else is
authenticated by :class:`~securepacs.access.accounts.Accounts` and then put to the injected authorisation
policy; anything the policy does not allow is refused.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from securepacs.access.accounts import Accounts
from securepacs.access.principal import Principal, Verdict
from securepacs.config.plugin_settings import PROXY_SECRET_HEADER
from securepacs.platform import health
from securepacs.webapp import urls as webapp_urls

log = logging.getLogger(__name__)

# (method, exact URI): no prefix matching, so "/securepacs/health/../system" is not anonymous.
ANONYMOUS = frozenset({("GET", "/securepacs/health"), ("POST", "/securepacs/login")})

# Internal routes a local process may call without credentials: the detailed health report (versions,
# unfixed CVEs), for securepacs health and the launcher. Nothing a local account cannot read anyway
# (package versions are in the world-readable dpkg database); never served through nginx.
LOCAL_ANONYMOUS = frozenset({("GET", health.LOCAL_URI)})

# Routes for local services only (the gateway's ownership checks): never through nginx. Orthanc collapses
# repeated slashes, so the check does too.
INTERNAL_ROUTE = re.compile(r"/+securepacs/+internal(?:/.*)?", re.DOTALL)
FORGED = "refused: wrong proxy secret (a request pretending to come through nginx)"
NOT_INTERNAL = "internal route: only local services may call it, never through nginx"

# OrthancPluginHttpMethod values as passed by the Python plugin's request filter.
HTTP_METHODS = {1: "GET", 2: "POST", 3: "PUT", 4: "DELETE"}


# policy(principal, method, uri, get_arguments) -> (allowed, reason), or an object with those attributes
Policy = Callable[[Principal, str, str, Mapping[str, str]], "tuple[bool, str] | Verdict"]


@dataclass(frozen=True)
class Origin:
    client_ip: str
    via_proxy: bool  # carried nginx's secret: client_ip is the address nginx saw
    internal: bool  # a local process (no proxy headers at all): may use internal routes and service accounts
    forged: bool = False  # a proxy secret that is not ours: refuse


def parsed_ip(value: str | None) -> str | None:
    """``value`` as a canonical IP address, or None when it is not one."""
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    user: str | None  # set once credentials were verified, also when the policy refuses
    client_ip: str
    reason: str
    principal: Principal | None = None


class HttpAuthenticator:
    def __init__(self, accounts: Accounts, policy: Policy, *, trusted_proxies: tuple[str, ...],
                 client_ip_header: str, proxy_secret: str | None = None,
                 proxy_secret_header: str = PROXY_SECRET_HEADER):
        self._accounts = accounts
        self._policy = policy
        self._proxies = frozenset(trusted_proxies)
        self._ip_header = client_ip_header.lower()
        self._anonymous = ANONYMOUS | webapp_urls.anonymous()  # + the login page and its assets (exact paths)
        # None (no secret configured): nothing counts as through nginx, and nothing as internal either,
        # so service accounts are refused everywhere (fail closed).
        self._secret = proxy_secret.encode() if proxy_secret else None
        self._secret_header = proxy_secret_header.lower()

    def origin(self, peer_ip: str, headers: Mapping[str, str]) -> Origin:
        forwarded = headers.get(self._ip_header)
        secret = headers.get(self._secret_header)
        if peer_ip not in self._proxies:  # not loopback: neither nginx nor a local service
            return Origin(peer_ip, False, False, forged=secret is not None)
        if secret is not None:
            if self._secret is None or not hmac.compare_digest(secret.strip().encode(), self._secret):
                return Origin(peer_ip, False, False, forged=True)
            return Origin(parsed_ip(forwarded) or peer_ip, True, False)
        # A local process: its client-address header, if it sends one, is not believed, and a request
        # that dresses up as proxied is not treated as internal either.
        return Origin(peer_ip, False, self._secret is not None and forwarded is None)

    def client_ip(self, peer_ip: str, headers: Mapping[str, str]) -> str:
        """The real client address: nginx's header only on a request carrying nginx's secret."""
        return self.origin(peer_ip, headers).client_ip

    def authorize(self, uri: str, method: str, peer_ip: str, headers: Mapping[str, str],
                  get: Mapping[str, str] | None = None) -> Decision:
        origin = self.origin(peer_ip, headers)
        ip = origin.client_ip
        if origin.forged:
            log.warning("HTTP %s from %r with a wrong proxy secret refused", method, ip)
            return Decision(False, None, ip, FORGED)
        if INTERNAL_ROUTE.fullmatch(uri) and not origin.internal:
            return Decision(False, None, ip, NOT_INTERNAL)
        if origin.internal and (method, uri) in LOCAL_ANONYMOUS:
            return Decision(True, None, ip, "local process: detailed health report")
        if (method, uri) in self._anonymous:
            return Decision(True, None, ip, "anonymous endpoint")
        result = self._accounts.authenticate(method, headers, ip, internal=origin.internal)
        if (result.principal is None and method == "GET" and not headers.get("authorization")
                and webapp_urls.LOGIN_REDIRECTS.fullmatch(uri)):
            # The page's handler sees no session either and answers only a redirect to the login page. Not
            # with an Authorization header: a wrong password there is refused here, so that the handler's
            # second check does not count it against the lockout and throttle a second time.
            return Decision(True, result.username, ip, "page without a session: redirected to the login page")
        if result.principal is None:
            return Decision(False, result.username, ip, result.reason)
        verdict = self._policy(result.principal, method, uri, get or {})
        allowed, reason = verdict if isinstance(verdict, tuple) else (verdict.allowed, verdict.reason)
        return Decision(allowed is True, result.principal.name, ip, reason, result.principal)

    def principal(self, method: str, headers: Mapping[str, str], client_ip: str = "", *,
                  internal: bool = False) -> Principal | None:
        """Who sent a request to one of the plugin's own routes (authenticated again there: Orthanc does not
        pass the filter's result on; the credential cache keeps this cheap)."""
        return self._accounts.authenticate(method, headers, client_ip, internal=internal).principal
