"""``securepacs serve``: prepare the data dir and run Orthanc + nginx in the foreground."""

from __future__ import annotations

import argparse
import sys

from securepacs import deploy, launcher, settings
from securepacs.pki import PkiError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the archive (Orthanc + plugin + nginx) in the foreground until Ctrl-C",
        description="Creates the development PKI and the first admin on first start, writes the Orthanc and "
        "nginx configuration for the data dir, then runs both until Ctrl-C. Settings come from "
        "SECUREPACS_DATA, SECUREPACS_CERTS, SECUREPACS_DICOM_PORT, SECUREPACS_HTTPS_PORT, "
        "SECUREPACS_HTTP_PORT (internal), SECUREPACS_AET and SECUREPACS_HOSTNAMES.",
    )
    p.add_argument("--prepare-only", action="store_true", help="write PKI, admin and configuration, then exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        s = settings.from_env()
        prepared = deploy.prepare(s)
        if args.prepare_only:
            print(f"prepared {s.data_dir} (configuration in {prepared.config_dir})")
            if prepared.admin_created:
                print(f"admin credential written to {s.admin_credential_path} (mode 0600)")
            return 0
        archive = launcher.Archive(prepared)
        health = archive.start()
    except (settings.SettingsError, deploy.DeployError, launcher.LaunchError, PkiError, OSError) as exc:
        print(f"securepacs: error: {exc}", file=sys.stderr)
        return 2
    print(launcher.banner(prepared, health), flush=True)
    return archive.wait()
