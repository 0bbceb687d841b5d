"""``securepacs bench``: start each archive configuration, send the same data, write a report + plots.

The benchmark is a tool, not the archive: it lives in ``tools/securepacs_tools`` (a checkout's editable
install has it, the image does not). This command imports it only when it runs, so ``securepacs`` itself
works without it, and names the missing tools instead of failing at start-up.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from securepacs.config import environment
from securepacs.config.argtypes import positive_int

EXIT_USAGE = 2
EXIT_FAILED = 1
# What the bench offers, for --help; run() checks the values against the tools' own tables.
CONFIGS_HELP = "a-g"
DATASETS_HELP = "ct small large"
PLATFORMS_HELP = "native image"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "bench",
        help="ingest benchmark: stock/bare/TLS Orthanc, the full stack through the gateway and direct",
        description=(
            "Start each configuration (a stock plain, b bare plain tuned, c bare native TLS, d full stack "
            "through the gateway, e Orthanc native TLS without plugin, f d's Orthanc reached directly, g f without "
            "the audit trail) on free "
            "loopback ports, send the same deterministic data with DCMTK storescu and our client, measure "
            "handshakes and the gateway's memory, and write report.md + PNG plots to --output. By default every "
            "configuration runs twice, on this host's Orthanc and in a container of --image, side by side."
        ),
    )
    p.add_argument("--quick", action="store_true",
                   help="small data set, 2 rounds, a subset of cells (every configuration), 60 echo "
                        "associations instead of 1,000; < 2 minutes")
    p.add_argument("--output", "-o", type=Path, default=Path("results"), metavar="DIR",
                   help="results folder (default ./results; a timestamped subfolder is NOT created)")
    p.add_argument("--rounds", type=positive_int, metavar="N",
                   help="interleaved rounds per cell (default 5, quick 2)")
    p.add_argument("--datasets", nargs="+", metavar="NAME",
                   help=f"full mode data sets: {DATASETS_HELP} (default all)")
    p.add_argument("--configs", nargs="+", metavar="KEY",
                   help=f"configurations to run, {CONFIGS_HELP} (default all; f starts d's processes)")
    p.add_argument("--workdir", type=Path, metavar="DIR",
                   help="where data and Orthanc storage go (default a fresh dir under /dev/shm)")
    p.add_argument("--echo-associations", type=positive_int, metavar="N",
                   help="sequential echo associations through the gateway for its memory (default 1000, quick 60)")
    p.add_argument("--platforms", nargs="+", metavar="NAME",
                   help=f"where the servers run ({PLATFORMS_HELP}): native (this host's Orthanc) and/or image "
                        "(the same configurations in a container of --image, host network); default both, side by side")
    p.add_argument("--image", default=environment.env_value(os.environ, "SECUREPACS_IMAGE"), metavar="TAG",
                   help="the image platform's image (default $SECUREPACS_IMAGE or securepacs:latest, compose's tag)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (data, logs) afterwards")
    p.set_defaults(func=run)


def _invalid(flag: str, values: list[str] | None, allowed: list[str]) -> str | None:
    for value in values or ():
        if value not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            return f"securepacs bench: error: argument {flag}: invalid choice: {value!r} (choose from {choices})"
    return None


def run(args: argparse.Namespace) -> int:
    try:
        from securepacs_tools.bench import report, runner
        from securepacs_tools.bench.model import DATASETS, PLATFORMS
        from securepacs_tools.bench.specs import SPECS
    except ImportError as exc:
        print(f"securepacs: error: the benchmark tools are not installed ({exc}); run 'securepacs bench' from a "
              "checkout whose tools/ folder is installed (orthanc/install.sh does this)", file=sys.stderr)
        return EXIT_FAILED
    for flag, values, allowed in (("--datasets", args.datasets, [k for k in DATASETS if k != "quick"]),
                                  ("--configs", args.configs, list(SPECS)),
                                  ("--platforms", args.platforms, list(PLATFORMS))):
        if (error := _invalid(flag, values, allowed)) is not None:
            print(error, file=sys.stderr)
            return EXIT_USAGE
    configs = tuple(args.configs or SPECS)
    platforms = tuple(args.platforms or PLATFORMS)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # Also when started in the background (SIGINT ignored) or stopped with SIGTERM: the runner's cleanup
    # (stop every Orthanc, remove the work directory) must run.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    t0 = time.monotonic()
    options = runner.Options(quick=args.quick, rounds=args.rounds, datasets=args.datasets,
                             configs=configs, workdir_parent=args.workdir, keep=args.keep,
                             echo_associations=args.echo_associations, platforms=platforms,
                             image=args.image)
    try:
        results = runner.run(options, log=log)
    except Exception as exc:
        print(f"securepacs: error: bench failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    path = report.write(results, args.output, log=log)
    failed = sum(1 for cr in results.cells for r in cr.runs if r is None)
    print(f"{path} ({time.monotonic() - t0:.0f} s{f', {failed} failed runs' if failed else ''})")
    return 1 if failed else 0
