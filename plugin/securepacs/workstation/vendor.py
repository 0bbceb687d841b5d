"""Installing the pinned OHIF build into one directory: download or read, verify, extract, rewrite, swap.

The new build is assembled beside the target and swapped in with renames only when complete, so a
failed or interrupted install leaves the previous one serving. A target that already holds this
release, sub-path and configuration is left alone (and nothing is downloaded).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from securepacs.durable.atomic_file import write_atomically
from securepacs.workstation import app_config, sub_path
from securepacs.workstation.package import OHIF, PackageError, Release, check_integrity, extract

log = logging.getLogger(__name__)

STAMP = "securepacs-ohif.json"
# Parts of the npm build we never serve: the service worker and its Workbox CDN loader, the Google
# Cloud and OIDC variants, the hosting files of other servers, and OHIF's own demo configuration.
DROPPED = ("sw.js", "init-service-worker.js", "google.js", "oidc-client.min.js", "silent-refresh.html",
           "_headers", "_redirects", "serve.json", "app-config.js", "manifest.json")
DOWNLOAD_TIMEOUT = 120.0
MAX_TARBALL_BYTES = 200 * 1024 * 1024

Fetch = Callable[[str], bytes]


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as answer:  # noqa: S310 - a pinned https URL
        data = answer.read(MAX_TARBALL_BYTES + 1)
    if len(data) > MAX_TARBALL_BYTES:
        raise PackageError(f"{url} is larger than {MAX_TARBALL_BYTES} bytes")
    return data


def _stamp(release: Release, base: str) -> dict[str, str]:
    config = hashlib.sha256(app_config.script(base).encode("utf-8")).hexdigest()
    return {"name": release.name, "version": release.version, "integrity": release.integrity, "base": base,
            "app_config_sha256": config}


def is_current(dest: Path, release: Release = OHIF, base: str = "/ohif/") -> bool:
    try:
        return json.loads((dest / STAMP).read_text(encoding="utf-8")) == _stamp(release, base)
    except (OSError, ValueError):
        return False


def _rewrite(root: Path, base: str, source: str) -> None:
    for name in DROPPED:
        (root / name).unlink(missing_ok=True)
    index = root / "index.html"
    try:
        index.write_text(sub_path.rewrite_index(index.read_text(encoding="utf-8"), base), encoding="utf-8")
    except sub_path.RewriteError as exc:
        raise PackageError(f"{source}: {exc}") from None
    changed = 0
    for bundle in sorted(root.glob("*.js")):
        text, count = sub_path.rewrite_bundle(bundle.read_text(encoding="utf-8"), base)
        if count:
            bundle.write_text(text, encoding="utf-8")
            changed += count
    if not any(root.glob("app.bundle.*.js")) or changed == 0:
        raise PackageError(f"{source}: expected app.bundle.*.js with a webpack public path of \"/\"; "
                           "this build cannot be moved to a sub-path")
    for sheet in sorted(root.glob("*.css")):
        text, count = sub_path.rewrite_stylesheet(sheet.read_text(encoding="utf-8"), base)
        if count:
            sheet.write_text(text, encoding="utf-8")
    (root / sub_path.BOOT_SCRIPT).write_text(sub_path.boot_script(base), encoding="utf-8")
    (root / "app-config.js").write_text(app_config.script(base), encoding="utf-8")


def install(dest: Path, *, tarball: Path | None = None, release: Release = OHIF, base: str = "/ohif/",
            fetch: Fetch = download) -> bool:
    """Put ``release`` into ``dest`` for serving under ``base``; True if anything was (re)installed."""
    dest = Path(dest)
    base = sub_path.check_base(base)
    if is_current(dest, release, base):
        log.info("OHIF %s already installed in %s", release.version, dest)
        return False
    if tarball is not None:
        source = str(tarball)
        try:
            data = Path(tarball).read_bytes()
        except OSError as exc:
            raise PackageError(f"cannot read {tarball}: {exc.strerror or exc}") from None
    else:
        source = release.tarball_url
        log.info("downloading %s", source)
        data = fetch(source)
    check_integrity(data, release.integrity, source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.new-", dir=dest.parent))
    old = dest.parent / f".{dest.name}.old"
    try:
        extract(data, staging, source)
        _rewrite(staging, base, source)
        write_atomically(staging / STAMP, json.dumps(_stamp(release, base), indent=2).encode("utf-8"), 0o644)
        staging.chmod(0o755)
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not dest.exists():
            old.rename(dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
    log.info("OHIF %s installed in %s for %s", release.version, dest, base)
    return True
