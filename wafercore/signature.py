"""Verify a downloaded model artifact against the registry's pinned Ed25519 keys.

As the contract says (``ModelAssignment.signature``), the registry signs the raw 32-byte SHA-256
digest of the artifact's bytes, so checking the signature also checks every byte. A node trusts
only the public keys in its ``trusted_keys_dir`` (``<key_id>.pub``, PEM), pinned when the node is
installed; the fab server only relays artifacts and cannot make one a node accepts.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

SIGNATURE_BYTES = 64
"""Length of an Ed25519 signature."""
PUBLIC_KEY_SUFFIX = ".pub"
"""A trusted key ``ID`` is the file ``<trusted_keys_dir>/ID.pub``."""
KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""What a key id may look like: it names a file, so no separators and no leading dot."""

_HEX_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_READ_BUFFER = 1 << 20

Reason = Literal["missing_signature", "bad_signature", "unknown_key", "bad_key", "sha256_mismatch"]
"""Why an artifact was refused (also the label of the node's rejection counter)."""


class SignatureError(Exception):
    """An artifact that must not be installed.

    Attributes:
        reason: a short, fixed code (`Reason`), fit for a metric label.
        detail: the human-readable explanation (also the exception's message).
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail


def file_sha256(path: Path) -> bytes:
    """The raw SHA-256 digest of a file, read in blocks (artifacts can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_READ_BUFFER):
            digest.update(block)
    return digest.digest()


def load_trusted_key(key_id: str, trusted_keys_dir: Path) -> Ed25519PublicKey:
    """The pinned public key ``key_id``.

    Raises:
        SignatureError: ``unknown_key`` when the id is malformed or has no file, ``bad_key``
            when the file is not an Ed25519 public key in PEM.
    """
    if not KEY_ID.match(key_id):
        raise SignatureError("unknown_key", f"signing key id {key_id!r} is not a valid key id")
    path = trusted_keys_dir / f"{key_id}{PUBLIC_KEY_SUFFIX}"
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise SignatureError(
            "unknown_key", f"signing key {key_id!r} is not trusted (no {path})"
        ) from None
    except OSError as exc:
        raise SignatureError("unknown_key", f"cannot read {path}: {exc}") from None
    try:
        key = load_pem_public_key(pem)
    except ValueError as exc:
        raise SignatureError("bad_key", f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("bad_key", f"{path} is a {type(key).__name__}, not Ed25519")
    return key


def verify_artifact(
    data_path: Path,
    signature: bytes,
    key_id: str,
    trusted_keys_dir: Path,
    *,
    expected_sha256: str | None = None,
) -> None:
    """Check that an artifact is exactly what the registry signed.

    Args:
        data_path: the downloaded artifact.
        signature: the detached Ed25519 signature (64 bytes) of the artifact's SHA-256 digest.
        key_id: id of the key that signed it; must be pinned in ``trusted_keys_dir``.
        trusted_keys_dir: folder of trusted public keys (``<key_id>.pub``, PEM).
        expected_sha256: lower-case hex digest the fab announced; when given, the file must
            have it (a download that went wrong is named as such, not as a bad signature).

    Raises:
        SignatureError: ``missing_signature``, ``bad_signature`` (wrong length, other key or
            changed bytes), ``unknown_key``, ``bad_key`` or ``sha256_mismatch``.
    """
    _check_signature_shape(signature, data_path.name)
    digest = file_sha256(data_path)
    if expected_sha256 is not None:
        if not _HEX_SHA256.match(expected_sha256):
            raise SignatureError(
                "sha256_mismatch", f"announced sha256 {expected_sha256!r} is not 64 hex digits"
            )
        if not hmac.compare_digest(digest.hex(), expected_sha256):
            raise SignatureError(
                "sha256_mismatch",
                f"{data_path.name} has sha256 {digest.hex()}, the fab announced "
                f"{expected_sha256}: the download is corrupt or was changed",
            )
    verify_digest(digest, signature, key_id, trusted_keys_dir)


def verify_digest(digest: bytes, signature: bytes, key_id: str, trusted_keys_dir: Path) -> None:
    """Check a signature of a raw SHA-256 digest, before any byte is downloaded.

    A node checks the digest the fab announces this way first, so an artifact that can never
    verify costs no download; `verify_artifact` then checks the bytes against it.

    Raises:
        SignatureError: as `verify_artifact`, except ``sha256_mismatch``.
    """
    _check_signature_shape(signature, "the artifact")
    key = load_trusted_key(key_id, trusted_keys_dir)
    try:
        key.verify(signature, digest)
    except InvalidSignature:
        raise SignatureError(
            "bad_signature", f"sha256 {digest.hex()} is not signed by key {key_id!r}"
        ) from None


def _check_signature_shape(signature: bytes, what: str) -> None:
    if not signature:
        raise SignatureError("missing_signature", f"{what} comes with no signature")
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError(
            "bad_signature",
            f"signature has {len(signature)} bytes, an Ed25519 signature has {SIGNATURE_BYTES}",
        )
