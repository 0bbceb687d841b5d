"""Orthanc configuration that depends on the Orthanc release that will run (``deploy.py`` writes it).

Options of releases after Debian 12's 1.10.1, each written only for a binary that knows it
(:mod:`securepacs.platform.orthanc_binary`), so 1.10.1 gets exactly the configuration it always had.
"""

from __future__ import annotations

from typing import Any

from securepacs.platform.orthanc_binary import OrthancBinary

# The internal DICOM port's TLS, set by Orthanc itself from 1.12.4 on (before: OPENSSL_CONF, which cannot
# restrict the listener's ciphers, see orthanc/openssl.cnf): TLS 1.2 and 1.3 only; for TLS 1.2 ECDHE with
# AEAD ciphers (what the gateway offers, gateway/tls.py), for TLS 1.3 OpenSSL's suites. Orthanc applies
# them to its own C-MOVE associations (to the gateway's egress relay) too.
DICOM_TLS_MINIMUM_PROTOCOL = 4  # Orthanc's code for "TLS 1.2 + TLS 1.3" (0 would be DCMTK's BCP 195 profile)
DICOM_TLS_CIPHERS = [
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
]
# Largest HTTP request body Orthanc accepts (its default: 8 GB): nginx already stops bodies above its
# client_max_body_size (512m, orthanc/nginx.conf.template); local services send far less.
MAXIMUM_REQUEST_BODY_MB = 512
# Viewers load study metadata through DICOMweb: cached per series (a gzipped attachment in Orthanc's
# storage), built by this many threads. PublicRoot = Root: nginx serves DICOMweb under the same path, so
# bulk data URIs point at the origin the viewer called (host and scheme from nginx's Host and
# X-Forwarded-Proto headers).
DICOMWEB_METADATA: dict[str, Any] = {"EnableMetadataCache": True, "MetadataWorkerThreadsCount": 4,
                                     "PublicRoot": "/dicom-web/"}


def runtime_options(binary: OrthancBinary, *, dicom_tls: bool) -> dict[str, Any]:
    """Top-level options for the generated runtime file; ``dicom_tls``: the DICOM port speaks TLS."""
    options: dict[str, Any] = {}
    if binary.dicom_tls_knobs and dicom_tls:
        options["DicomTlsMinimumProtocolVersion"] = DICOM_TLS_MINIMUM_PROTOCOL
        options["DicomTlsCiphersAccepted"] = DICOM_TLS_CIPHERS
    if binary.http_bind_addresses:
        # Not even a TCP handshake from elsewhere (RemoteAccessAllowed false alone still answers with 401).
        options["HttpBindAddresses"] = ["127.0.0.1"]
    if binary.maximum_request_body_size:
        options["MaximumRequestBodySizeMB"] = MAXIMUM_REQUEST_BODY_MB
    return options


def dicomweb_options(binary: OrthancBinary) -> dict[str, Any]:
    """Additions to the ``DicomWeb`` section."""
    return dict(DICOMWEB_METADATA) if binary.dicomweb_metadata_options else {}


def base_changes(binary: OrthancBinary) -> dict[str, Any]:
    """Keys of orthanc/orthanc.json written in another form: 1.13 takes ``OverwriteInstances`` as a mode
    (our false means "Never", as 1.13 reads it too)."""
    return {"OverwriteInstances": "Never"} if binary.overwrite_instances_mode else {}


def needs_openssl_conf(binary: OrthancBinary) -> bool:
    """Whether only OPENSSL_CONF can keep TLS 1.0/1.1 off Orthanc's DICOM port (before 1.12.4)."""
    return not binary.dicom_tls_knobs
