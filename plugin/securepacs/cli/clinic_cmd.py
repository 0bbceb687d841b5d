"""``securepacs clinic add|list|renew|revoke``: enrol clinics and hand them their certificate bundle."""

from __future__ import annotations

import argparse
import ipaddress
import shlex
import sys

from securepacs.archive import modalities
from securepacs.audit import codes
from securepacs.cli.audit_cmd import record_change
from securepacs.cli.pki_cmd import guarded, open_store
from securepacs.config import environment as settings_mod
from securepacs.config.environment import Settings
from securepacs.config.gateway_settings import GatewayConfig
from securepacs.pki import enrolment, renewal
from securepacs.pki.authority import ClinicBundle, Pki
from securepacs.pki.certificates import MAX_LEAF_DAYS
from securepacs.store.database import Store

ENROL_WAIT_SECONDS = 15.0
EXIT_NOT_CONFIRMED = 1


def _wait_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds 0-3600 (0: do not wait)")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    clinic = subparsers.add_parser("clinic", help="enrol, list and revoke clinics",
                                   description="Clinics, their AE titles and client certificates.")
    ops = clinic.add_subparsers(dest="clinic_command", required=True, metavar="ACTION")

    p = ops.add_parser("add", help="enrol a clinic and write its certificate bundle")
    p.add_argument("name", metavar="NAME", help="clinic name: letters, digits, '.', '_', '-' (max 64)")
    p.add_argument("--aet", action="append", required=True, metavar="AET",
                   help="an AE title the clinic's devices use; repeatable")
    p.add_argument("--host", metavar="HOST",
                   help="C-MOVE destination host of the clinic (with --port); the bundle's certificate then also "
                        "serves the clinic's SCP (serverAuth, HOST as DNS/IP name)")
    p.add_argument("--port", type=int, metavar="PORT", help="C-MOVE destination port of the clinic (with --host)")
    p.add_argument("--days", type=int, default=MAX_LEAF_DAYS, metavar="N",
                   help=f"certificate lifetime in days (default and maximum {MAX_LEAF_DAYS})")
    p.add_argument("--wait", type=_wait_seconds, default=ENROL_WAIT_SECONDS, metavar="SECONDS",
                   help="when the archive is running, return only once it accepts the new AE titles, waiting at "
                        f"most this long (default {ENROL_WAIT_SECONDS:g}, 0 = do not wait; exit status 1 if it did "
                        "not confirm in time). A stopped archive registers them when it starts: no wait then")
    p.set_defaults(func=guarded(_add))

    p = ops.add_parser("list", help="table of clinics, AE titles, status and certificate expiry")
    p.set_defaults(func=guarded(_list))

    p = ops.add_parser("renew", help="issue the clinic a new bundle (new key) for its current AE titles and retrieve "
                                     "address: before it expires, or for a bundle its SCP cannot present")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--days", type=int, default=MAX_LEAF_DAYS, metavar="N",
                   help=f"certificate lifetime in days (default and maximum {MAX_LEAF_DAYS})")
    p.set_defaults(func=guarded(_renew))

    p = ops.add_parser("revoke", help="revoke a clinic: unregister its AE titles, list its certificate in the CRL")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=guarded(_revoke))


def _example_host(settings: Settings) -> str:
    # The first name a remote clinic can reach: skip loopback names and addresses when there are others.
    for host in settings.hostnames:
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return host
        except ValueError:
            if host != "localhost":
                return host
    return settings.hostnames[0]


def _print_bundle(bundle: ClinicBundle, aets: tuple[str, ...], settings: Settings, scp: str | None) -> None:
    q = shlex.quote
    role = f"client certificate and the certificate of the SCP at {scp}" if scp else "client certificate"
    print(f"Bundle directory: {bundle.directory}")
    print(f"  {bundle.key_path.name:<16} private key (PEM, unencrypted): keep secret")
    print(f"  {bundle.cert_path.name:<16} {role} (PEM), serial {bundle.serial}")
    print(f"  {bundle.ca_path.name:<16} SecurePACS CA certificate: trust anchor for the server (PEM)")
    print(f"  {bundle.p12_path.name:<16} key + certificate + CA as PKCS#12, for devices that import one file")
    print(f"  {bundle.p12_pass_path.name:<16} passphrase of {bundle.p12_path.name} (read it from this file; "
          "it is not shown here)")
    print(f"Certificate valid until {bundle.not_after:%Y-%m-%d} UTC; SHA-256 fingerprint {bundle.fingerprint}")
    print("Give the directory to the clinic over a secure channel (not e-mail), then test the connection:")
    host, port = _example_host(settings), str(settings.dicom_port)
    key, cert, ca = (q(str(p)) for p in (bundle.key_path, bundle.cert_path, bundle.ca_path))
    aet, aec = q(aets[0]), q(settings.aet)
    print(f"  echoscu +tls {key} {cert} +cf {ca} -aet {aet} -aec {aec} {q(host)} {port}")
    print(f"  securepacs client echo -aet {aet} -aec {aec} --cert {cert} --key {key} --ca {ca} {q(host)} {port}")


def _add(args: argparse.Namespace) -> int:
    settings = settings_mod.from_env()
    pki = Pki(settings.certs_dir)
    store = open_store(settings.store_path)
    try:
        clinic, bundle = enrolment.enrol(store, pki, args.name, args.aet, args.host, args.port, args.days,
                                       reserved_aets=(settings.aet,))
        generation = store.generation()
        record_change(codes.SECURITY_CONFIGURATION, f"clinic enrolled with AE title(s) {', '.join(clinic.aets)}",
                      f"clinic:{clinic.name}")
        print(f"Enrolled clinic {clinic.name!r} with AE title(s) {', '.join(clinic.aets)}")
        scp = f"{clinic.move_host}:{clinic.move_port}" if clinic.move_host else None
        _print_bundle(bundle, clinic.aets, settings, scp)
        return _await_registration(store, generation, clinic.aets, getattr(args, "wait", ENROL_WAIT_SECONDS))
    finally:
        store.close()


def _renew(args: argparse.Namespace) -> int:
    settings = settings_mod.from_env()
    pki = Pki(settings.certs_dir)
    store = open_store(settings.store_path)
    try:
        clinic, bundle, superseded = renewal.renew(store, pki, args.name, args.days)
    finally:
        store.close()
    record_change(codes.SECURITY_CONFIGURATION, f"clinic certificate renewed (serial {bundle.serial})",
                  f"clinic:{clinic.name}")
    print(f"Renewed the certificate of clinic {clinic.name!r} (AE title(s) {', '.join(clinic.aets)})")
    if superseded is not None:
        print(f"Previous bundle moved to {superseded}; its certificate stays valid until it expires "
              "(`securepacs clinic revoke` revokes all of the clinic's certificates).")
    scp = f"{clinic.move_host}:{clinic.move_port}" if clinic.move_host else None
    _print_bundle(bundle, clinic.aets, settings, scp)
    return 0


def _await_registration(store: Store, generation: int, aets: tuple[str, ...], wait: float) -> int:
    """Return only when the clinic can associate: the plugin has pushed this enrolment into Orthanc's
    modalities, and the gateway (which re-reads the store at most every refresh interval) has seen it."""
    names = ", ".join(aets)
    if wait <= 0:
        print(f"Not waiting for the archive (--wait 0): AE title(s) {names} are accepted within seconds.")
        return 0
    result = modalities.await_registration(store, generation, wait, settle=GatewayConfig.refresh_interval + 0.2)
    if result.state == modalities.APPLIED:
        print(f"The running archive accepts AE title(s) {names} now.")
        return 0
    if result.state == modalities.NOT_RUNNING:
        print(f"The archive is not running: it registers AE title(s) {names} when it starts.")
        return 0
    print(f"securepacs: warning: clinic enrolled, but the running archive did not confirm AE title(s) {names} "
          f"within {result.waited:.0f} s: check its log for 'modality sync failed'", file=sys.stderr)
    return EXIT_NOT_CONFIRMED


def _list(args: argparse.Namespace) -> int:
    settings = settings_mod.from_env()
    store = open_store(settings.store_path)
    try:
        rows = enrolment.list_clinics(store)
    finally:
        store.close()
    if not rows:
        print("no clinics enrolled (add one with `securepacs clinic add NAME --aet AET`)")
        return 0
    table = [("NAME", "AE TITLES", "STATUS", "EXPIRES", "DAYS LEFT")]
    for r in rows:
        expires = f"{r.expires:%Y-%m-%d}" if r.expires else "-"
        days = str(r.days_left) if r.days_left is not None else "-"
        table.append((r.clinic, ",".join(r.aets), r.status, expires, days))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _revoke(args: argparse.Namespace) -> int:
    settings = settings_mod.from_env()
    pki = Pki(settings.certs_dir)
    store = open_store(settings.store_path)
    try:
        aets = store.get_clinic(enrolment.validate_clinic_name(args.name)).aets
        serials = enrolment.revoke(store, pki, args.name)
    finally:
        store.close()
    record_change(codes.SECURITY_CONFIGURATION, f"clinic revoked (certificate serial(s) {', '.join(serials)})",
                  f"clinic:{args.name}")
    print(f"Revoked clinic {args.name!r} (certificate serial(s): {', '.join(serials) or 'none'}).")
    print(f"- CRL: written to {pki.crl_path}. The DICOM gateway reads it and the store every second: new "
          "associations with this certificate are refused and live ones aborted within seconds, no restart.")
    print(f"- Orthanc: the SecurePACS plugin unregisters AE title(s) {', '.join(aets)} within a few seconds.")
    return 0
