"""Pieces of ``deploy.prepare`` that need neither Orthanc nor nginx: templates, configuration, first admin."""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from securepacs.access import passwords, user_admin
from securepacs.config import plugin_settings
from securepacs.config.environment import Settings
from securepacs.ops import deploy, gateway_account
from securepacs.ops.deploy import DeployError, ServiceUsers
from securepacs.pki.authority import Pki
from securepacs.pki.internal_ca import InternalPki
from securepacs.store.database import Store

FAKE_UID = 12345


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path / "data", certs_dir=tmp_path / "certs", dicom_port=12762, https_port=18443,
                 http_port=18042, aet="TEST_PACS", hostnames=("localhost",))
    deploy.ensure_proxy_secret(deploy.proxy_dir(s), None)  # what prepare() does before Orthanc reads its config
    return s


@pytest.fixture
def pki(settings: Settings) -> Pki:
    return Pki(settings.certs_dir)  # only paths are used: no keys are generated


# -- nginx -------------------------------------------------------------------------------------------------
def test_render_nginx_fills_every_placeholder(settings: Settings, pki: Pki, tmp_path: Path) -> None:
    nginx_dir = tmp_path / "nginx"
    text = deploy.render_nginx(settings, pki, nginx_dir, ServiceUsers(None, "www-data"))
    assert re.search(r"\{\{\w+\}\}", text) is None
    assert "user www-data;" in text.splitlines()
    assert f"pid {nginx_dir}/nginx.pid;" in text
    assert f"client_body_temp_path {nginx_dir}/tmp/body;" in text
    assert "server 127.0.0.1:18042;" in text
    assert "listen 18443 ssl;" in text
    assert f"ssl_certificate {pki.server_cert_path};" in text
    assert f"ssl_certificate_key {pki.server_key_path};" in text
    # nginx sets (never appends) the client address header the plugin trusts from the proxy.
    assert "proxy_set_header X-SecurePACS-Client-IP $remote_addr;" in text


def test_render_nginx_leaves_nginx_variables_alone(settings: Settings, pki: Pki, tmp_path: Path) -> None:
    template = (deploy.ORTHANC_DIR / "nginx.conf.template").read_text(encoding="utf-8")
    text = deploy.render_nginx(settings, pki, tmp_path / "nginx", ServiceUsers(None, None))
    variables = re.findall(r"\$\w+", template)
    assert variables  # the template does use nginx variables ($remote_addr, $host, ...)
    assert re.findall(r"\$\w+", text) == variables
    assert "$remote_addr" in text and "$http_host" in text


def test_render_nginx_without_worker_user(settings: Settings, pki: Pki, tmp_path: Path) -> None:
    text = deploy.render_nginx(settings, pki, tmp_path / "nginx", ServiceUsers(None, None))
    assert not any(line.startswith("user ") for line in text.splitlines())


def test_render_nginx_refuses_an_unknown_placeholder(
    settings: Settings, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    orthanc_dir = tmp_path / "orthanc"
    orthanc_dir.mkdir()
    (orthanc_dir / "nginx.conf.template").write_text("listen {{https_port}};\nroot {{document_root}};\n")
    monkeypatch.setattr(deploy, "ORTHANC_DIR", orthanc_dir)
    with pytest.raises(DeployError, match=r"nginx.conf.template has unknown placeholder \{\{document_root\}\}"):
        deploy.render_nginx(settings, pki, tmp_path / "nginx", ServiceUsers(None, None))


# -- Orthanc configuration ---------------------------------------------------------------------------------
def test_orthanc_runtime_config(settings: Settings, pki: Pki, tmp_path: Path) -> None:
    storage = tmp_path / "data" / "orthanc"
    cfg = deploy.orthanc_runtime_config(settings, pki, storage)
    assert cfg["DicomAet"] == "TEST_PACS"
    # Orthanc's DICOM port is the internal one behind the gateway, and trusts only the internal CA: clinic
    # certificates (public CA) cannot reach it directly.
    assert (cfg["DicomPort"], cfg["HttpPort"]) == (settings.internal_dicom_port, 18042)
    assert cfg["DicomPort"] != settings.dicom_port
    assert cfg["StorageDirectory"] == cfg["IndexDirectory"] == str(storage)
    internal = InternalPki(settings.certs_dir)
    assert cfg["DicomTlsCertificate"] == str(internal.cert_path("orthanc"))
    assert cfg["DicomTlsPrivateKey"] == str(internal.key_path("orthanc"))
    assert cfg["DicomTlsTrustedCertificates"] == str(internal.ca_cert_path) != str(pki.ca_cert_path)
    assert cfg["SecurePACS"]["MoveRelayPort"] == settings.egress_port
    assert cfg["Plugins"] == [str(deploy.PYTHON_PLUGIN), str(deploy.DICOMWEB_PLUGIN)]
    assert cfg["PythonScript"] == str(deploy.PLUGIN_SCRIPT)
    assert Path(cfg["PythonScript"]).is_file() and Path(cfg["PythonScript"]).name == "securepacs_plugin.py"
    assert cfg["SecurePACS"]["Store"] == str(settings.store_path)
    # Without an override the plugin's own session default applies: the key is left out.
    assert "SessionIdleSeconds" not in cfg["SecurePACS"]
    json.dumps(cfg)  # written as JSON


def test_orthanc_runtime_config_serves_dicomweb_behind_tls(settings: Settings, pki: Pki, tmp_path: Path) -> None:
    web = deploy.orthanc_runtime_config(settings, pki, tmp_path / "storage")["DicomWeb"]
    assert web["Enable"] is True and web["EnableWado"] is True
    assert (web["Root"], web["WadoRoot"]) == ("/dicom-web/", "/wado")
    # The policy's DICOMweb and WADO-URI rules are written for exactly these roots.
    assert web["Ssl"] is True  # nginx terminates TLS: URLs Orthanc generates must say https


def test_orthanc_runtime_config_passes_the_session_idle_limit(settings: Settings, pki: Pki, tmp_path: Path) -> None:
    configured = dataclasses.replace(settings, session_idle_seconds=600)
    cfg = deploy.orthanc_runtime_config(configured, pki, tmp_path / "storage")
    assert cfg["SecurePACS"]["SessionIdleSeconds"] == 600
    base = json.loads((deploy.ORTHANC_DIR / "orthanc.json").read_text(encoding="utf-8"))
    assert plugin_settings.parse({**base, **cfg}).session_idle_seconds == 600


def test_every_accepted_session_idle_limit_starts_the_plugin(settings: Settings, pki: Pki, tmp_path: Path) -> None:
    # The largest value from_env accepts must still satisfy SessionMaxSeconds (default) >= SessionIdleSeconds.
    configured = dataclasses.replace(settings, session_idle_seconds=43200)
    base = json.loads((deploy.ORTHANC_DIR / "orthanc.json").read_text(encoding="utf-8"))
    cfg = deploy.orthanc_runtime_config(configured, pki, tmp_path / "storage")
    assert plugin_settings.parse({**base, **cfg}).session_idle_seconds == 43200


def test_generated_configuration_is_accepted_by_the_plugin(settings: Settings, pki: Pki, tmp_path: Path) -> None:
    # What deploy writes (base file + runtime file, merged by Orthanc) must pass the plugin's own validation,
    # and the header nginx sets must be the one the plugin reads.
    base = json.loads((deploy.ORTHANC_DIR / "orthanc.json").read_text(encoding="utf-8"))
    merged = {**base, **deploy.orthanc_runtime_config(settings, pki, tmp_path / "storage")}
    parsed = plugin_settings.parse(merged)
    assert parsed.store_path == settings.store_path
    assert parsed.client_ip_header == deploy.CLIENT_IP_HEADER.lower()
    assert parsed.trusted_proxies == ("127.0.0.1", "::1")
    assert merged["DicomTlsEnabled"] is True and merged["DicomTlsRemoteCertificateRequired"] is True
    nginx = deploy.render_nginx(settings, pki, tmp_path / "nginx", ServiceUsers(None, None))
    assert f"proxy_set_header {deploy.CLIENT_IP_HEADER} $remote_addr;" in nginx
    assert f"server 127.0.0.1:{merged['HttpPort']};" in nginx


# -- first admin -------------------------------------------------------------------------------------------
@pytest.fixture
def fast_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    real = passwords.hash_password
    monkeypatch.setattr(passwords, "hash_password", lambda password: real(password, n=2**10))


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = Store(settings.store_path)
    yield s
    s.close()


def read_credential(path: Path) -> tuple[str, str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and lines[0].startswith("username: ") and lines[1].startswith("password: ")
    return lines[0].removeprefix("username: "), lines[1].removeprefix("password: ")


def test_ensure_admin_creates_a_private_credential_once(fast_hash: None, store: Store, settings: Settings) -> None:
    path = settings.admin_credential_path
    assert deploy.ensure_admin(store, path) is True

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    username, password = read_credential(path)
    assert username == "admin"
    passwords.check_strength(password)
    user_admin.check_password_strength(password, "admin")  # the same rules as a password an admin sets
    user = store.get_user("admin")
    assert user is not None and user.role == "admin" and not user.disabled
    assert passwords.verify_password(password, user.password_hash)
    assert password not in user.password_hash

    before = (path.read_bytes(), path.stat().st_mtime_ns)
    generation = store.generation()
    assert deploy.ensure_admin(store, path) is False
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert store.count_users() == 1
    assert store.generation() == generation


def test_ensure_admin_does_nothing_when_an_admin_exists(fast_hash: None, store: Store, settings: Settings) -> None:
    store.add_user("root-admin", "scrypt$x", "admin")
    assert deploy.ensure_admin(store, settings.admin_credential_path) is False
    assert not settings.admin_credential_path.exists()


def test_ensure_admin_never_overwrites_an_existing_credential(
    fast_hash: None, store: Store, settings: Settings
) -> None:
    path = settings.admin_credential_path
    path.parent.mkdir(parents=True)
    path.write_text("username: admin\npassword: keep-me\n")
    with pytest.raises((FileExistsError, DeployError)):
        deploy.ensure_admin(store, path)
    assert path.read_text() == "username: admin\npassword: keep-me\n"
    assert store.count_users() == 0


# -- reachability for the service user ---------------------------------------------------------------------
def fake_user() -> pwd.struct_passwd:
    # Made per test, not at module level: a module-global struct_passwd made CPython 3.11 print
    # "SystemError: longobject.c:575: bad argument" while clearing module dicts at exit (full unit suite).
    return pwd.struct_passwd(("svc-test", "x", FAKE_UID, FAKE_UID, "", "/", "/bin/sh"))


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A directory every user can traverse, with a traversable chain up to / (pytest's tmp_path is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="securepacs-reach-"))
    os.chmod(base, 0o755)  # noqa: S103 - traversable on purpose
    try:
        if any(not (p.stat().st_mode & 0o001) for p in base.parents):
            pytest.skip(f"{base.parent} is not world-traversable on this machine")
        yield base
    finally:
        shutil.rmtree(base)


def test_check_reachable_without_a_service_user(tmp_path: Path) -> None:
    deploy.check_reachable(tmp_path, None)


def test_check_reachable_accepts_an_open_chain(open_base: Path) -> None:
    data = open_base / "data"
    data.mkdir(mode=0o755)
    script = data / "plugin.py"
    script.write_text("")
    deploy.check_reachable(data, fake_user())
    deploy.check_reachable(script, fake_user())


def test_check_reachable_names_the_locked_directory(open_base: Path) -> None:
    locked = open_base / "home"
    data = locked / "data"
    data.mkdir(parents=True)
    os.chmod(locked, 0o700)
    assert locked.stat().st_uid != FAKE_UID
    with pytest.raises(DeployError) as info:
        deploy.check_reachable(data, fake_user())
    message = str(info.value)
    assert f"the service user 'svc-test' cannot enter {locked} (needed for {data})" in message
    assert "SECUREPACS_USER=root" in message


def test_check_reachable_checks_the_directory_itself(open_base: Path) -> None:
    data = open_base / "data"
    data.mkdir(mode=0o700)
    with pytest.raises(DeployError, match=f"cannot enter {re.escape(str(data))} "):
        deploy.check_reachable(data, fake_user())


def test_check_reachable_for_a_file_checks_only_its_parents(open_base: Path) -> None:
    secret = open_base / "server.key"
    secret.write_text("")
    os.chmod(secret, 0o600)  # the file's own mode is not about traversal
    deploy.check_reachable(secret, fake_user())
    locked = open_base / "server"
    locked.mkdir(mode=0o700)
    (locked / "server.key").write_text("")
    with pytest.raises(DeployError, match=f"cannot enter {re.escape(str(locked))} "):
        deploy.check_reachable(locked / "server.key", fake_user())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand a directory to another uid")
@pytest.mark.parametrize(("owner", "mode"), [((FAKE_UID, 0), 0o700), ((0, FAKE_UID), 0o710)])
def test_check_reachable_accepts_owner_or_group_access(open_base: Path, owner: tuple[int, int], mode: int) -> None:
    data = open_base / "data"
    data.mkdir()
    os.chown(data, *owner)
    os.chmod(data, mode)
    deploy.check_reachable(data, fake_user())


def _credential(path: Path) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in path.read_text().splitlines())


def test_gateway_account_is_created_once_with_a_private_credential(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    try:
        path = tmp_path / "gateway" / "credential.txt"
        path.parent.mkdir()
        assert gateway_account.ensure_gateway_account(store, path, None) is True
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        fields = _credential(path)
        # Not guessable: a random suffix (48 bits) after the prefix, kept in the credential file.
        assert re.fullmatch(r"svc-gateway-[0-9a-f]{12}", fields["username"]), fields["username"]
        user = store.get_user(fields["username"])
        assert user is not None and user.role == "gateway" and user.clinic is None
        assert passwords.verify_password(fields["password"], user.password_hash)
        assert gateway_account.ensure_gateway_account(store, path, None) is False  # kept across starts
        assert _credential(path) == fields
        path.unlink()  # lost file: a new account; the old one is disabled
        assert gateway_account.ensure_gateway_account(store, path, None) is True
        new = _credential(path)
        assert new["username"] != fields["username"] and new["password"] != fields["password"]
        assert passwords.verify_password(new["password"], store.get_user(new["username"]).password_hash)
        assert store.get_user(fields["username"]).disabled
        assert [u.username for u in store.list_users() if u.role == "gateway" and not u.disabled] == [new["username"]]
    finally:
        store.close()


def test_the_fixed_gateway_name_of_earlier_versions_is_replaced(fast_hash: None, tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    try:
        path = tmp_path / "credential.txt"
        store.add_user("gateway", passwords.hash_password("Old-gateway-pw-1"), "gateway")
        path.write_text("username: gateway\npassword: Old-gateway-pw-1\n")
        assert gateway_account.ensure_gateway_account(store, path, None) is True
        fields = _credential(path)
        assert fields["username"].startswith(gateway_account.GATEWAY_USER_PREFIX)
        assert store.get_user("gateway").disabled and not store.get_user(fields["username"]).disabled
        assert gateway_account.ensure_gateway_account(store, path, None) is False
    finally:
        store.close()


def test_the_proxy_secret_is_generated_once_and_private(tmp_path: Path) -> None:
    secret_path, conf_path = deploy.ensure_proxy_secret(tmp_path / "proxy", None)
    secret = secret_path.read_text().strip()
    assert len(secret) >= 40
    for path in (secret_path, conf_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "proxy").stat().st_mode) == 0o700
    assert conf_path.read_text() == f'proxy_set_header X-SecurePACS-Proxy-Secret "{secret}";\n'
    deploy.ensure_proxy_secret(tmp_path / "proxy", None)
    assert secret_path.read_text().strip() == secret  # kept: separately prepared components must agree


def test_nginx_includes_the_proxy_secret_and_hides_internal_routes(settings: Settings, pki: Pki,
                                                                    tmp_path: Path) -> None:
    text = deploy.render_nginx(settings, pki, tmp_path / "nginx", ServiceUsers(None, None))
    secret = (deploy.proxy_dir(settings) / "secret").read_text().strip()
    assert secret not in text  # the rendered configuration is world-readable: the secret stays in its file
    assert f"include {deploy.proxy_dir(settings) / 'nginx.conf'};" in text
    assert re.search(r"location \^~ /securepacs/internal \{\s*return 404;", text)
    assert re.search(r"location = /securepacs/login \{\s*limit_req zone=securepacs_login", text)


def test_the_audit_trail_is_configured_with_its_key_outside_the_trail(settings: Settings, pki: Pki,
                                                                       tmp_path: Path) -> None:
    cfg = deploy.orthanc_runtime_config(settings, pki, tmp_path / "storage")["SecurePACS"]
    assert cfg["AuditTrail"] == str(settings.data_dir / "audit" / "trail.jsonl")
    assert "AuditCheckpointKey" not in cfg  # Orthanc must not hold the key: the audit signer (own uid) does
    base = json.loads((deploy.ORTHANC_DIR / "orthanc.json").read_text(encoding="utf-8"))
    full = {**base, **deploy.orthanc_runtime_config(settings, pki, tmp_path / "storage")}
    assert plugin_settings.parse(full).audit_trail == settings.audit_trail_path


def test_the_checkpoint_key_is_created_once_owner_only(tmp_path: Path) -> None:
    key = tmp_path / "certs" / "audit" / "checkpoint.key"
    assert deploy.ensure_audit_key(key, None) is True
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = key.read_bytes()
    assert (key.parent / "checkpoint.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert deploy.ensure_audit_key(key, None) is False and key.read_bytes() == first  # never replaced


def test_the_plain_internal_hop_is_explicit_and_checked_by_host(settings: Settings, pki: Pki,
                                                                tmp_path: Path) -> None:
    plain = dataclasses.replace(settings, internal_hop="plain")
    base = json.loads(deploy.base_config_text(plain))
    runtime = deploy.orthanc_runtime_config(plain, pki, tmp_path / "storage")
    assert (base["DicomTlsEnabled"], base["DicomCheckModalityHost"]) == (False, True)
    assert runtime["SecurePACS"]["InternalHop"] == "plain"
    assert not set(base) & set(runtime)  # Orthanc refuses a key defined in two files of its config dir
    config = plugin_settings.parse({**base, **runtime})
    assert config.dicom_tls is False
    # The default stays TLS, byte for byte the shipped base configuration.
    assert deploy.base_config_text(settings) == (deploy.ORTHANC_DIR / "orthanc.json").read_text(encoding="utf-8")
    assert "InternalHop" not in deploy.orthanc_runtime_config(settings, pki, tmp_path / "storage")["SecurePACS"]
