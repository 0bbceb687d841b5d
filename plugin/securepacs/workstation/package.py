"""The pinned OHIF release: where it comes from, how it is verified, and a safe extraction of its ``dist/``.

npm publishes a Subresource Integrity string (``sha512-<base64>``) for every tarball; the pin below is
that string, so a tarball that differs by one byte from the one we reviewed is refused before a single
file of it is written.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Release:
    name: str
    version: str
    tarball_url: str
    integrity: str  # npm's "dist.integrity": sha512-<base64 digest>


OHIF = Release(
    name="@ohif/app",
    version="3.13.2",
    tarball_url="https://registry.npmjs.org/@ohif/app/-/app-3.13.2.tgz",
    integrity="sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==",
)

DIST_PREFIX = PurePosixPath("package/dist")
# Licence notices travel with the app (MIT requires it); they sit beside dist/ in the package.
NOTICE_FILES = ("package/LICENSE", "package/README.md")
# The built dist is ~204 MB in ~100 entries; far more means this is not the tarball we reviewed.
MAX_TOTAL_BYTES = 600 * 1024 * 1024
MAX_MEMBERS = 5000


class PackageError(Exception):
    """The tarball is not the pinned one or not a plain OHIF package; the message names what and where."""


def check_integrity(data: bytes, integrity: str, source: str) -> None:
    """Refuse ``data`` unless its digest equals npm's SRI string ``integrity``."""
    algorithm, _, expected = integrity.partition("-")
    if algorithm not in ("sha512", "sha384", "sha256") or not expected:
        raise PackageError(f"integrity {integrity!r} is invalid: expected sha512-<base64>")
    actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode("ascii")
    if not hmac.compare_digest(actual, expected):
        raise PackageError(f"{source} does not match the pinned integrity: expected {integrity}, "
                           f"got {algorithm}-{actual}")


def _member_path(member: tarfile.TarInfo, source: str) -> PurePosixPath:
    name = member.name[2:] if member.name.startswith("./") else member.name
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise PackageError(f"{source}: entry {member.name!r} escapes the package directory")
    return path


def _write_members(archive: tarfile.TarFile, dest: Path, source: str) -> list[str]:
    written: list[str] = []
    total = 0
    members = archive.getmembers()
    if len(members) > MAX_MEMBERS:
        raise PackageError(f"{source} has {len(members)} entries: expected at most {MAX_MEMBERS}")
    for member in members:
        path = _member_path(member, source)
        if not (member.isfile() or member.isdir()):
            raise PackageError(f"{source}: entry {member.name!r} is not a regular file or directory")
        inside_dist = path.parts[:2] == DIST_PREFIX.parts and len(path.parts) > 2
        if member.isdir() or not (inside_dist or str(path) in NOTICE_FILES):
            continue
        total += member.size
        if total > MAX_TOTAL_BYTES:
            raise PackageError(f"{source} unpacks to more than {MAX_TOTAL_BYTES} bytes")
        relative = PurePosixPath(*path.parts[2:]) if inside_dist else PurePosixPath(path.name)
        target = dest.joinpath(*relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        source_file = archive.extractfile(member)
        if source_file is None:
            raise PackageError(f"{source}: entry {member.name!r} cannot be read")
        target.write_bytes(source_file.read())
        target.chmod(0o644)
        written.append(str(relative))
    return written


def extract(data: bytes, dest: Path, source: str) -> list[str]:
    """Write the package's ``dist/`` files (and its licence notices) under ``dest``; returns their names.

    Only regular files and directories are accepted: a link or device entry in an npm tarball is refused,
    not skipped, since it is never part of a build we reviewed.
    """
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            written = _write_members(archive, dest, source)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise PackageError(f"{source} is not a readable gzip-compressed tar archive: {exc}") from None
    if "index.html" not in written:
        raise PackageError(f"{source} has no package/dist/index.html: expected OHIF's prebuilt application")
    log.info("extracted %d files of %s", len(written), source)
    return written
