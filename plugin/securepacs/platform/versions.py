"""Version strings as the platform reports them, made comparable.

Orthanc and its plugins report upstream versions ("1.10.1", "4.0", "1.24"); Debian's packages add an
epoch, a repackaging tag and a revision ("1.13.0+dfsg-1+b1", "1:3.6.7-9~deb12u4"); a build of Orthanc's
default branch reports "mainline", which is newer than every release. Only the upstream part counts:
"1.13" and "1.13.0" are the same release.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAINLINE = "mainline"
# [epoch:]upstream, then the end or a Debian separator: "+dfsg", "-1" (revision), "~rc1".
_RELEASE = re.compile(r"(?:\d+:)?(\d+(?:\.\d+)*)(?:[+~-].*)?")


@dataclass(frozen=True, order=True)
class Version:
    mainline: bool  # first: any mainline build sorts after every release
    numbers: tuple[int, ...]  # trailing zeros dropped, so 1.13 == 1.13.0

    def __str__(self) -> str:
        return MAINLINE if self.mainline else ".".join(map(str, self.numbers or (0,)))


def parse(text: str | None) -> Version | None:
    """``text`` as a comparable version, or None when it is not one this module understands."""
    if not text:
        return None
    value = text.strip()
    if value.lower() == MAINLINE:
        return Version(True, ())
    match = _RELEASE.fullmatch(value)
    if match is None:
        return None
    numbers = [int(part) for part in match.group(1).split(".")]
    while numbers and numbers[-1] == 0:
        numbers.pop()
    return Version(False, tuple(numbers))


def require(text: str) -> Version:
    """``parse`` for the package's own data (the CVE table): a malformed version is a bug, said plainly."""
    version = parse(text)
    if version is None:
        raise ValueError(f"version {text!r} is invalid: expected digits and dots (e.g. '1.12.11') or 'mainline'")
    return version
