"""The gateway's four TLS contexts: clinic-facing server, Orthanc-facing client, and the egress pair.

Public side policy (issue 6): TLS 1.2 with ECDHE key exchange and AEAD ciphers only (AES-GCM, ChaCha20),
or TLS 1.3 (all of whose suites are AEAD); TLS 1.0/1.1, RSA key transport, CBC and SHA-1 MACs refused.
Key exchange groups (issue 12): X25519, P-256 and P-384 only, as Mozilla's intermediate profile says
(OpenSSL 3 also offers X448 and P-521 by default).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509

from securepacs.config.gateway_settings import GatewayError

# OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are configured separately and are all AEAD).
# "ECDHE+AESGCM" covers ECDHE-RSA and ECDHE-ECDSA with AES-128/256-GCM; likewise for ChaCha20-Poly1305.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
TLS_GROUPS = "X25519:P-256:P-384"
_SSL_CTRL_SET_GROUPS_LIST = 92  # openssl/ssl.h; SSL_CTX_set1_groups_list() is a macro over SSL_CTX_ctrl()


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path, what: str) -> None:
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except FileNotFoundError as exc:
        raise GatewayError(f"{what}: {exc.filename} does not exist") from None
    except (ssl.SSLError, OSError) as exc:
        raise GatewayError(f"{what}: cannot load certificate {cert} with key {key}: {exc}") from None


def _load_ca(ctx: ssl.SSLContext, ca: Path, what: str) -> None:
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except FileNotFoundError:
        raise GatewayError(f"{what}: CA file {ca} does not exist") from None
    except (ssl.SSLError, OSError) as exc:
        raise GatewayError(f"{what}: cannot load CA file {ca}: {exc}") from None


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    set_groups(ctx, TLS_GROUPS)


@functools.cache
def _libssl() -> tuple[Any, Any]:
    """SSL_CTX_ctrl and SSL_CTX_get_options of the OpenSSL that Python's ``ssl`` module is linked to."""
    import _ssl

    # dlsym() on the _ssl extension finds the symbols of the libssl it was linked against (not some other
    # OpenSSL in the process, e.g. cryptography's); a built-in _ssl has no __file__: look in the interpreter.
    lib = ctypes.CDLL(getattr(_ssl, "__file__", None))
    ctrl, get_options = lib.SSL_CTX_ctrl, lib.SSL_CTX_get_options
    ctrl.argtypes, ctrl.restype = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p], ctypes.c_long
    get_options.argtypes, get_options.restype = [ctypes.c_void_p], ctypes.c_uint64
    return ctrl, get_options


def set_groups(ctx: ssl.SSLContext, groups: str) -> None:
    """Restrict the context's key exchange groups (TLS 1.2 ECDHE curves and TLS 1.3 key shares).

    Python 3.11's ``ssl`` offers only ``set_ecdh_curve`` (one curve). An ``OPENSSL_CONF`` ``Groups`` line would
    depend on the environment the gateway happens to be started with; this sets the list on each context
    itself. CPython's SSLContext object (``PySSLContext`` in Modules/_ssl.c) holds its ``SSL_CTX *`` right
    after the object header; the pointer is cross-checked against the options Python reports for the
    context before it is used, and any failure stops the gateway instead of serving the wider default
    list. tests/unit/test_gateway_tls.py proves the effect with real handshakes.
    """
    try:
        ctrl, get_options = _libssl()
    except (OSError, AttributeError) as exc:
        raise GatewayError(f"cannot restrict TLS groups to {groups!r}: OpenSSL's SSL_CTX_ctrl is not "
                           f"reachable from Python's ssl module ({exc})") from None
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer or get_options(pointer) != int(ctx.options):
        raise GatewayError(f"cannot restrict TLS groups to {groups!r}: this Python's SSLContext layout is not "
                           "the one expected (SSL_CTX pointer after the object header)")
    if ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode("ascii")) != 1:
        raise GatewayError(f"OpenSSL refused the TLS group list {groups!r}")


def server_context(cert: Path, key: Path, ca: Path, what: str) -> ssl.SSLContext:
    """A server context that requires a client certificate issued by ``ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_ca(ctx, ca, what)
    _load_chain(ctx, cert, key, what)
    return ctx


def client_context(cert: Path, key: Path, ca: Path, what: str, *, check_hostname: bool) -> ssl.SSLContext:
    """A client context presenting ``cert`` and verifying the server against ``ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx)
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_ca(ctx, ca, what)
    _load_chain(ctx, cert, key, what)
    return ctx


def peer_certificate(ssl_object: ssl.SSLObject | None) -> x509.Certificate | None:
    """The verified peer certificate of an established TLS session (None if the peer sent none)."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


def session_info(ssl_object: ssl.SSLObject | None) -> tuple[str | None, str | None]:
    """(TLS version, cipher suite name) of an established session."""
    if ssl_object is None:
        return None, None
    cipher = ssl_object.cipher()
    return ssl_object.version(), cipher[0] if cipher else None


def send_alerts_on_failed_handshakes() -> bool:
    """Make asyncio send the TLS alert OpenSSL produced for a refused handshake before it closes.

    Python 3.11's asyncio (``sslproto.SSLProtocol``) reports a failed handshake and force-closes the
    transport without writing what OpenSSL left in the outgoing buffer: the alert ("unknown ca",
    "certificate required", "protocol version"). Clinics' devices then see a bare close and cannot say
    why they were refused. Writing that buffer first is all this adds. Returns False (and changes nothing)
    on an asyncio whose internals differ from the ones this was written against.
    """
    from asyncio import sslproto

    protocol = getattr(sslproto, "SSLProtocol", None)
    original = getattr(protocol, "_on_handshake_complete", None)
    if original is None or getattr(original, "_securepacs_sends_alerts", False):
        return original is not None

    def _on_handshake_complete(self: Any, handshake_exc: BaseException | None) -> None:
        if handshake_exc is not None:
            outgoing, transport = getattr(self, "_outgoing", None), getattr(self, "_transport", None)
            if outgoing is not None and transport is not None and not transport.is_closing():
                with contextlib.suppress(Exception):  # best effort: the refusal stands either way
                    alert = outgoing.read()
                    if alert:
                        transport.write(alert)
        original(self, handshake_exc)

    _on_handshake_complete._securepacs_sends_alerts = True  # type: ignore[attr-defined]
    protocol._on_handshake_complete = _on_handshake_complete  # type: ignore[union-attr]
    return True
