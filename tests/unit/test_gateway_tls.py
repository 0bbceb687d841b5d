"""The gateway's TLS contexts offer and accept only the key exchange groups X25519, P-256 and P-384.

Real handshakes between two in-memory OpenSSL endpoints: a client that offers only one group either
completes the handshake with a gateway context or is refused, for TLS 1.2 and TLS 1.3.
"""

from __future__ import annotations

import ssl

import pytest
from _gateway_env import Credential, Pki
from cryptography.hazmat.primitives.asymmetric import rsa

from securepacs.config.gateway_settings import GatewayError
from securepacs.gateway import gateway_tls
from securepacs.pki import certificates, pem_files

ALLOWED = ("X25519", "P-256", "P-384")
REFUSED = ("X448", "P-521")
VERSIONS = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    p = Pki(tmp_path_factory.mktemp("tls") / "certs")
    # RSA keys, as in production: with TLS 1.2 an ECDSA certificate's own curve must also be one the
    # client offers, which would mix a second, unrelated refusal into these tests.
    p.server = _rsa_credential(p, "server", "server+client", dns_names=["localhost"])
    p.clinic_a = _rsa_credential(p, "clinicA", "client", uris=certificates.clinic_uris("clinicA", ["CLINICA"]))
    return p


def _rsa_credential(p: Pki, name: str, usage: str, **names: list[str]) -> Credential:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # fast; the size is not under test
    key, cert = certificates.make_cert(p.clinic_ca_key, p.clinic_ca_cert, name, usage=usage, days=1, key=key, **names)
    pem_files.write_key(p.root / f"rsa-{name}.key", key)
    pem_files.write_cert(p.root / f"rsa-{name}.crt", cert)
    return Credential(p.root / f"rsa-{name}.crt", p.root / f"rsa-{name}.key", cert.serial_number, cert)


def _client(p: Pki, version: ssl.TLSVersion, group: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = version
    ctx.load_verify_locations(cafile=str(p.clinic_ca))
    ctx.load_cert_chain(str(p.clinic_a.cert), str(p.clinic_a.key))
    gateway_tls.set_groups(ctx, group)  # the client offers this one group only
    return ctx


def _plain_server(p: Pki) -> ssl.SSLContext:
    """Python's defaults (OpenSSL's group list): the control that shows what the client offers works."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(p.server.cert), str(p.server.key))
    return ctx


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> ssl.SSLError | None:
    """Run a handshake through memory BIOs; the error either side raised, or None if it completed."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    done = {server: False, client: False}
    for _ in range(20):
        for end in (client, server):
            if not done[end]:
                try:
                    end.do_handshake()
                    done[end] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as exc:
                    return exc
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server verifies the client's certificate after the client thinks it is done.
            try:
                client.write(b"x")
                s_in.write(c_out.read())
                server.read(1)
            except ssl.SSLError as exc:
                return exc
            return None
    raise AssertionError("handshake did not finish")


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
@pytest.mark.parametrize("group", ALLOWED + REFUSED)
def test_client_offering_one_group_against_openssl_defaults_connects(creds, version, group):
    assert handshake(_plain_server(creds), _client(creds, version, group)) is None


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
@pytest.mark.parametrize("group", ALLOWED)
def test_gateway_accepts_the_allowed_groups(creds, version, group):
    server = gateway_tls.server_context(creds.server.cert, creds.server.key, creds.clinic_ca, "test")
    assert handshake(server, _client(creds, version, group)) is None


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
@pytest.mark.parametrize("group", REFUSED)
def test_gateway_refuses_other_groups(creds, version, group):
    server = gateway_tls.server_context(creds.server.cert, creds.server.key, creds.clinic_ca, "test")
    error = handshake(server, _client(creds, version, group))
    assert error is not None and error.reason in ("NO_SHARED_CIPHER", "NO_SUITABLE_KEY_SHARE"), error


def test_gateway_client_contexts_offer_only_the_allowed_groups(creds):
    """The egress and upstream contexts (gateway as client) are restricted too."""
    client = gateway_tls.client_context(creds.clinic_a.cert, creds.clinic_a.key, creds.clinic_ca, "test",
                                        check_hostname=True)
    for group, ok in (("X448", False), ("P-521", False), ("P-384", True)):
        server = _plain_server(creds)
        gateway_tls.set_groups(server, group)
        assert (handshake(server, client) is None) is ok, group


def test_an_unknown_group_list_is_a_startup_error():
    with pytest.raises(GatewayError, match="refused the TLS group list 'P-999'"):
        gateway_tls.set_groups(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), "P-999")


def test_the_context_pointer_is_checked_before_use(monkeypatch: pytest.MonkeyPatch):
    ctrl, _ = gateway_tls._libssl()
    monkeypatch.setattr(gateway_tls, "_libssl", lambda: (ctrl, lambda pointer: 0))  # options never match
    with pytest.raises(GatewayError, match="SSLContext layout"):
        gateway_tls.set_groups(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), "P-256")
