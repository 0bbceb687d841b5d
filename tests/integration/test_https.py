"""The HTTPS side of the archive: anonymous health, authentication, headers, limits, and what is not exposed.

All requests go over real sockets to the running archive (nginx in front of Orthanc and the plugin). Where a
refusal is asserted, the same request with the one property changed (valid credentials, a small header,
the loopback address) is shown to succeed, so the refusal is the archive's doing and not the test's.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import ssl
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CLIENT_IP_HEADER = "X-SecurePACS-Client-IP"
SPOOFED_IP = "203.0.113.77"  # TEST-NET-3: never a real peer here
# Every denial is exactly 403: Orthanc 1.10's request filter cannot answer 401 (it would need a Basic
# challenge, which makes browsers prompt), and LoginFailed answers 403 for the same reason.
REFUSED = (403,)
PROTECTED = ["/system", "/patients", "/studies", "/instances", "/modalities", "/tools/log-level"]


# -- helpers ---------------------------------------------------------------------------------------------


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def request(
    archive,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    address: str | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One HTTPS request to the archive's HTTPS port (optionally connecting to another local address)."""
    ctx = ssl.create_default_context(cafile=str(archive.ca_cert))
    if address is not None:
        ctx.check_hostname = False  # the certificate names localhost; the address is ours, the CA still checked
    conn = http.client.HTTPSConnection(address or archive.host, archive.https_port, context=ctx, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def plain_http(
    address: str, port: int, path: str, headers: dict[str, str] | None = None, family: int = socket.AF_INET
) -> tuple[int, bytes]:
    """One plain-HTTP request over a raw socket (http.client would not let us pick the address family)."""
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: localhost",
        "Connection: close",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect((address, port))
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest


def non_loopback_ipv4() -> str:
    """An IPv4 address of this host that is not loopback: connecting to it makes us a non-loopback peer."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True, check=False
    ).stdout
    addresses = re.findall(r"\binet (\d+\.\d+\.\d+\.\d+)/", out)
    if not addresses:
        pytest.skip("this host has no non-loopback IPv4 address to connect from")
    return addresses[0]


def process_tree(root_pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat_file.read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(stat_file.parent.name))
    tree, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += children.get(pid, [])
    return tree


def nginx_conf(archive) -> str:
    if archive.kind == "compose":  # generated on the https service's tmpfs (it mounts no data volume)
        return archive.compose("exec", "-T", "https", "cat", "/tmp/nginx/nginx.conf").stdout
    return (archive.data_dir / "nginx" / "nginx.conf").read_text()


def _size(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", value).groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit.lower()]


# -- health and authentication ---------------------------------------------------------------------------


def test_health_is_anonymous_json(archive, clinic_a):
    status, headers, body = request(archive, "/securepacs/health")
    assert status == 200, body[:300]
    assert headers.get_content_type() == "application/json"
    report = json.loads(body)
    assert report["service"] == "securepacs"
    assert "version" not in report  # not to anyone (test_platform_health.py: who sees versions)
    components = report["components"]
    assert {"orthanc", "store", "platform"} <= set(components), components
    # The platform is degraded where the running Orthanc has a known CVE (natively 1.10.1): the rest is ok.
    assert all(c["status"] == "ok" for name, c in components.items() if name != "platform"), components
    assert report["status"] == ("ok" if components["platform"]["status"] == "ok" else "degraded"), report


@pytest.mark.parametrize("path", PROTECTED)
def test_rest_api_needs_credentials(archive, clinic_a, path):
    status, _, body = request(archive, path)
    assert status in REFUSED, f"GET {path} without credentials -> {status}: {body[:200]!r}"
    assert b"ApiVersion" not in body and not body.lstrip().startswith((b"[", b"{")), body[:200]
    # Control: the same request with the admin credential is served.
    status, _, _ = request(archive, path, headers={"Authorization": basic(*archive.admin_credential())})
    assert status == 200


def _bad_authorizations(archive) -> dict[str, str]:
    user, password = archive.admin_credential()
    return {
        "wrong password": basic(user, "not-the-password"),
        "password with a suffix": basic(user, password + "x"),
        "empty password": basic(user, ""),
        "unknown user, admin's password": basic("nosuchuser", password),
        "no colon": "Basic " + base64.b64encode(f"{user}{password}".encode()).decode(),
        "not base64": "Basic !!!not-base64!!!",
        "bearer scheme": f"Bearer {password}",
    }


@pytest.mark.parametrize(
    "case",
    [
        "wrong password",
        "password with a suffix",
        "empty password",
        "unknown user, admin's password",
        "no colon",
        "not base64",
        "bearer scheme",
    ],
)
def test_bad_credentials_are_refused(archive, clinic_a, case):
    status, _, body = request(archive, "/system", headers={"Authorization": _bad_authorizations(archive)[case]})
    # Orthanc's HTTP server itself answers 400 to an Authorization header it cannot decode, before the filter.
    expected = (400,) if case == "not base64" else REFUSED
    assert status in expected, f"{case}: GET /system -> {status}: {body[:200]!r}"
    assert b"ApiVersion" not in body


def test_admin_basic_auth_serves_get_and_post(archive, clinic_a):
    auth = {"Authorization": basic(*archive.admin_credential())}
    status, _, body = request(archive, "/system", headers=auth)
    assert status == 200 and "ApiVersion" in json.loads(body)

    query = json.dumps({"Level": "Study", "Query": {}}).encode()
    status, _, body = request(archive, "/tools/find", method="POST", body=query, headers=auth)
    assert status == 200, body[:300]
    assert isinstance(json.loads(body), list)
    # Writes are protected like reads.
    status, _, _ = request(archive, "/tools/find", method="POST", body=query)
    assert status in REFUSED


# -- response headers ------------------------------------------------------------------------------------


def _check_security_headers(headers: http.client.HTTPMessage, what: str) -> None:
    hsts = headers.get("Strict-Transport-Security", "")
    max_age = re.search(r"max-age=(\d+)", hsts)
    assert max_age and int(max_age[1]) >= 31_536_000, f"{what}: HSTS {hsts!r}"
    assert "includesubdomains" in hsts.lower(), f"{what}: HSTS {hsts!r}"
    assert headers.get("X-Content-Type-Options", "").lower() == "nosniff", what
    assert headers.get("X-Frame-Options", "").upper() in ("DENY", "SAMEORIGIN"), what
    assert headers.get("Referrer-Policy"), what
    server = headers.get("Server")
    assert server is None or not re.search(r"\d", server), f"{what}: Server header leaks a version: {server!r}"
    assert headers.get("X-Powered-By") is None, what
    for name, value in headers.items():
        assert "orthanc/" not in value.lower() and "nginx/" not in value.lower(), f"{what}: {name}: {value}"


def test_security_headers_on_every_kind_of_response(archive, clinic_a):
    auth = {"Authorization": basic(*archive.admin_credential())}
    cases = {
        "health 200": ("/securepacs/health", {}, 200),
        "unauthenticated 401/403": ("/system", {}, REFUSED),
        "authenticated 200": ("/system", auth, 200),
        "not found 404": (f"/patients/{uuid.uuid4().hex}", auth, 404),
        "oversized header 400": ("/securepacs/health", {"X-Big": "a" * 65536}, (400, 494)),
    }
    for what, (path, headers, expected) in cases.items():
        status, resp_headers, body = request(archive, path, headers=headers)
        assert status == expected or (isinstance(expected, tuple) and status in expected), f"{what}: {status}"
        _check_security_headers(resp_headers, what)
        assert b"nginx/" not in body and b"Orthanc/" not in body, f"{what}: version in body {body[:300]!r}"


# -- what is not exposed ---------------------------------------------------------------------------------


def test_orthanc_config_forbids_remote_http_access(archive, clinic_a):
    """Orthanc answers only loopback peers; nothing in the (merged) configuration turns that back on."""
    values = {}
    for path in sorted((archive.data_dir / "config").glob("*.json")):
        config = json.loads(path.read_text())
        for key in ("RemoteAccessAllowed", "SslEnabled", "AuthenticationEnabled"):
            if key in config:
                values.setdefault(key, []).append((path.name, config[key]))
    assert values.get("RemoteAccessAllowed"), "RemoteAccessAllowed is not set: Orthanc's default is true"
    assert all(v is False for _, v in values["RemoteAccessAllowed"]), values


def test_internal_http_port_refuses_non_loopback_peers(native_archive):
    """Orthanc's own HTTP port (behind nginx) listens on all addresses but must answer loopback only.

    Connecting to this host's non-loopback address makes us a non-loopback peer. Even the admin credential
    plus a forged client-IP header claiming to be the proxy must not get through.
    """
    archive = native_archive
    address = non_loopback_ipv4()
    forged = {
        "Authorization": basic(*archive.admin_credential()),
        CLIENT_IP_HEADER: "127.0.0.1",
        "X-Forwarded-For": "127.0.0.1",
    }
    for path, headers in (("/securepacs/health", {}), ("/system", forged)):
        status, body = plain_http(address, archive.http_port, path, headers)
        # Orthanc's own RemoteAccessAllowed=false check answers 401 (with its Basic challenge), before our filter.
        assert status == 401, f"{path} from {address} -> {status}: {body[:200]!r}"
        assert b"ApiVersion" not in body and b"securepacs" not in body
    # Control: from loopback (where nginx connects from) the same request is served.
    status, body = plain_http("127.0.0.1", archive.http_port, "/system", forged)
    assert status == 200 and b"ApiVersion" in body
    archive.assert_serving()


def _logged_client_ip(archive, marker: str, timeout: float = 30) -> str:
    pattern = re.compile(rf"HTTP GET '/patients/{marker}' from '([^']*)' refused")
    deadline = time.monotonic() + timeout
    while True:
        found = pattern.search(archive.log_text())
        if found:
            return found[1]
        if time.monotonic() > deadline:
            raise AssertionError(f"no refusal logged for /patients/{marker}:\n{archive.log_text()[-3000:]}")
        time.sleep(0.3)


def test_nginx_overwrites_a_client_supplied_ip_header(archive, clinic_a):
    """The plugin trusts the client-IP header from the proxy; nginx must set it, never pass the client's on.

    Observed through the plugin's refusal log line, which names the client address it decided on (an INFO
    message, so Orthanc's log level is raised to verbose for the duration of the test).
    """
    address = non_loopback_ipv4()
    auth = {"Authorization": basic(*archive.admin_credential())}
    status, _, level = request(archive, "/tools/log-level", headers=auth)
    assert status == 200
    status, _, _ = request(archive, "/tools/log-level", method="PUT", body=b"verbose", headers=auth)
    assert status == 200
    try:
        if archive.kind == "native":
            # Control: with nginx's proxy secret (from loopback) the plugin does take the header's value, so a
            # header passed through by nginx would show up in the log line.
            control = uuid.uuid4().hex
            secret = (archive.certs_dir / "proxy" / "secret").read_text().strip()
            status, _ = plain_http(
                "127.0.0.1", archive.http_port, f"/patients/{control}",
                {CLIENT_IP_HEADER: "203.0.113.78", "X-SecurePACS-Proxy-Secret": secret},
            )
            assert status in REFUSED
            assert _logged_client_ip(archive, control) == "203.0.113.78"

        marker = uuid.uuid4().hex
        status, _, _ = request(
            archive,
            f"/patients/{marker}",
            address=address,
            headers={CLIENT_IP_HEADER: SPOOFED_IP, "X-Forwarded-For": SPOOFED_IP},
        )
        assert status in REFUSED
        logged = _logged_client_ip(archive, marker)
        assert SPOOFED_IP not in logged, f"nginx passed the client's {CLIENT_IP_HEADER} through: {logged!r}"
        if archive.kind == "native":
            assert logged == address  # nginx's $remote_addr: the address we connected from
        else:
            assert re.fullmatch(r"[0-9a-fA-F.:]+", logged), logged  # docker's proxy address, one address only
    finally:
        request(archive, "/tools/log-level", method="PUT", body=level.strip() or b"default", headers=auth)


def test_plain_http_is_not_served_on_the_https_port(archive, clinic_a):
    targets = [("127.0.0.1", socket.AF_INET), (non_loopback_ipv4(), socket.AF_INET), ("::1", socket.AF_INET6)]
    answered = []
    for address, family in targets:
        try:
            status, body = plain_http(address, archive.https_port, "/securepacs/health", family=family)
        except ConnectionRefusedError:
            continue  # nothing listens there at all (e.g. no IPv6 listener): not served either
        answered.append(address)
        assert status == 400, f"plain HTTP to {address}:{archive.https_port} -> {status}"
        assert b"plain HTTP request was sent to HTTPS port" in body, body[:300]
        assert b'"service"' not in body and b"securepacs" not in body.lower(), body[:300]
    assert "127.0.0.1" in answered
    archive.assert_serving()


def test_only_the_expected_ports_are_exposed(archive, clinic_a):
    """DICOM-TLS and HTTPS are the only ports offered; Orthanc's HTTP port is loopback-only (native) or
    not published at all (compose); there is no plain DICOM listener."""
    if archive.kind == "compose":
        container = archive.compose("ps", "-q", "archive").stdout.strip()
        out = subprocess.run(
            ["docker", "port", container], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        published = {line.split(" -> ")[0] for line in out.splitlines() if " -> " in line}
        host_ports = {int(line.rsplit(":", 1)[1]) for line in out.splitlines() if " -> " in line}
        assert published == {"2762/tcp", "8443/tcp"}, out
        assert host_ports == {archive.dicom_port, archive.https_port}, out
        return
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, timeout=30, check=True).stdout
    pids = process_tree(archive.proc.pid)
    ports = set()
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            ports.add(int(line.split()[3].rsplit(":", 1)[1]))
    # Besides DICOM (the gateway) and HTTPS: Orthanc's HTTP port (loopback only), the gateway's egress relay
    # (loopback) and Orthanc's internal DICOM port, which Orthanc 1.10 cannot bind to loopback; it speaks
    # TLS only and trusts only the internal CA (test_gateway checks a clinic certificate is refused there).
    internal = int(archive.env["SECUREPACS_INTERNAL_DICOM_PORT"])
    egress = int(archive.env["SECUREPACS_EGRESS_PORT"])
    assert ports == {archive.dicom_port, archive.https_port, archive.http_port, internal, egress}, out


# -- limits ----------------------------------------------------------------------------------------------


def test_oversized_request_header_is_refused(archive, clinic_a):
    status, _, body = request(archive, "/securepacs/health", headers={"X-Big": "a" * 65536})
    assert status in (400, 494), status
    assert b'"service"' not in body
    # Control: a header of ordinary size on the same request is fine.
    status, _, _ = request(archive, "/securepacs/health", headers={"X-Big": "a" * 4096})
    assert status == 200
    archive.assert_serving()


def test_request_body_limit_is_configured_and_enforced(archive, clinic_a):
    found = re.search(r"^\s*client_max_body_size\s+(\S+);", nginx_conf(archive), re.MULTILINE)
    assert found, "nginx has no client_max_body_size: its 1 MB default would silently cap DICOM uploads"
    limit = _size(found[1])
    assert 0 < limit <= 4 * 1024**3, found[1]

    # One byte over the limit is refused from the declared length alone, before any body is sent.
    ctx = ssl.create_default_context(cafile=str(archive.ca_cert))
    conn = http.client.HTTPSConnection(archive.host, archive.https_port, context=ctx, timeout=30)
    try:
        conn.putrequest("POST", "/instances")
        conn.putheader("Authorization", basic(*archive.admin_credential()))
        conn.putheader("Content-Type", "application/dicom")
        conn.putheader("Content-Length", str(limit + 1))
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413, resp.status
    finally:
        conn.close()
    archive.assert_serving()


# -- secrets on disk -------------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secret_files_are_private(archive, clinic_a):
    credential = archive.data_dir / "secrets" / "admin-credential.txt"
    assert _mode(credential) == 0o600, oct(_mode(credential))
    assert _mode(credential.parent) & 0o077 == 0, oct(_mode(credential.parent))
    for key in (archive.certs_dir / "server" / "server.key", archive.certs_dir / "ca" / "ca.key", clinic_a.key):
        # The server key: 0640 for the securepacs-tls group (the gateway and nginx read it, Orthanc does not).
        assert _mode(key) == (0o640 if key.name == "server.key" else 0o600), f"{key}: {oct(_mode(key))}"
        assert b"PRIVATE KEY" in key.read_bytes()  # it is the key we think it is


def test_no_private_key_material_in_configuration(archive, clinic_a):
    config_files = [p for p in (archive.data_dir / "config").rglob("*") if p.is_file()]
    config_files += [p for p in (archive.data_dir / "nginx").glob("*.conf") if p.is_file()]
    assert any(p.suffix == ".json" for p in config_files)
    assert archive.kind == "compose" or any(p.name == "nginx.conf" for p in config_files)
    texts = [(str(p), p.read_bytes()) for p in config_files] + [("nginx.conf", nginx_conf(archive).encode())]
    for path, text in texts:
        assert b"PRIVATE KEY" not in text, f"private key material in {path}"
        assert archive.admin_credential()[1].encode() not in text, f"admin password in {path}"
