"""``securepacs serve``: prepare the data dir and run Orthanc + nginx in the foreground."""

from __future__ import annotations

import argparse
import json
import sys

from securepacs.config import environment
from securepacs.ops import deploy, launcher
from securepacs.pki.certificates import PkiError
from securepacs.platform import exposure, health


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

    h = subparsers.add_parser(
        "health",
        help="report the archive's health, platform versions and known unfixed CVEs",
        description="Asks /securepacs/health over HTTPS (as clients reach it) and the detailed report (versions, "
        "unfixed CVEs) on Orthanc's loopback port, which answers local processes only. Exit status: 0 every "
        "component ok; 1 not serving (no answer, or a component other than the platform not ok); 3 serving, but "
        "the platform is degraded: the running Orthanc has a known unfixed CVE.",
    )
    h.add_argument("--internal", action="store_true", help="ask Orthanc's loopback HTTP port only (not nginx)")
    h.add_argument("--json", action="store_true", help="print the detailed report as JSON")
    h.add_argument("--serving", action="store_true",
                   help="exit 0 whenever the archive serves, also with a degraded platform (for health checks "
                   "whose failure restarts or blocks the service, like compose's: that fixes no CVE)")
    h.set_defaults(func=check_health)


EXIT_OK, EXIT_NOT_SERVING, EXIT_EXPOSED = 0, 1, 3


def check_health(args: argparse.Namespace) -> int:
    try:
        s = environment.from_env()
    except environment.SettingsError as exc:
        print(f"securepacs: error: {exc}", file=sys.stderr)
        return 2
    detail = launcher.fetch_health(f"http://127.0.0.1:{s.http_port}{health.LOCAL_URI}")
    if args.internal:
        served = detail
    else:
        ca = launcher.https_context(s.certs_dir / "ca" / "ca.crt")
        served = launcher.fetch_health(f"https://127.0.0.1:{s.https_port}{health.PUBLIC_URI}", ca)
    report = detail or served
    if args.json:
        print(json.dumps(report, indent=2) if report else "no answer")
    else:
        print(_summary(report, served))
    status = _exit_status(served)
    return EXIT_OK if args.serving and status == EXIT_EXPOSED else status


def _summary(report: dict | None, served: dict | None) -> str:
    if not report:
        return "SecurePACS: no answer"
    components = report.get("components") or {}
    lines = [f"SecurePACS: {report.get('status')}" + ("" if served else " (but no answer over HTTPS: nginx?)")]
    lines += [f"  {name}: {c.get('status')}" for name, c in components.items() if isinstance(c, dict)]
    lines += [f"  {line}" for line in exposure.describe(components.get("platform"))]
    return "\n".join(lines)


def _exit_status(served: dict | None) -> int:
    """0 only if every component is ok. A degraded platform (a known CVE in the running Orthanc, or a version
    that could not be read) gets its own code, 3, not 1: the archive serves, and restarting or waiting (what
    an "unhealthy" health check leads to) does not fix it; an upgrade does."""
    if not health.ready(served):
        return EXIT_NOT_SERVING
    return EXIT_OK if served and served.get("status") == "ok" else EXIT_EXPOSED


def run(args: argparse.Namespace) -> int:
    try:
        s = environment.from_env()
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
    except (environment.SettingsError, deploy.DeployError, launcher.LaunchError, PkiError, OSError) as exc:
        print(f"securepacs: error: {exc}", file=sys.stderr)
        return 2
    if components == ("signer",):
        print(f"audit signer attesting {s.audit_trail_path}", flush=True)
        return archive.wait()
    print(launcher.banner(prepared, health), flush=True)
    return archive.wait()
