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
import shutil
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securepacs.access import passwords, user_admin
from securepacs.audit import create_checkpoint_key
from securepacs.audit.checkpoints import CHECKPOINTS_FILE
from securepacs.config import environment
from securepacs.config.environment import Settings
from securepacs.durable.atomic_file import write_atomically
from securepacs.ops.gateway_account import ensure_gateway_account
from securepacs.ops.proxy_secret import ensure_proxy_secret, proxy_dir
from securepacs.ops.service_accounts import (
    GATEWAY_ACCOUNT,
    SIGNER_ACCOUNT,
    TLS_GROUP,
    TRAIL_GROUP,
    AccountError,
    ensure_service_accounts,
    gid,
)
from securepacs.pki.authority import Pki
from securepacs.pki.internal_ca import InternalPki
from securepacs.platform import orthanc_binary, orthanc_options
from securepacs.platform.orthanc_binary import OrthancBinary
from securepacs.store.database import Store

log = logging.getLogger(__name__)

REPO_ROOT = Path(environment.env_value(os.environ, "SECUREPACS_HOME") or Path(__file__).resolve().parents[3])
ORTHANC_DIR = REPO_ROOT / "orthanc"
PLUGIN_SCRIPT = REPO_ROOT / "plugin" / "securepacs_plugin.py"
PYTHON_PLUGIN = Path(environment.env_value(os.environ, "SECUREPACS_PYTHON_PLUGIN"))
DICOMWEB_PLUGIN = Path(environment.env_value(os.environ, "SECUREPACS_DICOMWEB_PLUGIN"))
CLIENT_IP_HEADER = "X-SecurePACS-Client-IP"
ADMIN_USER = "admin"
# The gateway's service account is called GATEWAY_USER_PREFIX + 12 random hex digits: a name nobody outside
# can guess (so nobody can even aim at it), kept with its password in the gateway's credential file.


class DeployError(RuntimeError):
    """The data dir cannot be prepared; the message names the path and the problem."""


@dataclass(frozen=True)
class ServiceUsers:
    """Who runs what when started as root: one uid per process (least privilege).

    Orthanc + plugin as ``orthanc``, the DICOM gateway as ``securepacs-gw``, the audit signer (the only
    holder of the checkpoint key) as ``securepacs-audit``, nginx workers as ``www-data`` (in compose nginx
    runs as ``securepacs-web``). None everywhere when not root: everything runs as the caller.
    """

    orthanc: pwd.struct_passwd | None
    nginx_workers: str | None
    gateway: pwd.struct_passwd | None = None
    signer: pwd.struct_passwd | None = None


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
    name = environment.env_value(os.environ, "SECUREPACS_USER")
    if name == "root":
        log.warning("SECUREPACS_USER=root: Orthanc runs as root (least privilege disabled on request)")
        return ServiceUsers(None, "www-data")
    try:
        orthanc = pwd.getpwnam(name)
    except KeyError:
        raise DeployError(f"service user {name!r} does not exist (install the orthanc package or set "
                          "SECUREPACS_USER)") from None
    try:
        ensure_service_accounts(name)
    except AccountError as exc:
        raise DeployError(str(exc)) from None
    return ServiceUsers(orthanc, "www-data", pwd.getpwnam(GATEWAY_ACCOUNT), pwd.getpwnam(SIGNER_ACCOUNT))


def _chown(path: Path, user: pwd.struct_passwd | None) -> None:
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)


def _mkdir(path: Path, mode: int, user: pwd.struct_passwd | None = None, group: str | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    _chown(path, user)
    if group is not None and user is not None:
        os.chown(path, -1, gid(group))
    os.chmod(path, mode)  # after chown: chown clears the setgid bit
    return path


def _write(path: Path, text: str, mode: int = 0o644, owner: pwd.struct_passwd | None = None) -> None:
    # Atomic replace: works even when an earlier (root) run owns the old file, and never leaves half a file.
    uid, gid = (owner.pw_uid, owner.pw_gid) if owner is not None else (-1, -1)
    write_atomically(path, text.encode("utf-8"), mode, uid=uid, gid=gid)


def check_reachable(path: Path, user: pwd.struct_passwd | None) -> None:
    """Fail early, naming the directory, if the service user could not traverse to ``path``."""
    if user is None:
        return
    for parent in [*reversed(path.parents), path] if path.is_dir() else reversed(path.parents):
        st = parent.stat()
        can = (st.st_uid == user.pw_uid and st.st_mode & 0o100) or (
            st.st_gid in os.getgrouplist(user.pw_name, user.pw_gid) and st.st_mode & 0o010) or st.st_mode & 0o001
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
    """The Ed25519 key that signs the audit trail's checkpoints, owned by the signer's account alone
    (``owner``; Orthanc cannot read it); its public half and the signer's attestations
    (``checkpoints.jsonl``) next to it are what ``securepacs audit verify`` checks against.

    Existing keys are handed to ``owner`` too: earlier versions let the Orthanc user read it."""
    _mkdir(path.parent, 0o755, owner)
    created = not path.exists()
    if created:
        create_checkpoint_key(path)
    _chown(path, owner)
    attestations = path.parent / CHECKPOINTS_FILE
    if attestations.exists():
        _chown(attestations, owner)
    return created


def ensure_trail(path: Path, writers: pwd.struct_passwd | None) -> None:
    """The trail's directory and file: the plugin (``writers``) and the gateway append through the
    trail group, the signer reads through it; nobody else. Created here, empty, so that whichever process
    appends first (maybe a root CLI) finds the right owner and mode; its first append writes the
    creation record."""
    _mkdir(path.parent, 0o2770 if writers else 0o700, writers, TRAIL_GROUP if writers else None)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        if writers is not None:
            os.fchown(fd, writers.pw_uid, gid(TRAIL_GROUP))
            os.fchmod(fd, 0o660)
    finally:
        os.close(fd)


def orthanc_runtime_config(s: Settings, pki: Pki, storage_dir: Path,
                           binary: OrthancBinary | None = None) -> dict[str, Any]:
    internal = InternalPki(s.certs_dir)
    binary = binary or _binary()
    config = {
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
            # No AuditCheckpointKey: the plugin must not hold the key (a compromised Orthanc could re-sign a
            # rewritten trail). The audit signer, under its own uid, attests the trail instead.
            "TrustedProxies": ["127.0.0.1", "::1"],
            "ClientIpHeader": CLIENT_IP_HEADER,
            "ProxySecretFile": str(proxy_dir(s) / "secret"),
            "MoveRelayPort": s.egress_port,
            **({"SessionIdleSeconds": s.session_idle_seconds} if s.session_idle_seconds else {}),
            **({"InternalHop": "plain"} if s.internal_hop == "plain" else {}),
        },
    }
    config.update(orthanc_options.runtime_options(binary, dicom_tls=s.internal_hop != "plain"))
    config["DicomWeb"].update(orthanc_options.dicomweb_options(binary))
    return config


def _binary() -> OrthancBinary:
    try:
        return orthanc_binary.detect()
    except orthanc_binary.OrthancBinaryError as exc:
        raise DeployError(str(exc)) from None


# SECUREPACS_INTERNAL_HOP=plain: Orthanc's DICOM port (and its C-MOVE associations to the gateway's egress
# relay) without TLS. Orthanc 1.10.1 cannot bind that port to loopback, so it then also accepts TCP from
# the network: only AE titles registered with host 127.0.0.1 (all of ours) may associate, checked by host.
_PLAIN_HOP = {"DicomTlsEnabled": False, "DicomCheckModalityHost": True}


def base_config_text(s: Settings, binary: OrthancBinary | None = None) -> str:
    """``orthanc/orthanc.json`` as shipped; with the plain internal hop, its DICOM TLS keys changed in place
    (Orthanc refuses a key that two files of its configuration directory both define), and on Orthanc >=
    1.13 ``OverwriteInstances`` in its new form (the same meaning: false is "Never")."""
    text = (ORTHANC_DIR / "orthanc.json").read_text(encoding="utf-8")
    changes = {**(_PLAIN_HOP if s.internal_hop == "plain" else {}), **orthanc_options.base_changes(binary or _binary())}
    if not changes:
        return text
    base = json.loads(text)
    base.update(changes)
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

    # The gateway and the signer (trail group members) may pass through to their own entries; nobody lists it.
    _mkdir(s.data_dir, 0o710 if users.orthanc else 0o750, users.orthanc, TRAIL_GROUP if users.gateway else None)
    for user in (users.orthanc, users.gateway, users.signer):
        check_reachable(s.data_dir, user)
        check_reachable(PLUGIN_SCRIPT, user)
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
    # The gateway (DICOM) and nginx (HTTPS; in compose unprivileged) read the server key, Orthanc does not
    # (it serves only loopback HTTP and the internal hop); the CA key stays root-only.
    if users.gateway is not None:
        os.chown(pki.server_key_path, 0, gid(TLS_GROUP))
        os.chmod(pki.server_key_path, 0o640)
    else:
        _chown(pki.server_key_path, users.orthanc)
    check_reachable(pki.server_key_path, users.gateway or users.orthanc)
    internal = InternalPki(s.certs_dir)
    if internal.ca_key_path.exists() and not os.access(internal.ca_key_path, os.R_OK):
        if not internal.complete():
            raise DeployError(f"internal certificates in {internal.dir} are incomplete: run the init step "
                              "(`securepacs serve --prepare-only` as root)")
    else:
        created = internal.ensure() or created
        if users.orthanc is not None:
            internal.hand_over(users.orthanc.pw_uid, users.orthanc.pw_gid)
            for path in (internal.key_path("gateway"), internal.cert_path("gateway")):
                _chown(path, users.gateway)

    ensure_trail(s.audit_trail_path, users.orthanc)
    ensure_audit_key(s.audit_key_path, users.signer or users.orthanc)

    store = Store(s.store_path)
    try:
        admin_created = ensure_admin(store, s.admin_credential_path)
        gateway = users.gateway or users.orthanc
        _mkdir(s.gateway_dir, 0o700, gateway)
        ensure_gateway_account(store, s.gateway_credential_path, gateway)
        for path in (s.gateway_credential_path, s.gateway_dir / "events.jsonl"):
            if path.exists():
                _chown(path, gateway)  # earlier versions ran the gateway as the Orthanc user
    finally:
        store.close()
    ensure_proxy_secret(proxy_dir(s), users.orthanc)
    if users.gateway is not None:
        # The gateway reads enrolment and revocations (read-only, see gateway/store_view.py), nothing else.
        os.chown(s.store_path, users.orthanc.pw_uid if users.orthanc else 0, users.gateway.pw_gid)
        os.chmod(s.store_path, 0o640)

    config_dir = _mkdir(s.data_dir / "config", 0o750, users.orthanc)
    _write(config_dir / "00-base.json", base_config_text(s), owner=users.orthanc)
    runtime = json.dumps(orthanc_runtime_config(s, pki, storage), indent=2) + "\n"
    _write(config_dir / "10-runtime.json", runtime, owner=users.orthanc)

    nginx_conf = write_nginx(s, pki, users) if with_nginx else s.nginx_dir / "nginx.conf"
    return Prepared(s, config_dir, nginx_conf, orthanc_env(), users, admin_created, created)


def write_nginx(s: Settings, pki: Pki, users: ServiceUsers) -> Path:
    nginx_dir = _mkdir(s.nginx_dir, 0o755)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        path = _mkdir(nginx_dir / "tmp" / sub, 0o700)
        if users.nginx_workers:
            shutil.chown(path, users.nginx_workers)
    nginx_conf = s.nginx_dir / "nginx.conf"
    _write(nginx_conf, render_nginx(s, pki, nginx_dir, users))
    return nginx_conf


def orthanc_env(binary: OrthancBinary | None = None) -> dict[str, str]:
    env = {
        # Debian's DCMTK leaves Nagle on: ~50 ms idle per C-STORE without this (measured 3.7x).
        "TCP_NODELAY": "1",
        "PYTHONPATH": os.pathsep.join([str(PLUGIN_SCRIPT.parent), sysconfig.get_paths()["purelib"]]),
    }
    if orthanc_options.needs_openssl_conf(binary or _binary()):
        env["OPENSSL_CONF"] = str(ORTHANC_DIR / "openssl.cnf")
    return env


def attach(s: Settings, component: str) -> Prepared:
    """A component started on its own (the compose services, each under its own uid and with only its own
    mounts): the init step (:func:`prepare`, as root) created everything; this writes nothing but nginx's
    generated configuration (into its own, e.g. tmpfs, directory) and never touches accounts or the store."""
    users = service_users()
    nginx_conf = write_nginx(s, Pki(s.certs_dir), users) if component == "nginx" else s.nginx_dir / "nginx.conf"
    return Prepared(s, s.data_dir / "config", nginx_conf, orthanc_env(), users, False, False)
