"""Password hashing (scrypt), verification, policy and generation."""

from __future__ import annotations

import base64
import inspect

import pytest

from securepacs.access import passwords
from securepacs.access.passwords import PasswordError, check_strength, hash_password, verify_password

# The cost parameters are bound as defaults at definition time, so the tests pass a small n explicitly.
FAST_N = 2**10
PASSWORD = "correct horse battery staple"


def fast_hash(password: str) -> str:
    return hash_password(password, n=FAST_N)


def test_roundtrip() -> None:
    encoded = fast_hash(PASSWORD)
    assert verify_password(PASSWORD, encoded)


def test_wrong_password_is_refused() -> None:
    encoded = fast_hash(PASSWORD)
    assert not verify_password(PASSWORD + " ", encoded)
    assert not verify_password("", encoded)
    assert not verify_password(PASSWORD.upper(), encoded)


def test_unicode_password_roundtrip() -> None:
    encoded = fast_hash("pässwörd-😀-ünïcode")
    assert verify_password("pässwörd-😀-ünïcode", encoded)
    assert not verify_password("passwort-😀-unicode", encoded)


def test_hash_carries_its_parameters_and_a_random_salt() -> None:
    first, second = fast_hash(PASSWORD), fast_hash(PASSWORD)
    assert first != second  # salted
    scheme, n, r, p, salt, key = first.split("$")
    assert (scheme, n, r, p) == ("scrypt", str(FAST_N), str(passwords.SCRYPT_R), str(passwords.SCRYPT_P))
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(key)) == 32
    assert PASSWORD not in first


def test_stored_parameters_are_honoured_on_verify() -> None:
    # Raising SCRYPT_N later must not invalidate hashes made with the old cost.
    older = hash_password(PASSWORD, n=2**9, r=4, p=2)
    assert older.startswith("scrypt$512$4$2$")
    assert verify_password(PASSWORD, older)


def test_default_cost_is_memory_hard() -> None:
    params = inspect.signature(hash_password).parameters
    assert params["n"].default == passwords.SCRYPT_N >= 2**15
    assert params["r"].default == passwords.SCRYPT_R >= 8
    assert params["p"].default == passwords.SCRYPT_P >= 1


VALID_SALT = base64.b64encode(b"\0" * 16).decode()
VALID_KEY = base64.b64encode(b"\0" * 32).decode()


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "not a hash",
        "scrypt$1024$8$1$onlyfive",
        f"scrypt$1024$8$1${VALID_SALT}${VALID_KEY}$extra",
        f"bcrypt$1024$8$1${VALID_SALT}${VALID_KEY}",
        f"scrypt$x$8$1${VALID_SALT}${VALID_KEY}",
        f"scrypt$1000$8$1${VALID_SALT}${VALID_KEY}",  # n not a power of two
        f"scrypt$0$8$1${VALID_SALT}${VALID_KEY}",
        f"scrypt$1024$0$1${VALID_SALT}${VALID_KEY}",
        f"scrypt$1024$8$1$!!!!${VALID_KEY}",  # salt not base64
        f"scrypt$1024$8$1${VALID_SALT}$é",  # key not ASCII
        f"scrypt$1024$8$1${VALID_SALT}$",
    ],
)
def test_malformed_hash_is_false(encoded: str) -> None:
    assert verify_password(PASSWORD, encoded) is False


@pytest.mark.parametrize("params", ["1024$8$-1", "1024$-8$1", "-1024$8$1"])
def test_negative_parameters_are_false(params: str) -> None:
    assert verify_password(PASSWORD, f"scrypt${params}${VALID_SALT}${VALID_KEY}") is False


def test_strength_accepts_a_reasonable_password() -> None:
    check_strength("abcde1234567")  # 12 characters, 11 distinct
    check_strength(PASSWORD)


@pytest.mark.parametrize("password", ["", "short", "abcdefghijk"])  # 11 characters is one too few
def test_strength_refuses_short(password: str) -> None:
    with pytest.raises(PasswordError, match=f"too short: expected at least {passwords.MIN_LENGTH} characters"):
        check_strength(password)


@pytest.mark.parametrize("password", ["aaaaaaaaaaaa", "abababababab", "abcdabcdabcdabcd"])
def test_strength_refuses_too_few_distinct_characters(password: str) -> None:
    with pytest.raises(PasswordError, match="too simple: expected at least 5 distinct characters"):
        check_strength(password)


def test_min_length_is_at_least_twelve() -> None:
    assert passwords.MIN_LENGTH >= 12


def test_generated_passwords_are_strong_and_unique() -> None:
    generated = {passwords.generate_password() for _ in range(50)}
    assert len(generated) == 50
    for password in generated:
        check_strength(password)
        assert len(password) >= 22  # 16 random bytes, URL-safe base64
        assert password.isascii() and ":" not in password  # pasteable into HTTP Basic auth


def test_constant_time_equal() -> None:
    assert passwords.constant_time_equal("secret", "secret")
    assert not passwords.constant_time_equal("secret", "Secret")
    assert not passwords.constant_time_equal("secret", "secret!")
