"""``securepacs pki init|show|crl``: the certificate authority and the server certificate."""

from __future__ import annotations

import argparse
import functools
import logging
import sqlite3
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from securepacs.config import environment as settings_mod
from securepacs.config.environment import SettingsError
from securepacs.pki.authority import Pki
from securepacs.pki.certificates import PkiError, fingerprint_sha256, split_hostnames
from securepacs.pki.enrolment import EnrolmentError, refresh_crl
from securepacs.pki.pem_files import load_cert
from securepacs.store.database import Store
from securepacs.store.records import StoreError

log = logging.getLogger(__name__)

EXIT_USAGE = 2
_ERRORS = (EnrolmentError, StoreError, PkiError, SettingsError)


def guarded(run: Callable[[argparse.Namespace], int],
            extra: tuple[type[Exception], ...] = ()) -> Callable[[argparse.Namespace], int]:
    """Report a refused operation (a store/PKI/settings error, or one of ``extra``) as one
    ``securepacs: error: ...`` line and exit status 2."""
    errors = _ERRORS + extra

    @functools.wraps(run)
    def func(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except errors as exc:
            message = " ".join(str(exc).split())  # one line, whatever the underlying message looks like
            print(f"securepacs: error: {message}", file=sys.stderr)
            return EXIT_USAGE

    return func


def open_store(path: Path) -> Store:
    try:
        return Store(path)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open the store {path}: {exc}") from exc


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    pki = subparsers.add_parser("pki", help="certificate authority: CA, server certificate, CRL",
                                description="Certificate authority in SECUREPACS_CERTS (default ./certs).")
    ops = pki.add_subparsers(dest="pki_command", required=True, metavar="ACTION")

    p = ops.add_parser("init", help="create the CA and the server certificate if missing")
    p.add_argument("--hostname", action="append", metavar="NAME",
                   help="DNS name or IP address for the server certificate; repeatable "
                        "(default: SECUREPACS_HOSTNAMES, else localhost, loopback and this host's FQDN)")
    p.set_defaults(func=guarded(_init))

    p = ops.add_parser("show", help="CA and server certificate: subject, names, expiry")
    p.set_defaults(func=guarded(_show))

    p = ops.add_parser("crl", help="rewrite the CRL from the revoked certificates in the store (run weekly)")
    p.set_defaults(func=guarded(_crl))


def _days_left(when: datetime) -> int:
    return (when - datetime.now(UTC)).days


def _init(args: argparse.Namespace) -> int:
    settings = settings_mod.from_env()
    pki = Pki(settings.certs_dir)
    hostnames = args.hostname or list(settings.hostnames)
    split_hostnames(hostnames)  # refuse bad names before anything is created
    if pki.ensure_ca():
        print(f"CA created: {pki.ca_cert_path} (private key {pki.ca_key_path}: back it up, keep it private)")
    else:
        print(f"CA already existed: {pki.ca_cert_path}")
    reason = pki.server_renewal_reason(hostnames)
    if pki.ensure_server(hostnames):
        what = "created" if reason == "missing" else f"re-issued ({reason})"
        print(f"server certificate {what}: {pki.server_cert_path} for {', '.join(hostnames)}")
    else:
        print(f"server certificate already existed: {pki.server_cert_path} (covers {', '.join(hostnames)})")
    if not pki.crl_path.exists():
        # The TLS gateway needs a CRL file even before anything has been revoked.
        if settings.store_path.exists():
            store = open_store(settings.store_path)
            try:
                refresh_crl(store, pki)
            finally:
                store.close()
        else:
            pki.write_crl([])
        print(f"CRL created: {pki.crl_path}")
    return 0


def _san_text(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "(none)"
    names = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
    names += [f"IP:{a}" for a in san.get_values_for_type(x509.IPAddress)]
    return ", ".join(names) or "(none)"


def _describe(title: str, path: Path, with_san: bool) -> bool:
    if not path.exists():
        print(f"{title}: missing ({path}); run `securepacs pki init`")
        return False
    cert = load_cert(path)
    end = cert.not_valid_after_utc
    print(f"{title}: {path}")
    print(f"  subject:     {cert.subject.rfc4514_string()}")
    print(f"  issuer:      {cert.issuer.rfc4514_string()}")
    if with_san:
        print(f"  names:       {_san_text(cert)}")
    print(f"  expires:     {end:%Y-%m-%d %H:%M} UTC ({_days_left(end)} days left)")
    print(f"  sha256:      {fingerprint_sha256(cert)}")
    return True


def _show(args: argparse.Namespace) -> int:
    settings = settings_mod.from_env()
    pki = Pki(settings.certs_dir)
    ok = _describe("CA", pki.ca_cert_path, with_san=False)
    ok = _describe("server certificate", pki.server_cert_path, with_san=True) and ok
    if pki.crl_path.exists():
        try:
            crl = x509.load_pem_x509_crl(pki.crl_path.read_bytes())
        except ValueError:
            raise PkiError(f"{pki.crl_path} does not contain a PEM CRL") from None
        nxt = crl.next_update_utc
        due = f"next update due {nxt:%Y-%m-%d %H:%M} UTC" if nxt else "no next update"
        print(f"CRL: {pki.crl_path} ({len(crl)} revoked, {due})")
    else:
        print(f"CRL: missing ({pki.crl_path}); run `securepacs pki init`")
    return 0 if ok else 1


def _crl(args: argparse.Namespace) -> int:
    settings = settings_mod.from_env()
    pki = Pki(settings.certs_dir)
    if not pki.has_ca():
        raise PkiError(f"no certificate authority in {pki.ca_cert_path.parent}: run `securepacs pki init` first")
    store = open_store(settings.store_path)
    try:
        serials = refresh_crl(store, pki)
    finally:
        store.close()
    print(f"CRL written: {pki.crl_path} ({len(serials)} revoked certificate(s), valid 7 days)")
    return 0
