"""TOTP helpers: RFC 6238 codes, the acceptance window, and the provisioning URI."""

from __future__ import annotations

import base64
import urllib.parse

import pytest

from securepacs.access import totp

# RFC 6238 appendix B: the SHA-1 test key is the ASCII string "12345678901234567890".
RFC_SECRET = base64.b32encode(b"12345678901234567890").decode().rstrip("=")


@pytest.mark.parametrize(("when", "code"), [(59, "287082"), (1111111109, "081804"), (1234567890, "005924"),
                                            (2000000000, "279037")])
def test_codes_match_the_rfc_test_vectors(when: int, code: str) -> None:
    # The RFC lists 8-digit values; authenticator apps show the last 6.
    assert totp.code_at(RFC_SECRET, when) == code


def test_matching_step_accepts_one_step_either_side() -> None:
    now = 1_700_000_015.0
    step = int(now // 30)
    for offset in (-1, 0, 1):
        assert totp.matching_step(RFC_SECRET, totp.code_at(RFC_SECRET, now + offset * 30), now) == step + offset
    for offset in (-3, -2, 2, 3):
        assert totp.matching_step(RFC_SECRET, totp.code_at(RFC_SECRET, now + offset * 30), now) is None


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "12 34 5", None, 123456])
def test_malformed_codes_never_match(code: object) -> None:
    assert totp.matching_step(RFC_SECRET, code, 1_700_000_000) is None  # type: ignore[arg-type]


def test_spaces_in_a_code_are_ignored() -> None:
    code = totp.code_at(RFC_SECRET, 1_700_000_000)
    assert totp.matching_step(RFC_SECRET, f"{code[:3]} {code[3:]}", 1_700_000_000) is not None


def test_new_secrets_are_random_160_bit_base32() -> None:
    secrets = {totp.new_secret() for _ in range(20)}
    assert len(secrets) == 20
    for secret in secrets:
        assert len(base64.b32decode(secret + "=" * (-len(secret) % 8))) == totp.SECRET_BYTES


def test_provisioning_uri() -> None:
    uri = totp.provisioning_uri(RFC_SECRET, "bob", "SecurePACS")
    parsed = urllib.parse.urlparse(uri)
    assert (parsed.scheme, parsed.netloc) == ("otpauth", "totp")
    query = urllib.parse.parse_qs(parsed.query)
    assert query["secret"] == [RFC_SECRET]
    assert query["issuer"] == ["SecurePACS"]
    assert query.get("digits", ["6"]) == ["6"] and query.get("period", ["30"]) == ["30"]
    assert "bob" in urllib.parse.unquote(parsed.path)
