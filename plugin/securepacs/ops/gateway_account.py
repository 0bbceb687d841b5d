"""The gateway's service account in the plugin's store, and the credential file the gateway reads.

Kept apart from ``deploy`` (which calls it at every start) because it is the one place that decides what
a service identity looks like: a name nobody can guess, a generated password, role ``gateway``.
"""

from __future__ import annotations

import logging
import pwd
import secrets
from pathlib import Path

from securepacs.access import passwords, user_admin
from securepacs.access.principal import GATEWAY
from securepacs.durable.atomic_file import write_atomically
from securepacs.store.database import Store

log = logging.getLogger(__name__)

GATEWAY_USER_PREFIX = "svc-gateway-"
__all__ = ["GATEWAY_USER_PREFIX", "ensure_gateway_account"]


def _write_private(path: Path, text: str, owner: pwd.struct_passwd | None) -> None:
    # Atomic replace, 0600 from the first byte, owned by the gateway's uid before it is visible.
    uid, gid = (owner.pw_uid, owner.pw_gid) if owner is not None else (-1, -1)
    write_atomically(path, text.encode("utf-8"), 0o600, uid=uid, gid=gid)


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
        _write_private(credential_path, f"username: {named}\npassword: {password}\n", owner)
        stale = gateways
    for old in sorted(stale):
        store.set_disabled(old, True)
        log.info("gateway service account %r replaced by %r and disabled", old, named)
    return named not in gateways or bool(stale)
