"""``write_atomically``: replace (or create) a file so that readers see the old bytes or the new, never half.

Why one routine: a key written with the wrong mode for a moment, or a secret cut short by a crash, is a
security bug, and each hand-written copy got a different corner wrong (fixed temporary names two
writers could share, chmod after the bytes, no fsync of the directory).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a new or renamed file's name survive a power loss, not only its bytes."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary(path: Path, mode: int) -> tuple[int, Path]:
    # O_EXCL on a random name: two writers never share a temporary file, and a planted symlink is refused.
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        os.fchmod(fd, mode)  # before any byte lands, whatever the umask
        return fd, tmp
    raise FileExistsError(f"{path}: no free temporary name beside it")


def _publish(tmp: Path, path: Path, *, exclusive: bool) -> None:
    if not exclusive:
        os.replace(tmp, path)
        return
    try:
        # link() fails if the target exists: an atomic create-if-absent, unlike exists() + replace().
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        # Filesystems without hard links: the racy check, still never clobbering knowingly.
        if path.exists():
            raise FileExistsError(f"{path} already exists") from None
        os.replace(tmp, path)


def write_atomically(path: Path, data: bytes, mode: int, *, uid: int = -1, gid: int = -1,
                     exclusive: bool = False, durable: bool = True) -> None:
    """Write ``data`` to ``path`` with ``mode`` (and owner ``uid``/``gid`` if given, which needs root).

    ``exclusive`` refuses to replace an existing file (``FileExistsError``). ``durable`` fsyncs the file
    and its directory, so the new content survives a power loss once this returns.
    """
    path = Path(path)
    fd, tmp = _temporary(path, mode)
    try:
        try:
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)  # chown clears setuid/setgid bits
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        _publish(tmp, path, exclusive=exclusive)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # after link() the temporary name is left; after replace() it is gone
    if durable:
        fsync_dir(path.parent)
