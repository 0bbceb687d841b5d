"""The ``securepacs`` command: one entry point, one subcommand module per concept."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from securepacs import __version__
from securepacs.cli import (
    audit_cmd,
    bench_cmd,
    client_cmd,
    clinic_cmd,
    gateway_cmd,
    ohif_cmd,
    pki_cmd,
    serve_cmd,
    user_cmd,
)

# Each command module exposes ``register(subparsers)``; its parser sets ``func(args) -> int``.
COMMAND_MODULES = (serve_cmd, gateway_cmd, pki_cmd, clinic_cmd, user_cmd, audit_cmd, client_cmd, ohif_cmd,
                   bench_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="securepacs", description="SecurePACS secure DICOM archive")
    parser.add_argument("--version", action="version", version=f"securepacs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
