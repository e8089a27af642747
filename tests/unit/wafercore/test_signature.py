"""Artifact verification against pinned Ed25519 keys: each refusal names its reason."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from wafercore.signature import SignatureError, verify_artifact, verify_digest

KEY_ID = "registry-2026"


def _pin(keys_dir: Path, key_id: str, key: Ed25519PrivateKey) -> None:
    keys_dir.mkdir(exist_ok=True)
    (keys_dir / f"{key_id}.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def keys_dir(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    path = tmp_path / "trusted"
    _pin(path, KEY_ID, key)
    return path


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "trm-v1.1.0.tar"
    path.write_bytes(bytes(range(256)) * 4096)  # 1 MiB: more than one read block
    return path


def _sign(path: Path, key: Ed25519PrivateKey) -> bytes:
    return key.sign(hashlib.sha256(path.read_bytes()).digest())


def _reason(excinfo: pytest.ExceptionInfo[SignatureError]) -> str:
    return excinfo.value.reason


def test_a_good_signature_verifies(artifact: Path, keys_dir: Path, key: Ed25519PrivateKey) -> None:
    sha = hashlib.sha256(artifact.read_bytes()).hexdigest()
    verify_artifact(artifact, _sign(artifact, key), KEY_ID, keys_dir)
    verify_artifact(artifact, _sign(artifact, key), KEY_ID, keys_dir, expected_sha256=sha)
    verify_digest(bytes.fromhex(sha), _sign(artifact, key), KEY_ID, keys_dir)


def test_one_tampered_byte_is_refused(
    artifact: Path, keys_dir: Path, key: Ed25519PrivateKey
) -> None:
    signature = _sign(artifact, key)
    announced = hashlib.sha256(artifact.read_bytes()).hexdigest()
    data = bytearray(artifact.read_bytes())
    data[700_000] ^= 0x01
    artifact.write_bytes(bytes(data))
    with pytest.raises(SignatureError) as err:
        verify_artifact(artifact, signature, KEY_ID, keys_dir)
    assert _reason(err) == "bad_signature" and KEY_ID in str(err.value)
    # With the fab's announced digest, a changed download is named as such.
    with pytest.raises(SignatureError) as err:
        verify_artifact(artifact, signature, KEY_ID, keys_dir, expected_sha256=announced)
    assert _reason(err) == "sha256_mismatch" and announced in str(err.value)


def test_a_signature_by_another_key_is_refused(artifact: Path, keys_dir: Path) -> None:
    impostor = Ed25519PrivateKey.generate()
    with pytest.raises(SignatureError) as err:
        verify_artifact(artifact, _sign(artifact, impostor), KEY_ID, keys_dir)
    assert _reason(err) == "bad_signature"


@pytest.mark.parametrize("key_id", ["registry-2027", "../trusted/registry-2026", ".hidden", ""])
def test_a_key_that_is_not_pinned_is_unknown(
    artifact: Path, keys_dir: Path, key: Ed25519PrivateKey, key_id: str
) -> None:
    (keys_dir.parent / "registry-2027.pub").write_bytes((keys_dir / f"{KEY_ID}.pub").read_bytes())
    with pytest.raises(SignatureError) as err:
        verify_artifact(artifact, _sign(artifact, key), key_id, keys_dir)
    assert _reason(err) == "unknown_key"


@pytest.mark.parametrize(
    ("signature", "reason"),
    [(b"", "missing_signature"), (b"\x00" * 63, "bad_signature"), (b"\x00" * 64, "bad_signature")],
)
def test_a_missing_or_malformed_signature_is_refused(
    artifact: Path, keys_dir: Path, signature: bytes, reason: str
) -> None:
    with pytest.raises(SignatureError) as err:
        verify_artifact(artifact, signature, KEY_ID, keys_dir)
    assert _reason(err) == reason


def test_a_pinned_file_that_is_not_an_ed25519_key_is_refused(
    artifact: Path, keys_dir: Path, key: Ed25519PrivateKey
) -> None:
    (keys_dir / "garbage.pub").write_text("not a key\n")
    ec_key = generate_private_key(SECP256R1()).public_key()
    (keys_dir / "ecdsa.pub").write_bytes(
        ec_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    for key_id in ("garbage", "ecdsa"):
        with pytest.raises(SignatureError) as err:
            verify_artifact(artifact, _sign(artifact, key), key_id, keys_dir)
        assert _reason(err) == "bad_key"


def test_a_malformed_announced_digest_is_refused(
    artifact: Path, keys_dir: Path, key: Ed25519PrivateKey
) -> None:
    with pytest.raises(SignatureError) as err:
        verify_artifact(artifact, _sign(artifact, key), KEY_ID, keys_dir, expected_sha256="abc")
    assert _reason(err) == "sha256_mismatch"
