"""``python -m securepacs.gateway [flags]``: ``securepacs gateway`` without loading the rest of the CLI.

The full ``securepacs`` command imports every subcommand (pynetdicom, pydicom, numpy for the client and
benchmarks): ~70 MB resident before the first connection. This entry point loads only what the gateway
uses (~35 MB), which leaves room under the 100 MB budget for many concurrent associations.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from securepacs.gateway import command as gateway_cmd


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m securepacs.gateway")
    sub = parser.add_subparsers(dest="command")
    gateway_cmd.register(sub)
    given = list(sys.argv[1:] if argv is None else argv)
    # -v belongs to the top-level parser (as in `securepacs -v gateway`): accept it anywhere here.
    verbose = any(a in ("-v", "--verbose") for a in given)
    args = parser.parse_args(["gateway", *(a for a in given if a not in ("-v", "--verbose"))])
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
