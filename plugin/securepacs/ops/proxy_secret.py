"""nginx's per-deployment secret: how the plugin tells "came through nginx" from "a local process".

Orthanc's HTTP port is on loopback, where any local process can connect and send any header. nginx adds
``X-SecurePACS-Proxy-Secret`` to every request it forwards; the plugin believes nginx's client-address
header only together with that secret, and serves internal routes only without it.

Two files in ``certs/proxy/``: ``secret`` (read by the plugin) and ``nginx.conf`` (the one header line nginx
includes, so the rendered nginx configuration never contains the secret). They live with the certificates
rather than the data because nginx in compose mounts no data. Readable by the Orthanc user (owner) and by
nginx (group: the ``securepacs-web`` account's own group; natively nginx's master reads its configuration
as root) and nobody else — not the gateway, which talks to Orthanc directly and must not pose as nginx.
Generated once and kept, so separately started components agree; remove the directory and restart
everything to replace it.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
from pathlib import Path

from securepacs.config.environment import Settings
from securepacs.config.plugin_settings import PROXY_SECRET_HEADER
from securepacs.durable.atomic_file import write_atomically
from securepacs.ops.service_accounts import WEB_ACCOUNT

SECRET_FILE = "secret"  # noqa: S105 (a file name)
NGINX_SNIPPET = "nginx.conf"


def proxy_dir(s: Settings) -> Path:
    return s.certs_dir / "proxy"


def _reader_gid() -> int | None:
    try:
        return grp.getgrnam(WEB_ACCOUNT).gr_gid
    except KeyError:
        return None


def _place(path: Path, mode: int, owner: pwd.struct_passwd | None, group: int | None) -> None:
    if owner is not None:
        os.chown(path, owner.pw_uid, group if group is not None else owner.pw_gid)
    os.chmod(path, mode if group is not None else mode & 0o700)


def _write(path: Path, text: str, owner: pwd.struct_passwd | None, group: int | None) -> None:
    # Never half a secret; group-readable only when a group (nginx's) is named.
    uid, gid = (owner.pw_uid, group if group is not None else owner.pw_gid) if owner is not None else (-1, -1)
    write_atomically(path, text.encode("ascii"), 0o640 if group is not None else 0o600, uid=uid, gid=gid)


def ensure_proxy_secret(directory: Path, owner: pwd.struct_passwd | None) -> tuple[Path, Path]:
    """Create (once) and hand over the secret and nginx's header line; returns (secret, snippet) paths.

    ``owner`` None (not root): both files private to the caller, who then runs every component."""
    group = _reader_gid() if owner is not None else None
    directory.mkdir(parents=True, exist_ok=True)
    _place(directory, 0o750, owner, group)
    secret_path, conf_path = directory / SECRET_FILE, directory / NGINX_SNIPPET
    secret = secret_path.read_text(encoding="ascii").strip() if secret_path.exists() else ""
    if not secret:
        secret = secrets.token_urlsafe(32)
        _write(secret_path, secret + "\n", owner, group)
    else:
        _place(secret_path, 0o640, owner, group)  # earlier versions kept it 0600 under data/proxy
    _write(conf_path, f'proxy_set_header {PROXY_SECRET_HEADER} "{secret}";\n', owner, group)
    return secret_path, conf_path
