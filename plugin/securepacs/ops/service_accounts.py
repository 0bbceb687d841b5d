"""The system accounts and groups that give each SecurePACS process its own uid (least privilege).

Orthanc + plugin run as ``orthanc`` (Debian's package creates it), the DICOM gateway as ``securepacs-gw``,
the audit signer — the only holder of the trail's checkpoint key — as ``securepacs-audit``, nginx in
compose as ``securepacs-web`` (natively its workers are ``www-data``). Two groups grant what must be
shared: ``securepacs-trail`` (append to the audit trail: orthanc, the gateway; read it: the signer) and
``securepacs-tls`` (read the server's TLS key: the gateway and nginx). The image creates the same accounts
(orthanc/Dockerfile); natively ``securepacs serve`` as root creates them here.
"""

from __future__ import annotations

import grp
import pwd
import subprocess


class AccountError(RuntimeError):
    """A system account or group could not be created; the message names the command and its error."""


GATEWAY_ACCOUNT = "securepacs-gw"
SIGNER_ACCOUNT = "securepacs-audit"
WEB_ACCOUNT = "securepacs-web"  # nginx in compose (natively nginx's workers are www-data)
# Who may append to the trail (the plugin, the gateway) and read it (the signer): group write, no others.
TRAIL_GROUP = "securepacs-trail"
# Who may read the server's TLS key: the gateway (DICOM) and nginx in compose (HTTPS). Not Orthanc.
TLS_GROUP = "securepacs-tls"


def _run_quiet(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise AccountError(f"{' '.join(cmd)} failed: {res.stderr.strip()}")


def ensure_service_accounts(orthanc: str) -> None:
    """Create the system accounts and groups the separation needs (root only; the image has them)."""
    for name in (GATEWAY_ACCOUNT, SIGNER_ACCOUNT, WEB_ACCOUNT):
        try:
            pwd.getpwnam(name)
        except KeyError:
            _run_quiet(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", name])
    for group, members in ((TRAIL_GROUP, (orthanc, GATEWAY_ACCOUNT, SIGNER_ACCOUNT)),
                           (TLS_GROUP, (GATEWAY_ACCOUNT, WEB_ACCOUNT))):
        try:
            grp.getgrnam(group)
        except KeyError:
            _run_quiet(["groupadd", "--system", group])
        present = set(grp.getgrnam(group).gr_mem)
        for member in members:
            if member not in present:
                _run_quiet(["usermod", "--append", "--groups", group, member])


def gid(group: str) -> int:
    return grp.getgrnam(group).gr_gid
