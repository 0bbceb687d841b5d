"""Prepare a data dir for running: PKI, first admin, Orthanc and nginx configuration.

Idempotent: running it again never regenerates existing keys, never replaces the admin credential
and never touches stored images; it only rewrites the generated configuration files. The native
launcher, the Docker image and the integration tests all call this, so what is tested is what runs.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import secrets
import shutil
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securepacs import passwords, user_admin
from securepacs.audit import create_checkpoint_key
from securepacs.identity import GATEWAY
from securepacs.internal_pki import InternalPki
from securepacs.pki import Pki
from securepacs.plugin_config import PROXY_SECRET_HEADER
from securepacs.settings import Settings
from securepacs.store import Store

log = logging.getLogger(__name__)

REPO_ROOT = Path(os.environ.get("SECUREPACS_HOME", Path(__file__).resolve().parents[2]))
ORTHANC_DIR = REPO_ROOT / "orthanc"
PLUGIN_SCRIPT = REPO_ROOT / "plugin" / "securepacs_plugin.py"
PYTHON_PLUGIN = Path(os.environ.get("SECUREPACS_PYTHON_PLUGIN", "/usr/share/orthanc/plugins/libOrthancPython.so"))
DICOMWEB_PLUGIN = Path(os.environ.get("SECUREPACS_DICOMWEB_PLUGIN", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"))
CLIENT_IP_HEADER = "X-SecurePACS-Client-IP"
ADMIN_USER = "admin"
# The gateway's service account is called GATEWAY_USER_PREFIX + 12 random hex digits: a name nobody outside
# can guess (so nobody can even aim at it), kept with its password in the gateway's credential file.
GATEWAY_USER_PREFIX = "svc-gateway-"


class DeployError(RuntimeError):
    """The data dir cannot be prepared; the message names the path and the problem."""


@dataclass(frozen=True)
class ServiceUsers:
    """Who runs what when started as root: Orthanc drops to ``orthanc``, nginx workers to ``www-data``."""

    orthanc: pwd.struct_passwd | None
    nginx_workers: str | None


@dataclass(frozen=True)
class Prepared:
    settings: Settings
    config_dir: Path
    nginx_conf: Path
    orthanc_env: dict[str, str]
    users: ServiceUsers
    admin_created: bool
    created_pki: bool


def service_users() -> ServiceUsers:
    if os.geteuid() != 0:
        return ServiceUsers(None, None)
    name = os.environ.get("SECUREPACS_USER", "orthanc")
    if name == "root":
        log.warning("SECUREPACS_USER=root: Orthanc runs as root (least privilege disabled on request)")
        return ServiceUsers(None, "www-data")
    try:
        return ServiceUsers(pwd.getpwnam(name), "www-data")
    except KeyError:
        raise DeployError(f"service user {name!r} does not exist (install the orthanc package or set "
                          "SECUREPACS_USER)") from None


def _chown(path: Path, user: pwd.struct_passwd | None) -> None:
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)


def _mkdir(path: Path, mode: int, user: pwd.struct_passwd | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    _chown(path, user)
    return path


def _write(path: Path, text: str, mode: int = 0o644, owner: pwd.struct_passwd | None = None) -> None:
    # Atomic replace: works even when an earlier (root) run owns the old file, and never leaves half a file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, mode)
    _chown(tmp, owner)
    os.replace(tmp, path)


def check_reachable(path: Path, user: pwd.struct_passwd | None) -> None:
    """Fail early, naming the directory, if the service user could not traverse to ``path``."""
    if user is None:
        return
    for parent in [*reversed(path.parents), path] if path.is_dir() else reversed(path.parents):
        st = parent.stat()
        can = (st.st_uid == user.pw_uid and st.st_mode & 0o100) or (
            st.st_gid == user.pw_gid and st.st_mode & 0o010) or st.st_mode & 0o001
        if not can:
            raise DeployError(
                f"the service user {user.pw_name!r} cannot enter {parent} (needed for {path}); "
                "move the checkout/data dir somewhere it can reach, or set SECUREPACS_USER=root"
            )


def ensure_admin(store: Store, credential_path: Path) -> bool:
    """Create the first admin with a generated password, written once to a 0600 file."""
    if store.count_users("admin"):
        return False
    password = user_admin.generate_password(ADMIN_USER)  # retries until it meets the strength rules
    _mkdir(credential_path.parent, 0o700)
    try:
        fd = os.open(credential_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise DeployError(f"{credential_path} exists but the store has no admin account (an interrupted first "
                          "start?): remove the file to create a new admin") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(f"username: {ADMIN_USER}\npassword: {password}\n")
    store.add_user(ADMIN_USER, passwords.hash_password(password), "admin")
    return True


def ensure_audit_key(path: Path, owner: pwd.struct_passwd | None) -> bool:
    """The Ed25519 key that signs the audit trail's checkpoints (the plugin signs, so the service user
    reads it); its public half next to it is what ``securepacs audit verify`` checks against."""
    if path.exists():
        return False
    _mkdir(path.parent, 0o755)
    create_checkpoint_key(path)
    _chown(path, owner)
    return True


def _credential_user(path: Path) -> str | None:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    fields = dict(line.split(": ", 1) for line in lines if ": " in line)
    return fields.get("username") if fields.get("password") else None


def ensure_gateway_account(store: Store, credential_path: Path, owner: pwd.struct_passwd | None) -> bool:
    """The gateway's service account (role ``gateway``: may only ask the plugin who owns what).

    Its name has a random suffix and its password is generated; both are kept only in a 0600 file the
    gateway reads. Idempotent: while the file names an existing gateway account, nothing changes. Otherwise
    (first start, file removed, or an earlier version's fixed ``gateway`` name) a new account is created,
    the file rewritten, and every other gateway-role account disabled (the store keeps accounts; a disabled
    service account can do nothing). Returns True when it changed anything.
    """
    gateways = {u.username for u in store.list_users() if u.role == GATEWAY and not u.disabled}
    named = _credential_user(credential_path)
    if named is not None and named in gateways and named.startswith(GATEWAY_USER_PREFIX):
        stale = gateways - {named}
    else:
        named = GATEWAY_USER_PREFIX + secrets.token_hex(6)
        password = user_admin.generate_password(named)
        store.add_user(named, passwords.hash_password(password), GATEWAY)
        _write(credential_path, f"username: {named}\npassword: {password}\n", mode=0o600, owner=owner)
        stale = gateways
    for old in sorted(stale):
        store.set_disabled(old, True)
        log.info("gateway service account %r replaced by %r and disabled", old, named)
    return named not in gateways or bool(stale)


def ensure_proxy_secret(directory: Path, owner: pwd.struct_passwd | None) -> tuple[Path, Path]:
    """nginx's per-deployment secret: ``secret`` (read by the plugin) and ``nginx.conf`` (the header line nginx
    includes). Generated once and kept, so separately prepared components (compose) agree; both files 0600
    for the service user (nginx's master reads its configuration as root, or as that user in compose).
    Remove the directory and restart everything to replace it."""
    _mkdir(directory, 0o700, owner)
    secret_path, conf_path = directory / "secret", directory / "nginx.conf"
    secret = secret_path.read_text(encoding="ascii").strip() if secret_path.exists() else ""
    if not secret:
        secret = secrets.token_urlsafe(32)
        _write(secret_path, secret + "\n", mode=0o600, owner=owner)
    _write(conf_path, f'proxy_set_header {PROXY_SECRET_HEADER} "{secret}";\n', mode=0o600, owner=owner)
    return secret_path, conf_path


def proxy_dir(s: Settings) -> Path:
    return s.data_dir / "proxy"


def orthanc_runtime_config(s: Settings, pki: Pki, storage_dir: Path) -> dict[str, Any]:
    internal = InternalPki(s.certs_dir)
    return {
        "DicomAet": s.aet,
        # Behind the gateway: clinics reach this port only through it (it trusts only the internal CA).
        "DicomPort": s.internal_dicom_port,
        "HttpPort": s.http_port,
        "StorageDirectory": str(storage_dir),
        "IndexDirectory": str(storage_dir),
        "DicomTlsCertificate": str(internal.cert_path("orthanc")),
        "DicomTlsPrivateKey": str(internal.key_path("orthanc")),
        "DicomTlsTrustedCertificates": str(internal.ca_cert_path),
        "Plugins": [str(PYTHON_PLUGIN), str(DICOMWEB_PLUGIN)],
        "PythonScript": str(PLUGIN_SCRIPT),
        # DICOMweb for viewers; nginx terminates TLS, so generated URLs must say https.
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "WadoRoot": "/wado",
            "Ssl": True,
            "StudiesMetadata": "MainDicomTags",
            "SeriesMetadata": "Full",
        },
        "SecurePACS": {
            "Store": str(s.store_path),
            "AuditTrail": str(s.audit_trail_path),
            "AuditCheckpointKey": str(s.audit_key_path),
            "TrustedProxies": ["127.0.0.1", "::1"],
            "ClientIpHeader": CLIENT_IP_HEADER,
            "ProxySecretFile": str(proxy_dir(s) / "secret"),
            "MoveRelayPort": s.egress_port,
            **({"SessionIdleSeconds": s.session_idle_seconds} if s.session_idle_seconds else {}),
            **({"InternalHop": "plain"} if s.internal_hop == "plain" else {}),
        },
    }


# SECUREPACS_INTERNAL_HOP=plain: Orthanc's DICOM port (and its C-MOVE associations to the gateway's egress
# relay) without TLS. Orthanc 1.10.1 cannot bind that port to loopback, so it then also accepts TCP from
# the network: only AE titles registered with host 127.0.0.1 (all of ours) may associate, checked by host.
_PLAIN_HOP = {"DicomTlsEnabled": False, "DicomCheckModalityHost": True}


def base_config_text(s: Settings) -> str:
    """``orthanc/orthanc.json`` as shipped; with the plain internal hop, its DICOM TLS keys changed in place
    (Orthanc refuses a key that two files of its configuration directory both define)."""
    text = (ORTHANC_DIR / "orthanc.json").read_text(encoding="utf-8")
    if s.internal_hop != "plain":
        return text
    base = json.loads(text)
    base.update(_PLAIN_HOP)
    return json.dumps(base, indent=2) + "\n"


def render_nginx(s: Settings, pki: Pki, nginx_dir: Path, users: ServiceUsers) -> str:
    # {{name}} placeholders: nginx's own $variables must pass through untouched.
    text = (ORTHANC_DIR / "nginx.conf.template").read_text(encoding="utf-8")
    values = {
        "user_directive": f"user {users.nginx_workers};" if users.nginx_workers else "",
        "nginx_dir": nginx_dir,
        "http_port": s.http_port,
        "https_port": s.https_port,
        "server_cert": pki.server_cert_path,
        "server_key": pki.server_key_path,
        "client_ip_header": CLIENT_IP_HEADER,
        "proxy_secret_conf": proxy_dir(s) / "nginx.conf",
    }
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", str(value))
    left = re.search(r"\{\{\w+\}\}", text)
    if left:
        raise DeployError(f"nginx template {ORTHANC_DIR / 'nginx.conf.template'} has unknown placeholder {left[0]}")
    return text


def prepare(s: Settings, *, with_nginx: bool = True) -> Prepared:
    users = service_users()
    for tool in ("Orthanc", "nginx"):
        if shutil.which(tool) is None:
            raise DeployError(f"{tool} is not installed: run scripts/up (or orthanc/install.sh) as root")
    if not PYTHON_PLUGIN.exists():
        raise DeployError(f"Orthanc's Python plugin {PYTHON_PLUGIN} is missing: install orthanc-python")
    if not DICOMWEB_PLUGIN.exists():
        raise DeployError(f"Orthanc's DICOMweb plugin {DICOMWEB_PLUGIN} is missing: install orthanc-dicomweb")

    _mkdir(s.data_dir, 0o750, users.orthanc)
    check_reachable(s.data_dir, users.orthanc)
    check_reachable(PLUGIN_SCRIPT, users.orthanc)
    storage = _mkdir(s.data_dir / "orthanc", 0o700, users.orthanc)

    pki = Pki(s.certs_dir)
    if pki.ca_key_path.exists() and not os.access(pki.ca_key_path, os.R_OK):
        # An unprivileged component (compose's archive/https services): the init step owns the CA key.
        reason = pki.server_renewal_reason(list(s.hostnames))
        if reason:
            raise DeployError(f"server certificate {pki.server_cert_path} must be re-issued ({reason}): "
                              "run the init step (`securepacs serve --prepare-only` as root)")
        created = False
    else:
        created = pki.ensure_ca()
        created = pki.ensure_server(list(s.hostnames)) or created
    # Orthanc (unprivileged) needs its key; the CA key stays root-only.
    _chown(pki.server_key_path, users.orthanc)
    check_reachable(pki.server_key_path, users.orthanc)
    internal = InternalPki(s.certs_dir)
    if internal.ca_key_path.exists() and not os.access(internal.ca_key_path, os.R_OK):
        if not internal.complete():
            raise DeployError(f"internal certificates in {internal.dir} are incomplete: run the init step "
                              "(`securepacs serve --prepare-only` as root)")
    else:
        created = internal.ensure() or created
        if users.orthanc is not None:
            internal.hand_over(users.orthanc.pw_uid, users.orthanc.pw_gid)

    _mkdir(s.audit_dir, 0o700, users.orthanc)
    ensure_audit_key(s.audit_key_path, users.orthanc)

    store = Store(s.store_path)
    try:
        admin_created = ensure_admin(store, s.admin_credential_path)
        _mkdir(s.gateway_dir, 0o700, users.orthanc)
        ensure_gateway_account(store, s.gateway_credential_path, users.orthanc)
    finally:
        store.close()
    ensure_proxy_secret(proxy_dir(s), users.orthanc)

    config_dir = _mkdir(s.data_dir / "config", 0o750, users.orthanc)
    _write(config_dir / "00-base.json", base_config_text(s), owner=users.orthanc)
    runtime = json.dumps(orthanc_runtime_config(s, pki, storage), indent=2) + "\n"
    _write(config_dir / "10-runtime.json", runtime, owner=users.orthanc)

    nginx_conf = s.nginx_dir / "nginx.conf"
    if with_nginx:
        nginx_dir = _mkdir(s.nginx_dir, 0o755)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            path = _mkdir(nginx_dir / "tmp" / sub, 0o700)
            if users.nginx_workers:
                shutil.chown(path, users.nginx_workers)
        _write(nginx_conf, render_nginx(s, pki, nginx_dir, users))

    env = {
        # Debian's DCMTK leaves Nagle on: ~50 ms idle per C-STORE without this (measured 3.7x).
        "TCP_NODELAY": "1",
        "OPENSSL_CONF": str(ORTHANC_DIR / "openssl.cnf"),
        "PYTHONPATH": os.pathsep.join([str(PLUGIN_SCRIPT.parent), sysconfig.get_paths()["purelib"]]),
    }
    return Prepared(s, config_dir, nginx_conf, env, users, admin_created, created)
