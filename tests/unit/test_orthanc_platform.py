"""The Orthanc binary's version, asked once by deploy, and the configuration it gets for it."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import pytest

from securepacs.config import plugin_settings
from securepacs.config.environment import Settings
from securepacs.ops import deploy
from securepacs.pki.authority import Pki
from securepacs.platform import orthanc_binary, orthanc_options
from securepacs.platform.orthanc_binary import OrthancBinary, OrthancBinaryError

BOOKWORM, TRIXIE, FORKY = OrthancBinary((1, 10, 1)), OrthancBinary((1, 12, 7)), OrthancBinary((1, 13, 0))
NEWER_KEYS = {"DicomTlsMinimumProtocolVersion", "DicomTlsCiphersAccepted", "HttpBindAddresses",
              "MaximumRequestBodySizeMB"}


def fake_orthanc(tmp_path: Path, output: str, rc: int = 0) -> str:
    path = tmp_path / "Orthanc"
    path.write_text(f"#!/bin/sh\nprintf '%s' '{output}'\nexit {rc}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path / "data", certs_dir=tmp_path / "certs", hostnames=("localhost",))
    deploy.ensure_proxy_secret(deploy.proxy_dir(s), None)
    return s


def test_the_version_is_read_from_the_binary(tmp_path: Path) -> None:
    exe = fake_orthanc(tmp_path, "Orthanc 1.13.0\\nCopyright (C) 2012-2016 Sebastien Jodogne\\n")
    assert orthanc_binary.detect(exe) == FORKY and str(orthanc_binary.detect(exe)) == "1.13.0"


@pytest.mark.parametrize(("output", "rc"), [("Orthanc 1.13.0\\n", 1), ("orthanc version unknown\\n", 0)])
def test_a_binary_that_does_not_say_its_version_is_an_error(tmp_path: Path, output: str, rc: int) -> None:
    with pytest.raises(OrthancBinaryError, match=r"without an 'Orthanc X\.Y\.Z' line"):
        orthanc_binary.detect(fake_orthanc(tmp_path, output, rc))
    with pytest.raises(OrthancBinaryError, match="cannot run"):
        orthanc_binary.detect(str(tmp_path / "missing"))


def test_this_hosts_orthanc_is_detected() -> None:
    assert orthanc_binary.detect().version >= (1, 10, 1)


def test_debian_12s_orthanc_keeps_its_configuration(settings: Settings, tmp_path: Path) -> None:
    runtime = deploy.orthanc_runtime_config(settings, Pki(settings.certs_dir), tmp_path / "s", BOOKWORM)
    assert not NEWER_KEYS & set(runtime)
    assert not {"EnableMetadataCache", "MetadataWorkerThreadsCount", "PublicRoot"} & set(runtime["DicomWeb"])
    assert deploy.base_config_text(settings, BOOKWORM) == (deploy.ORTHANC_DIR / "orthanc.json").read_text()
    # Only OPENSSL_CONF keeps TLS 1.0/1.1 off 1.10.1's DICOM port.
    assert deploy.orthanc_env(BOOKWORM)["OPENSSL_CONF"] == str(deploy.ORTHANC_DIR / "openssl.cnf")


def test_orthanc_1_13_gets_its_own_options(settings: Settings, tmp_path: Path) -> None:
    base = json.loads(deploy.base_config_text(settings, FORKY))
    runtime = deploy.orthanc_runtime_config(settings, Pki(settings.certs_dir), tmp_path / "s", FORKY)
    assert base["OverwriteInstances"] == "Never"
    assert runtime["DicomTlsMinimumProtocolVersion"] == 4  # TLS 1.2 + 1.3
    assert all(c.startswith(("ECDHE-", "TLS_")) and ("GCM" in c or "CHACHA20" in c)
               for c in runtime["DicomTlsCiphersAccepted"])
    assert runtime["HttpBindAddresses"] == ["127.0.0.1"]
    assert runtime["MaximumRequestBodySizeMB"] == orthanc_options.MAXIMUM_REQUEST_BODY_MB
    web = runtime["DicomWeb"]
    assert (web["EnableMetadataCache"], web["PublicRoot"]) == (True, web["Root"])
    assert "OPENSSL_CONF" not in deploy.orthanc_env(FORKY)
    assert not set(base) & set(runtime)  # Orthanc refuses a key defined in two files of its config dir
    plugin_settings.parse({**base, **runtime})  # and the plugin accepts what it gets


def test_trixie_gets_what_1_12_7_knows(settings: Settings, tmp_path: Path) -> None:
    runtime = deploy.orthanc_runtime_config(settings, Pki(settings.certs_dir), tmp_path / "s", TRIXIE)
    assert {"DicomTlsMinimumProtocolVersion", "DicomTlsCiphersAccepted"} <= set(runtime)
    assert not {"HttpBindAddresses", "MaximumRequestBodySizeMB"} & set(runtime)
    assert json.loads(deploy.base_config_text(settings, TRIXIE))["OverwriteInstances"] is False


def test_the_plain_hop_has_no_tls_options(settings: Settings, tmp_path: Path) -> None:
    plain = dataclasses.replace(settings, internal_hop="plain")
    runtime = deploy.orthanc_runtime_config(plain, Pki(plain.certs_dir), tmp_path / "s", FORKY)
    base = json.loads(deploy.base_config_text(plain, FORKY))
    assert base["DicomTlsEnabled"] is False and base["OverwriteInstances"] == "Never"
    assert "DicomTlsCiphersAccepted" not in runtime and runtime["HttpBindAddresses"] == ["127.0.0.1"]


def test_detection_failures_stop_deploy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    orthanc_binary.detect.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path))  # no Orthanc here
    try:
        with pytest.raises(deploy.DeployError, match="cannot run 'Orthanc' --version"):
            deploy.orthanc_env()
    finally:
        orthanc_binary.detect.cache_clear()
