"""``securepacs gateway``: the DICOM TLS front door (clinics -> gateway -> Orthanc's internal port).

C-GET inspection (``securepacs.gateway.dimse``) is always on, with no switch to turn it off: behind the
gateway Orthanc allows C-GET for clinic AE titles, so every C-GET must be checked against the clinic's
studies. (A benchmark that wants to measure the bare relay builds its own ``Gateway`` in bench code.)
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

from securepacs.audit import AuditTrail
from securepacs.config import environment
from securepacs.config.argtypes import positive_int, positive_seconds, rate_per_second
from securepacs.config.gateway_settings import Address
from securepacs.gateway import Gateway, GatewayConfig, GatewayError, InspectorFactory, run_gateway
from securepacs.gateway.association_audit import GatewayAudit
from securepacs.gateway.connection_events import EventLog
from securepacs.gateway.dimse import inspector_factory
from securepacs.gateway.ownership_client import OwnershipClient

logger = logging.getLogger(__name__)


def address(text: str) -> Address:
    """``HOST:PORT``, ``[IPv6]:PORT``, or ``:PORT`` / ``PORT`` for every interface."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535 or (":" in host and not text.startswith("[")):
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT, [IPv6]:PORT or :PORT (port 0-65535)")
    return host, port


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "gateway",
        help="run the DICOM gateway (mutual TLS, certificate-bound AE titles) in front of Orthanc",
        description="Terminates clinics' DICOM TLS on the public port, refuses AE titles not bound to the "
        "presented certificate and revoked certificates (CRL and store, re-read live), then relays each "
        "association unchanged to Orthanc's internal DICOM TLS port. Also relays Orthanc's C-MOVE "
        "sub-associations to the clinics' registered SCPs (--egress). Runs until SIGTERM/SIGINT, letting "
        "running associations finish. Paths come from SECUREPACS_DATA and SECUREPACS_CERTS.",
    )
    p.add_argument("--listen", type=address, metavar="HOST:PORT",
                   help="public address (default every interface, port SECUREPACS_DICOM_PORT or 2762)")
    p.add_argument("--upstream", type=address, metavar="HOST:PORT",
                   help="Orthanc's internal DICOM TLS port (default 127.0.0.1:SECUREPACS_INTERNAL_DICOM_PORT)")
    egress = p.add_mutually_exclusive_group()
    egress.add_argument("--egress", type=address, metavar="HOST:PORT",
                        help="loopback relay for Orthanc's C-MOVE associations (default "
                             "127.0.0.1:SECUREPACS_EGRESS_PORT)")
    egress.add_argument("--no-egress", action="store_true", help="do not run the C-MOVE egress relay")
    p.add_argument("--events", type=Path, metavar="FILE",
                   help="JSON lines of connection events (default DATA/gateway/events.jsonl)")
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-associations", type=positive_int, default=64, metavar="N")
    limits.add_argument("--max-per-clinic", type=positive_int, default=16, metavar="N")
    limits.add_argument("--handshake-timeout", type=positive_seconds, default=10.0, metavar="SECONDS",
                        help="TLS handshake plus A-ASSOCIATE-RQ (default 10)")
    limits.add_argument("--idle-timeout", type=positive_seconds, default=600.0, metavar="SECONDS",
                        help="abort an association silent in both directions this long (default 600)")
    limits.add_argument("--rate-per-ip", type=rate_per_second, default=20.0, metavar="N",
                        help="new connections per second per source IP, 0 for no limit (default 20)")
    limits.add_argument("--rate-burst", type=positive_int, default=40, metavar="N", help="(default 40)")
    limits.add_argument("--shutdown-grace", type=positive_seconds, default=30.0, metavar="SECONDS",
                        help="on SIGTERM, how long running associations may finish (default 30)")
    p.set_defaults(func=run)


def build_config(s: environment.Settings, args: argparse.Namespace) -> GatewayConfig:
    """The gateway's configuration from the deployment settings, overridden by command line flags."""
    certs = s.certs_dir
    egress: Address | None = None
    if not getattr(args, "no_egress", False):
        egress = getattr(args, "egress", None) or ("127.0.0.1", s.egress_port)
    events = getattr(args, "events", None) or s.data_dir / "gateway" / "events.jsonl"
    return GatewayConfig(
        listen=getattr(args, "listen", None) or ("", s.dicom_port),
        upstream=getattr(args, "upstream", None) or ("127.0.0.1", s.internal_dicom_port),
        egress_listen=egress,
        aet=s.aet,
        server_cert=certs / "server" / "server.crt",
        server_key=certs / "server" / "server.key",
        clinic_ca=certs / "ca" / "ca.crt",
        crl=certs / "ca" / "crl.pem",
        internal_ca=certs / "internal" / "ca.crt",
        internal_cert=certs / "internal" / "gateway.crt",
        internal_key=certs / "internal" / "gateway.key",
        store_path=s.store_path,
        events_path=events,
        max_associations=getattr(args, "max_associations", 64),
        max_per_clinic=getattr(args, "max_per_clinic", 16),
        handshake_timeout=getattr(args, "handshake_timeout", 10.0),
        idle_timeout=getattr(args, "idle_timeout", 600.0),
        rate_per_ip=getattr(args, "rate_per_ip", 20.0),
        rate_burst=getattr(args, "rate_burst", 40),
        shutdown_grace=getattr(args, "shutdown_grace", 30.0),
        internal_tls=s.internal_hop == "tls",
    )


def _announce(gateway: Gateway) -> None:
    where = gateway.address
    line = f"gateway listening on {where[0] or '*'}:{where[1]} -> Orthanc {gateway.config.upstream[0]}:" \
           f"{gateway.config.upstream[1]}" if where else "gateway started"
    if gateway.egress_address:
        line += f"; C-MOVE egress relay on {gateway.egress_address[0]}:{gateway.egress_address[1]}"
    print(line, flush=True)


def read_credential(path: Path) -> tuple[str, str]:
    """(username, password) from the ``username: ...`` / ``password: ...`` file written by deploy."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise GatewayError(f"gateway credential {path} does not exist: prepare the archive first "
                           "(securepacs serve --prepare-only)") from None
    except OSError as exc:
        raise GatewayError(f"cannot read gateway credential {path}: {exc.strerror or exc}") from None
    fields = dict(line.split(": ", 1) for line in lines if ": " in line)
    if not fields.get("username") or not fields.get("password"):
        raise GatewayError(f"gateway credential {path} is invalid: expected 'username: ...' and 'password: ...' lines")
    return fields["username"], fields["password"]


def cget_inspection(s: environment.Settings, events: EventLog) -> InspectorFactory:
    """Every clinic association gets a C-GET inspector that asks the plugin who owns the requested UIDs."""
    username, password = read_credential(s.gateway_credential_path)
    client = OwnershipClient(s.http_port, username, password)
    return inspector_factory(client.authorize, events.record)


def open_audit(s: environment.Settings) -> GatewayAudit:
    try:
        trail = AuditTrail(s.audit_trail_path)
    except OSError as exc:
        raise GatewayError(f"cannot open the audit trail {s.audit_trail_path}: {exc.strerror or exc}") from None
    return GatewayAudit(trail, s.aet, socket.gethostname())


def run(args: argparse.Namespace) -> int:
    try:
        s = environment.from_env()
        config = build_config(s, args)
        events = EventLog(config.events_path, open_audit(s))
        factory = cget_inspection(s, events)
    except (environment.SettingsError, GatewayError) as exc:
        print(f"securepacs: error: {exc}", file=sys.stderr)
        return 2
    status = run_gateway(config, factory, ready=_announce, events=events)
    if status == 2:
        print("securepacs: error: the gateway could not start (see the log above)", file=sys.stderr)
    return status
