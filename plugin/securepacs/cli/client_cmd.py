"""``securepacs client echo|store|find|move|get``: argument parsing over ``securepacs.client``.

Flag names follow dcmtk / pynetdicom apps (storescu, findscu, movescu, getscu) so operators can reuse
their habits: positional ``HOST PORT``, ``-aet``, ``-aec``, ``-ta``, ``-td``, ``-k``, ``-aem``, ``-od``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from pynetdicom import _config as pynetdicom_config

from securepacs.client import (
    ClientError,
    Connection,
    ConnectionFailed,
    DimseFailed,
    TlsConfig,
    dataset_to_dict,
    echo,
    find,
    get,
    move,
    store,
)
from securepacs.client.connection import DEFAULT_CALLING_AET, DEFAULT_DIMSE_TIMEOUT
from securepacs.client.query import LEVELS, parse_key
from securepacs.config.argtypes import positive_int, tcp_port
from securepacs.config.environment import DEFAULT_AET
from securepacs.dicom import status_codes

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_DICOM_FAILURE = 1  # the peer answered, but not every operation succeeded
EXIT_USAGE = 2  # bad option, unreadable file (argparse also exits with 2)
EXIT_CONNECTION = 3  # no association: connection refused, TLS handshake, rejected

_EPILOG = (
    "exit status: 0 success, 1 a DICOM operation failed, 2 bad arguments or input files, "
    "3 no association (connection, TLS or association negotiation failed)"
)


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("host", metavar="HOST", help="peer host name or IP address")
    common.add_argument("port", metavar="PORT", type=tcp_port, help="peer TCP port (SecurePACS: 2762)")
    net = common.add_argument_group("association")
    net.add_argument("-aet", "--calling-aet", default=DEFAULT_CALLING_AET, metavar="AET",
                     help=f"our AE title (default {DEFAULT_CALLING_AET})")
    net.add_argument("-aec", "--called-aet", default=DEFAULT_AET, metavar="AET",
                     help=f"the peer's AE title (default {DEFAULT_AET})")
    net.add_argument("-ta", "--acse-timeout", type=float, default=30.0, metavar="SECONDS",
                     help="timeout for association negotiation and TCP connect (default 30)")
    # Bounded by default: a peer that silently stops answering must not hang a clinic's upload forever.
    net.add_argument("-td", "--dimse-timeout", type=float, default=DEFAULT_DIMSE_TIMEOUT, metavar="SECONDS",
                     help=f"timeout waiting for a DIMSE response (default {DEFAULT_DIMSE_TIMEOUT:.0f})")
    net.add_argument("-v", "--verbose", dest="client_verbose", action="store_true",
                     help="debug output, including pynetdicom's own log")
    tls = common.add_argument_group("mutual TLS")
    tls.add_argument("--cert", type=Path, metavar="FILE", help="our client certificate (PEM)")
    tls.add_argument("--key", type=Path, metavar="FILE", help="private key of --cert (PEM, unencrypted)")
    tls.add_argument("--ca", type=Path, metavar="FILE", help="CA certificate(s) that must have signed the server's")
    tls.add_argument("--p12", type=Path, metavar="FILE",
                     help="client key + certificate as PKCS#12 (from `securepacs pki`), instead of --cert/--key")
    tls.add_argument("--p12-pass-file", type=Path, metavar="FILE", help="file holding the --p12 passphrase")
    tls.add_argument("--tls-version", choices=("1.2", "1.3"),
                     help="use only this TLS version (default: 1.2 or 1.3)")
    tls.add_argument("--no-hostname-check", dest="check_hostname", action="store_false",
                     help="accept a trusted server certificate that does not name HOST")
    tls.add_argument("--no-tls", action="store_true",
                     help="plain unencrypted DICOM; only for benchmarking against plain servers, "
                          "never for patient data")
    return common


def _query_options(parser: argparse.ArgumentParser, default_level: str | None) -> None:
    root = parser.add_mutually_exclusive_group()
    root.add_argument("-P", "--patient", dest="root", action="store_const", const="patient",
                      help="patient root information model")
    root.add_argument("-S", "--study", dest="root", action="store_const", const="study",
                      help="study root information model (default)")
    parser.set_defaults(root="study")
    parser.add_argument("-L", "--level", type=str.upper, choices=LEVELS,
                        help=f"query/retrieve level (default {default_level}; or -k QueryRetrieveLevel=...)")
    parser.add_argument("-k", dest="keys", action="append", default=[], metavar="KEY=VALUE",
                        help="matching or return key, KEY a keyword (PatientID) or tag (0010,0020); "
                             "empty VALUE = return key; repeatable")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    client = subparsers.add_parser(
        "client",
        help="DICOM client over mutual TLS: echo, store, find, move, get",
        description="DICOM client over mutual TLS (flag names as in dcmtk's storescu/findscu/movescu/getscu).",
        epilog=_EPILOG,
    )
    ops = client.add_subparsers(dest="client_command", required=True, metavar="OPERATION")
    common = _common_options()

    p = ops.add_parser("echo", parents=[common], help="C-ECHO: check the association works", epilog=_EPILOG)
    p.set_defaults(func=_guarded(_run_echo))

    p = ops.add_parser("store", parents=[common], help="C-STORE files and folders (recursive)", epilog=_EPILOG)
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="DICOM file or folder")
    p.add_argument("--parallel", type=positive_int, default=1, metavar="N",
                   help="number of parallel associations (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.set_defaults(func=_guarded(_run_store))

    p = ops.add_parser("find", parents=[common], help="C-FIND: print matches as JSON lines", epilog=_EPILOG)
    _query_options(p, "STUDY")
    p.add_argument("--format", choices=("json", "text"), default="json",
                   help="one JSON object per match (default) or readable text")
    p.set_defaults(func=_guarded(_run_find))

    p = ops.add_parser("move", parents=[common], help="C-MOVE matches to another AE", epilog=_EPILOG)
    p.add_argument("-aem", "--dest", "--move", dest="dest", required=True, metavar="AET",
                   help="move destination AE title (known to the peer)")
    _query_options(p, "STUDY")
    p.set_defaults(func=_guarded(_run_move))

    p = ops.add_parser("get", parents=[common], help="C-GET matches into a folder", epilog=_EPILOG)
    p.add_argument("-od", "--output-directory", type=Path, default=Path("."), metavar="DIR",
                   help="where to write <SOP Instance UID>.dcm files (default: current directory)")
    _query_options(p, "STUDY")
    p.set_defaults(func=_guarded(_run_get))


def _configure_logging(verbose: bool) -> None:
    if verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    # pynetdicom logs every PDU at INFO and reports failures we explain ourselves; keep it for -v.
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if verbose else logging.CRITICAL)
    # Its identifier dumps (patient names and IDs) are logged at INFO: never, even with -v.
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False


def _tls_config(args: argparse.Namespace) -> TlsConfig | None:
    given = [f"--{n.replace('_', '-')}" for n in ("cert", "key", "ca", "p12", "p12_pass_file", "tls_version")
             if getattr(args, n) is not None]
    if args.no_tls:
        if given:
            raise ClientError(f"--no-tls cannot be combined with {', '.join(given)}")
        logger.warning("--no-tls: plain unencrypted DICOM, for benchmarks against plain servers only")
        return None
    if args.ca is None:
        raise ClientError("--ca is required to verify the server (or --no-tls for plain benchmark servers)")
    if args.p12 is None and (args.cert is None or args.key is None):
        raise ClientError("mutual TLS needs our certificate: give --cert and --key, or --p12")
    return TlsConfig(ca=args.ca, cert=args.cert, key=args.key, p12=args.p12, p12_pass_file=args.p12_pass_file,
                     version=args.tls_version, check_hostname=args.check_hostname)


def _connection(args: argparse.Namespace) -> Connection:
    return Connection(
        host=args.host,
        port=args.port,
        calling_aet=args.calling_aet,
        called_aet=args.called_aet,
        tls=_tls_config(args),
        acse_timeout=args.acse_timeout,
        dimse_timeout=args.dimse_timeout,
    )


def _guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the client's exceptions into a one-line message and the documented exit status."""

    def func(args: argparse.Namespace) -> int:
        _configure_logging(args.client_verbose or getattr(args, "verbose", False))
        try:
            return run(args)
        except ConnectionFailed as exc:
            _error(args, exc)
            return EXIT_CONNECTION
        except DimseFailed as exc:
            _error(args, exc)
            return EXIT_DICOM_FAILURE
        except ClientError as exc:
            _error(args, exc)
            return EXIT_USAGE

    return func


def _error(args: argparse.Namespace, exc: Exception) -> None:
    print(f"securepacs client {args.client_command}: error: {exc}", file=sys.stderr)


def _run_echo(args: argparse.Namespace) -> int:
    conn = _connection(args)
    status = echo(conn)
    print(f"C-ECHO {conn.address} ({conn.called_aet}): {status_codes.describe(status)}")
    return EXIT_OK if status == status_codes.SUCCESS else EXIT_DICOM_FAILURE


def _run_store(args: argparse.Namespace) -> int:
    conn = _connection(args)
    show_progress = not args.no_progress and sys.stderr.isatty()
    summary = store(conn, args.paths, parallel=args.parallel, progress=show_progress)
    print(summary.report())
    return EXIT_OK if summary.ok else EXIT_DICOM_FAILURE


def _keys(args: argparse.Namespace) -> list[tuple[str, str]]:
    return [parse_key(k) for k in args.keys]


def _run_find(args: argparse.Namespace) -> int:
    conn = _connection(args)
    n = 0
    for match in find(conn, args.level, _keys(args), root=args.root):
        n += 1
        values = dataset_to_dict(match)
        if args.format == "json":
            print(json.dumps(values, ensure_ascii=False), flush=True)
        else:
            print(f"# match {n}")
            for key, value in values.items():
                print(f"  {key}: {value}")
    print(f"{n} matches", file=sys.stderr)
    return EXIT_OK


def _run_move(args: argparse.Namespace) -> int:
    conn = _connection(args)
    result = move(conn, args.dest, args.level, _keys(args), root=args.root)
    print(result.report("C-MOVE"))
    return EXIT_OK if result.ok else EXIT_DICOM_FAILURE


def _run_get(args: argparse.Namespace) -> int:
    conn = _connection(args)
    result = get(conn, args.level, _keys(args), args.output_directory, root=args.root)
    print(result.report("C-GET"))
    print(f"{result.files} files written to {args.output_directory}")
    return EXIT_OK if result.ok else EXIT_DICOM_FAILURE
