#!/usr/bin/env bash
# One install script for every way SecurePACS runs: scripts/up (native), scripts/test (CI) and the
# Docker image. Installs the Debian packages and a venv (Debian's own Python, the one Orthanc's Python
# plugin embeds) with the securepacs package. Safe to re-run: it only does what is missing.
#
#   orthanc/install.sh [--with-tests] [--venv DIR]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="${SECUREPACS_VENV:-$HERE/.venv}"
WITH_TESTS=0
while [ $# -gt 0 ]; do
    case "$1" in
        --with-tests) WITH_TESTS=1 ;;
        --venv) VENV="$2"; shift ;;
        *) echo "install.sh: unknown option '$1' (expected --with-tests or --venv DIR)" >&2; exit 2 ;;
    esac
    shift
done

say() { printf '[install] %s\n' "$*"; }

PACKAGES=(orthanc orthanc-python orthanc-dicomweb nginx python3 python3-venv ca-certificates openssl dcmtk)
# rsyslog + its TLS driver: the real collector the audit forwarding test sends to.
# chromium: Debian's browser, driven headless by Playwright in the web app tests (never `playwright install`).
[ "$WITH_TESTS" = 1 ] && PACKAGES+=(procps rsyslog rsyslog-gnutls chromium)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "install.sh: missing Debian packages: ${missing[*]} — run as root to install them" >&2
        exit 2
    fi
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Debian's packages start their own services on install (a plain-DICOM Orthanc on 4242, nginx on 80);
    # keep them from starting: SecurePACS runs its own hardened instances.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; created_policy=1; fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ "$created_policy" = 1 ] && rm -f "$policy"
fi

# Never leave Debian's stock services enabled (plain DICOM on 4242, plain HTTP on 80).
if [ "$(id -u)" = 0 ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    for svc in orthanc nginx; do
        if systemctl is-enabled --quiet "$svc" 2>/dev/null || systemctl is-active --quiet "$svc" 2>/dev/null; then
            say "disabling Debian's stock $svc service"
            systemctl disable --now "$svc" >/dev/null 2>&1 || true
        fi
    done
fi

# The venv must use the Python that Orthanc's plugin embeds (Debian's python3) for compiled wheels.
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.base_prefix != "/usr")' 2>/dev/null; then
    say "creating venv $VENV with Debian's python3"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv "$VENV"
fi
# Use the system trust store (which includes any local CAs) rather than pip's bundled one.
[ -f /etc/ssl/certs/ca-certificates.crt ] && export PIP_CERT="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
extras=""
[ "$WITH_TESTS" = 1 ] && extras="[test,bench]"
stamp="$VENV/.securepacs-installed"
want="$(sha256sum "$HERE/pyproject.toml" | cut -c1-16)$extras"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing Python dependencies into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -e "$HERE$extras"
    echo "$want" > "$stamp"
fi
say "ready: $("$VENV/bin/securepacs" --version), $(Orthanc --version 2>/dev/null | head -n1), $(nginx -v 2>&1)"
