"""``securepacs serve``: prepare the data dir and run Orthanc + nginx in the foreground."""

from __future__ import annotations

import argparse
import json
import sys

from securepacs import deploy, launcher, settings
from securepacs.pki import PkiError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the archive (audit signer, Orthanc + plugin, DICOM gateway, nginx) in the foreground until Ctrl-C",
        description="Creates the development PKI and the first admin on first start, writes the Orthanc and "
        "nginx configuration for the data dir, then runs both until Ctrl-C. Settings come from "
        "SECUREPACS_DATA, SECUREPACS_CERTS, SECUREPACS_DICOM_PORT, SECUREPACS_HTTPS_PORT, "
        "SECUREPACS_HTTP_PORT, SECUREPACS_INTERNAL_DICOM_PORT, SECUREPACS_EGRESS_PORT (internal), SECUREPACS_AET "
        "and SECUREPACS_HOSTNAMES.",
    )
    p.add_argument("--prepare-only", action="store_true", help="write PKI, admin and configuration, then exit")
    p.add_argument(
        "--only", choices=launcher.COMPONENTS, help="run one component (the compose stack runs each as a service)"
    )
    p.set_defaults(func=run)

    h = subparsers.add_parser("health", help="query /securepacs/health; exit 0 only if every component is ok")
    h.add_argument("--internal", action="store_true", help="ask Orthanc's loopback HTTP port instead of HTTPS")
    h.set_defaults(func=check_health)


def check_health(args: argparse.Namespace) -> int:
    try:
        s = settings.from_env()
    except settings.SettingsError as exc:
        print(f"securepacs: error: {exc}", file=sys.stderr)
        return 2
    if args.internal:
        report = launcher.fetch_health(f"http://127.0.0.1:{s.http_port}/securepacs/health")
    else:
        report = launcher.fetch_health(
            f"https://127.0.0.1:{s.https_port}/securepacs/health", launcher.https_context(s.certs_dir / "ca" / "ca.crt")
        )
    print(json.dumps(report, indent=2) if report else "no answer")
    return 0 if report and report.get("status") == "ok" else 1


def run(args: argparse.Namespace) -> int:
    try:
        s = settings.from_env()
        if args.only and not args.prepare_only:
            # A compose service: init prepared everything as root; this one runs with only its own mounts.
            prepared = deploy.attach(s, args.only)
        else:
            prepared = deploy.prepare(s, with_nginx=not args.prepare_only)
        if args.prepare_only:
            print(f"prepared {s.data_dir} (configuration in {prepared.config_dir})")
            if prepared.admin_created:
                print(f"admin credential written to {s.admin_credential_path} (mode 0600)")
            return 0
        components = (args.only,) if args.only else launcher.COMPONENTS
        archive = launcher.Archive(prepared, components)
        health = archive.start()
    except (settings.SettingsError, deploy.DeployError, launcher.LaunchError, PkiError, OSError) as exc:
        print(f"securepacs: error: {exc}", file=sys.stderr)
        return 2
    if components == ("signer",):
        print(f"audit signer attesting {s.audit_trail_path}", flush=True)
        return archive.wait()
    print(launcher.banner(prepared, health), flush=True)
    return archive.wait()
