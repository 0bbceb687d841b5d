"""PEM files of keys and certificates: written atomically with their modes, read with errors naming the file.

Keys are written PEM (PKCS#8), mode 0600, atomically (temporary file in the same directory, then
rename) and are never overwritten unless the caller says so explicitly.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from securepacs.durable.atomic_file import write_atomically
from securepacs.pki.certificates import PkiError, PrivateKey


def write_file(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data, mode, exclusive=not overwrite)
    except FileExistsError:
        raise PkiError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise PkiError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_key(path: Path, key: PrivateKey, passphrase: bytes | None = None, *, overwrite: bool = False) -> None:
    """Write a private key as PEM PKCS#8, mode 0600, optionally encrypted with ``passphrase``."""
    if passphrase is not None and not passphrase:
        raise PkiError(f"empty passphrase for {path}: pass None for an unencrypted key")
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    write_file(Path(path), data, 0o600, overwrite=overwrite)


def write_cert(path: Path, *certs: x509.Certificate, overwrite: bool = True) -> None:
    """Write one or more certificates (a chain, leaf first) as PEM, mode 0644."""
    if not certs:
        raise PkiError(f"no certificate given to write to {path}")
    data = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    write_file(Path(path), data, 0o644, overwrite=overwrite)


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{what} file {path} does not exist") from None
    except OSError as exc:
        raise PkiError(f"cannot read {what} file {path}: {exc.strerror or exc}") from exc


def load_cert(path: Path) -> x509.Certificate:
    """First certificate in a PEM (or DER) file."""
    data = _read(path, "certificate")
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)[0]
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise PkiError(f"{path} does not contain a valid X.509 certificate (PEM or DER expected)") from None


def load_key(path: Path, passphrase: bytes | None = None) -> PrivateKey:
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, passphrase)
    except TypeError:
        # cryptography raises TypeError for "encrypted but no passphrase" and the reverse.
        state = "is encrypted: a passphrase is needed" if passphrase is None else "is not encrypted"
        raise PkiError(f"private key {path} {state}") from None
    except ValueError:
        raise PkiError(f"{path} does not contain a readable PEM private key (or the passphrase is wrong)") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise PkiError(f"private key {path} is a {type(key).__name__}: expected an RSA or EC key")
    return key
