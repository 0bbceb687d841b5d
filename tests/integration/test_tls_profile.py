"""Both public TLS ports pass an independent scanner's Mozilla "intermediate" check (issue 12, finding 8).

sslyze (PyPI, the scanner behind ``sslyze --mozilla_config=intermediate``) scans the HTTPS port (nginx)
and the DICOM port (the gateway, which requires a client certificate: the scan presents clinicA's bundle
through sslyze's ``ClientAuthenticationCredentials``), then its own Mozilla checker grades the result.

What the checker covers: TLS versions (1.2 and 1.3 only), TLS 1.2 cipher suites and TLS 1.3 suites against
the profile's lists, key-exchange groups (X25519, P-256, P-384 only), ECDH/DH parameter sizes, the leaf's key
type and size, signature algorithm and lifetime (at most 366 days), certificate path validation, and
compression, CCS injection, Heartbleed, ROBOT, TLS_FALLBACK_SCSV, secure renegotiation and extended master
secret. Path validation runs against sslyze's public trust stores *and* our CA (``custom_ca_file``, the
sslyze-supported way to trust a private CA) with cryptography's server verifier, which also checks the SAN
against the name dialled (``localhost``) and the serverAuth usage; only our CA can validate the chain (the
second test asserts exactly that), so the checker's "path validation" means "a valid server certificate for
this name from the archive's CA".
Not covered by the checker (and not asserted here): OCSP stapling (the profile marks it optional; a private
CA has no responder) and the HSTS header (sslyze disabled that check; nginx sends the profile's max-age).
"""

from __future__ import annotations

import pytest
from sslyze import (
    CertificateInfoExtraArgument,
    ClientAuthenticationCredentials,
    ClientAuthRequirementEnum,
    ScanCommandsExtraArguments,
    Scanner,
    ServerNetworkConfiguration,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanResult,
    ServerScanStatusEnum,
)
from sslyze.mozilla_tls_profile.tls_config_checker import (
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)
from sslyze.server_connectivity import check_connectivity_to_server

pytestmark = pytest.mark.integration

PORTS = ("https", "dicom")
OUR_CA = "Supplied CA file"  # sslyze's name for the trust store built from ``custom_ca_file``


@pytest.fixture(scope="module")
def scans(archive, clinic_a) -> dict[str, ServerScanResult]:
    """One sslyze scan of each public port (queued together: the scanner runs them concurrently)."""
    extra = ScanCommandsExtraArguments(certificate_info=CertificateInfoExtraArgument(custom_ca_file=archive.ca_cert))
    client = ClientAuthenticationCredentials(certificate_chain_path=clinic_a.cert, key_path=clinic_a.key)
    configs = {
        "https": (archive.https_port, ServerNetworkConfiguration(tls_server_name_indication=archive.host)),
        "dicom": (archive.dicom_port, ServerNetworkConfiguration(tls_server_name_indication=archive.host,
                                                                  tls_client_auth_credentials=client)),
    }
    requests = {
        name: ServerScanRequest(
            # The address given explicitly: "localhost" may resolve to ::1 first, where nothing listens.
            server_location=ServerNetworkLocation(hostname=archive.host, port=port, ip_address="127.0.0.1"),
            network_configuration=network,
            scan_commands=SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
            scan_commands_extra_arguments=extra,
        )
        for name, (port, network) in configs.items()
    }
    by_port = {req.server_location.port: name for name, req in requests.items()}
    scanner = Scanner()
    scanner.queue_scans(list(requests.values()))
    return {by_port[result.server_location.port]: result for result in scanner.get_results()}


@pytest.mark.parametrize("port", PORTS)
def test_port_is_mozilla_intermediate_compliant(scans, port):
    result = scans[port]
    assert result.scan_status == ServerScanStatusEnum.COMPLETED, (
        f"sslyze could not scan the {port} port: {result.connectivity_error_trace}")
    config = MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
    try:
        check_server_against_tls_configuration(result, config)
    except ServerNotCompliantWithTlsConfiguration as exc:
        problems = "\n".join(f"  {key}: {text}" for key, text in sorted(exc.issues.items()))
        pytest.fail(f"the {port} port is not Mozilla intermediate compliant:\n{problems}")


@pytest.mark.parametrize("port", PORTS)
def test_certificate_is_validated_by_our_ca_only(scans, port):
    cert_info = scans[port].scan_result.certificate_info.result
    assert cert_info.certificate_deployments
    for deployment in cert_info.certificate_deployments:
        by_store = {r.trust_store.name: r.was_validation_successful for r in deployment.path_validation_results}
        assert by_store.pop(OUR_CA) is True, deployment.path_validation_results
        assert not any(by_store.values()), by_store  # no public trust store vouches for our private CA


def test_dicom_scan_went_through_mutual_tls(archive):
    """Without the clinic's certificate the gateway refuses the handshake: the scan above presented it."""
    location = ServerNetworkLocation(hostname=archive.host, port=archive.dicom_port, ip_address="127.0.0.1")
    probe = check_connectivity_to_server(location, ServerNetworkConfiguration(tls_server_name_indication=archive.host))
    assert probe.client_auth_requirement == ClientAuthRequirementEnum.REQUIRED
