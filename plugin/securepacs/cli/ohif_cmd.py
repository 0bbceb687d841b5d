"""``securepacs ohif install``: vendor the pinned OHIF build for the archive to serve under ``/ohif/``.

Run by the install step; by hand only to install from a tarball fetched elsewhere (``--tarball``),
which is verified against the same pinned integrity hash as a download.
"""

from __future__ import annotations

import argparse
import urllib.error
from pathlib import Path

from securepacs.cli.pki_cmd import guarded
from securepacs.workstation import package, vendor


def run_install(args: argparse.Namespace) -> int:
    try:
        changed = vendor.install(args.dest, tarball=args.tarball)
    except urllib.error.URLError as exc:
        raise package.PackageError(f"cannot download {package.OHIF.tarball_url}: {exc.reason}") from None
    release = package.OHIF
    print(f"OHIF {release.version} {'installed in' if changed else 'already current in'} {args.dest}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ohif = subparsers.add_parser("ohif", help="the vendored OHIF workstation viewer")
    sub = ohif.add_subparsers(dest="ohif_command", required=True, metavar="ACTION")
    install = sub.add_parser("install", help=f"install OHIF {package.OHIF.version} (verified against its "
                                             "pinned npm integrity hash)")
    install.add_argument("--dest", type=Path, required=True, help="directory to serve /ohif/ from")
    install.add_argument("--tarball", type=Path, help="use this npm tarball instead of downloading it")
    install.set_defaults(func=guarded(run_install, (package.PackageError,)))
