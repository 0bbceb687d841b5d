"""Ed25519 checkpoint keys: create, load, sign and check checkpoint bodies.

The private key lives outside the trail directory (e.g. certs/audit/checkpoint.key, mode 0600) so
whoever can rewrite the trail cannot re-sign it; the public key (checkpoint.pub, PEM) is all a
verifier needs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securepacs.audit.record import canonical_json
from securepacs.durable.atomic_file import write_atomically

log = logging.getLogger(__name__)

# Domain separation: a checkpoint signature can never be mistaken for a signature over anything else.
_CONTEXT = "securepacs-audit-checkpoint-v1"


class CheckpointKeyError(ValueError):
    """A checkpoint key file that is missing, unreadable, of the wrong type or too widely readable."""


def public_key_path(private_path: str | os.PathLike[str]) -> Path:
    """Where the public key sits next to its private key: checkpoint.key -> checkpoint.pub."""
    return Path(private_path).with_suffix(".pub")


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def create_checkpoint_key(private_path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Create a key pair: private PEM (PKCS#8, 0600) at ``private_path``, public PEM beside it.

    Returns the public key path. An existing key is never replaced unless ``overwrite`` is true,
    because replacing it would make every earlier checkpoint unverifiable with the new public key.
    """
    private_path = Path(private_path)
    if private_path.exists() and not overwrite:
        raise FileExistsError(f"checkpoint key already exists: {private_path}")
    private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_atomically(private_path, pem, 0o600)
    pub_path = public_key_path(private_path)
    pub_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    write_atomically(pub_path, pub_pem, 0o644)
    log.info("created audit checkpoint key %s (key id %s)", private_path, key_id(key.public_key()))
    return pub_path


def load_checkpoint_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        info = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointKeyError(f"cannot read checkpoint key {path}: {exc.strerror}") from exc
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        mode = info.st_mode & 0o777
        raise CheckpointKeyError(f"checkpoint key {path} is accessible to group/others (mode {mode:o}); chmod 600")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CheckpointKeyError(f"checkpoint key {path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointKeyError(f"checkpoint key {path} is not an Ed25519 key")
    return key


def load_checkpoint_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise CheckpointKeyError(f"cannot read checkpoint public key {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise CheckpointKeyError(f"checkpoint public key {path} is not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointKeyError(f"checkpoint public key {path} is not an Ed25519 key")
    return key


def _signed_bytes(body: dict[str, Any]) -> bytes:
    fields = {k: v for k, v in body.items() if k != "signature"}
    return canonical_json({"context": _CONTEXT, **fields})


def sign_checkpoint(key: Ed25519PrivateKey, body: dict[str, Any]) -> dict[str, Any]:
    """Return ``body`` with key_id and an Ed25519 signature over everything else in it."""
    unsigned = {**body, "key_id": key_id(key.public_key())}
    signature = key.sign(_signed_bytes(unsigned))
    return {**unsigned, "signature": base64.b64encode(signature).decode("ascii")}


def check_checkpoint_signature(public_key: Ed25519PublicKey, body: dict[str, Any]) -> str | None:
    """None if the signature is good, otherwise why not."""
    if body.get("key_id") != key_id(public_key):
        return f"checkpoint key id {body.get('key_id')!r} is not the given public key's {key_id(public_key)}"
    try:
        signature = base64.b64decode(str(body.get("signature", "")), validate=True)
        public_key.verify(signature, _signed_bytes(body))
    except (InvalidSignature, binascii.Error, ValueError):
        return "checkpoint signature does not verify"
    return None
