"""``securepacs audit verify|search|export|forward``: the audit trail, for auditors on the archive host.

Every use of the trail is recorded in it (Audit Log Used) before the answer is printed. The trail is
never created here: a missing trail means a wrong ``SECUREPACS_DATA`` (or an archive never started), and
a file created by root would lock the service out of its own trail.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import pwd
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from securepacs.audit import (
    ActiveParticipant,
    AuditTrail,
    Filters,
    SyslogForwarder,
    client_context,
    codes,
    events,
    export_messages,
    public_key_path,
    search_entries,
    verify,
)
from securepacs.audit.record import parse_time
from securepacs.audit.recorder import Auditor
from securepacs.cli.pki_cmd import EXIT_USAGE, guarded
from securepacs.config import environment as settings_mod
from securepacs.config.argtypes import positive_int, tcp_port

log = logging.getLogger(__name__)

EXIT_TAMPERED = 1
FORMATS = {"jsonl": "jsonl", "dicom-xml": "xml"}


def os_account() -> tuple[str, str | None]:
    """Who ran a command: ``cli:<OS account>`` (no archive user is logged in) and the account behind sudo,
    if any. From the process's uid rather than $USER, which the caller could set to anything."""
    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = str(os.getuid())
    sudo = os.environ.get("SUDO_USER")
    return f"cli:{name}", sudo if sudo and sudo != name else None


def actor() -> ActiveParticipant:
    """The command's user as the audit records name it."""
    account, sudo = os_account()
    return ActiveParticipant(account, user_name=f"sudo by {sudo}" if sudo else None,
                             network_access_point="localhost")


class TrailMissing(RuntimeError):
    pass


def open_trail(path: Path) -> AuditTrail:
    if not path.is_file():
        raise TrailMissing(f"no audit trail at {path}: set SECUREPACS_DATA to the archive's data directory "
                           "(or --trail)")
    return AuditTrail(path)


def record_change(alert: codes.Code, what: str, subject: str) -> None:
    """A configuration change made on the command line (user or clinic administration), recorded in the
    trail when there is one (there is none before the archive's first start)."""
    path = settings_mod.from_env().audit_trail_path
    if not path.is_file():
        log.debug("no audit trail at %s yet: change %r not recorded", path, what)
        return
    with AuditTrail(path) as trail:
        auditor = Auditor(trail, "securepacs-cli")
        trail.append(events.security_alert(auditor.source, alert, auditor.archive, [events.node(subject)],
                                           performer=actor(), details={"change": what}))


def _paths(args: argparse.Namespace) -> tuple[Path, Path]:
    s = settings_mod.from_env()
    trail = Path(args.trail) if args.trail else s.audit_trail_path
    key = Path(args.public_key) if getattr(args, "public_key", None) else public_key_path(s.audit_key_path)
    return trail, key


def _log_used(trail: AuditTrail, what: str, criteria: dict[str, str]) -> None:
    auditor = Auditor(trail, "securepacs-cli")
    trail.append(events.audit_log_used(auditor.source, actor(), str(trail.path),
                                       details={"action": what, **criteria}), durable=True)


def _verify(args: argparse.Namespace) -> int:
    trail_path, key_path = _paths(args)
    with open_trail(trail_path) as trail:
        _log_used(trail, "verify", {})
    if not key_path.is_file():
        print(f"securepacs: error: no checkpoint public key at {key_path} (use --public-key)", file=sys.stderr)
        return EXIT_USAGE
    report = verify(trail_path, key_path)
    print(report.summary())
    return 0 if report.ok else EXIT_TAMPERED


def _filters(args: argparse.Namespace) -> tuple[Filters, dict[str, str]]:
    values = {field: getattr(args, field) for field in ("patient_id", "study_uid", "user", "clinic", "ae_title",
                                                        "event") if getattr(args, field)}
    if args.event:
        codes.resolve_event(args.event)
    if args.outcome is not None:
        values["outcome"] = args.outcome
    for name in ("since", "until"):
        if getattr(args, name):
            values[name] = parse_time(getattr(args, name))
    return Filters(**values), {k: str(v) for k, v in values.items()}  # type: ignore[arg-type]


def _search(args: argparse.Namespace) -> int:
    trail_path, _ = _paths(args)
    filters, criteria = _filters(args)
    with open_trail(trail_path) as trail:
        _log_used(trail, args.audit_command, criteria)
    entries = search_entries(trail_path, filters)
    if args.limit:
        entries = itertools.islice(entries, args.limit)
    if args.output and args.output != "-":
        with open(args.output, "wb") as out:
            count = export_messages(entries, out, FORMATS[args.format])
    else:
        count = export_messages(entries, sys.stdout.buffer, FORMATS[args.format])
        sys.stdout.flush()
    print(f"{count} record(s)", file=sys.stderr)
    return 0


def _forward(args: argparse.Namespace) -> int:
    trail_path, _ = _paths(args)
    if not trail_path.is_file():
        raise TrailMissing(f"no audit trail at {trail_path}")
    context = client_context(args.ca, args.cert, args.key)
    cursor = Path(args.cursor) if args.cursor else trail_path.with_name("forwarded.cursor")
    forwarder = SyslogForwarder(trail_path, cursor, args.host, args.port, context,
                                server_hostname=args.server_name or args.host, payload=args.payload)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("forwarding the audit trail to %s:%d (RFC 5425 over TLS)", args.host, args.port)
    forwarder.run(stop)
    forwarder.close()
    return 0


def _guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    return guarded(run, (TrailMissing, ValueError, OSError))


def _time(text: str) -> str:
    try:
        parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time such as 2026-11-26T10:00:00Z") from None
    return text


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    audit = subparsers.add_parser("audit", help="verify, search, export and forward the audit trail",
                                  description="The audit trail in SECUREPACS_DATA/audit (default ./data/audit).")
    ops = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    p = ops.add_parser("verify", help="check the hash chain and the signed checkpoints; exit 1 if tampered")
    p.add_argument("--trail", metavar="FILE", help="trail file (default: SECUREPACS_DATA/audit/trail.jsonl)")
    p.add_argument("--public-key", metavar="FILE",
                   help="checkpoint public key (default: SECUREPACS_CERTS/audit/checkpoint.pub)")
    p.set_defaults(func=_guarded(_verify))

    for action, text in (("search", "records matching all given criteria"),
                         ("export", "matching records as DICOM audit messages (PS3.15 A.5) or JSON lines")):
        p = ops.add_parser(action, help=text)
        p.add_argument("--trail", metavar="FILE")
        p.add_argument("--patient", dest="patient_id", metavar="ID", help="Patient ID")
        p.add_argument("--study", dest="study_uid", metavar="UID", help="Study Instance UID")
        p.add_argument("--user", metavar="NAME", help="user name or AE title of a participant")
        p.add_argument("--clinic", metavar="NAME")
        p.add_argument("--aet", dest="ae_title", metavar="AET")
        p.add_argument("--event", metavar="NAME", help="event name (e.g. Query) or DCM code (e.g. 110112)")
        p.add_argument("--outcome", type=int, choices=(0, 4, 8, 12))
        p.add_argument("--since", type=_time, metavar="TIME", help="from this UTC time (inclusive)")
        p.add_argument("--until", type=_time, metavar="TIME", help="before this UTC time")
        p.add_argument("--limit", type=positive_int, metavar="N")
        p.add_argument("--format", choices=sorted(FORMATS), default="jsonl" if action == "search" else "dicom-xml")
        p.add_argument("-o", "--output", metavar="FILE", help="write here instead of standard output")
        p.set_defaults(func=_guarded(_search))

    p = ops.add_parser("forward", help="send the trail to a syslog collector (RFC 5424 over TLS, RFC 5425)")
    p.add_argument("host")
    p.add_argument("port", type=tcp_port)
    p.add_argument("--trail", metavar="FILE")
    p.add_argument("--ca", required=True, metavar="FILE", help="CA certificate(s) of the collector")
    p.add_argument("--cert", required=True, metavar="FILE", help="our client certificate")
    p.add_argument("--key", required=True, metavar="FILE", help="its private key")
    p.add_argument("--server-name", metavar="NAME", help="name in the collector's certificate (default: host)")
    p.add_argument("--cursor", metavar="FILE", help="delivery cursor (default: next to the trail)")
    p.add_argument("--payload", choices=("json", "xml"), default="json")
    p.set_defaults(func=_guarded(_forward))
