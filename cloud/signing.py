"""Sign model artifacts for the fleet: Ed25519 keys, packaging, detached signatures.

The registry key signs the raw SHA-256 digest of an artifact (the contract's
``ModelAssignment.signature``); nodes pin the public half (``<key_id>.pub``) and refuse anything
else. The artifact layout itself is `wafercore.artifact`'s, shared with the nodes that unpack it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from wafercore.artifact import (
    GOLDEN_FILE,
    OPTIONAL_MEMBERS,
    SIGNATURE_SUFFIX,
    GoldenSet,
    write_artifact,
)
from wafercore.classes import NUM_CLASSES, DefectClass
from wafercore.encoding import GRID
from wafercore.preprocessing import preprocess
from wafercore.runtime import MANIFEST_FILE, MODEL_FILE, ModelRuntime
from wafercore.signature import KEY_ID, PUBLIC_KEY_SUFFIX
from wafercore.synthetic import generate_map

if TYPE_CHECKING:
    from cloud.settings import CloudSettings

log = logging.getLogger(__name__)

PRIVATE_KEY_SUFFIX = ".key"
"""The private key ``ID`` is written as ``ID.key`` (PEM, PKCS#8, mode 0600)."""
GOLDEN_SEED = 20_260_501
"""Seed of the golden wafers: fixed, so every artifact of a model carries the same inputs."""
GOLDEN_SIZES = (15, 80)
"""Range of rows and columns of the golden wafers (small and large products)."""
DEV_KEYS_DIR = "keys"
"""Folder of ``work_dir`` where the development signing key is generated."""

# Development keys already announced in this process (one warning each, not one per model).
_warned_dev_keys: set[Path] = set()


@dataclass(frozen=True)
class KeyPair:
    """Where `generate_keypair` wrote a key pair."""

    key_id: str
    private_key: Path
    public_key: Path


@dataclass(frozen=True)
class Artifact:
    """A packaged, signed model.

    Attributes:
        path: the artifact (tar).
        signature_path: its detached signature, ``path`` + ``.sig`` (64 raw bytes).
        version: the model version inside.
        sha256: lower-case hex SHA-256 of the artifact's bytes (what was signed).
        size_bytes: artifact size.
        key_id: id of the signing key (nodes look for ``<key_id>.pub``).
        golden: number of golden wafers inside.
    """

    path: Path
    signature_path: Path
    version: str
    sha256: str
    size_bytes: int
    key_id: str
    golden: int


def _check_key_id(key_id: str) -> None:
    if not KEY_ID.match(key_id):
        raise ValueError(
            f"key id {key_id!r} must be 1-128 of A-Z, a-z, 0-9, '.', '_', '-' "
            "and not start with '.', '_' or '-'"
        )


def generate_keypair(out_dir: Path, key_id: str) -> KeyPair:
    """Create an Ed25519 key pair: ``<key_id>.key`` (private, 0600) and ``<key_id>.pub``.

    Raises:
        ValueError: a malformed key id.
        FileExistsError: a key of that id is already there (keys are never overwritten).
    """
    _check_key_id(key_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path = out_dir / f"{key_id}{PRIVATE_KEY_SUFFIX}"
    public_path = out_dir / f"{key_id}{PUBLIC_KEY_SUFFIX}"
    if public_path.exists():
        raise FileExistsError(f"{public_path} exists: pick another key id")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created 0600 from the start: never readable by others, not even for an instant.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return KeyPair(key_id=key_id, private_key=private_path, public_key=public_path)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an unencrypted PEM Ed25519 private key.

    Raises:
        ValueError: not a PEM private key, or not Ed25519.
    """
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def sign_file(path: Path, private_key: Ed25519PrivateKey) -> tuple[bytes, str, int]:
    """Sign a file's raw SHA-256 digest.

    Returns:
        The 64-byte signature, the hex digest and the file's size.
    """
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            size += len(block)
    return private_key.sign(digest.digest()), digest.hexdigest(), size


def golden_tokens(count: int, seed: int = GOLDEN_SEED) -> npt.NDArray[np.uint8]:
    """``count`` synthetic wafers of every class in turn, as (count, 676) tokens.

    Raises:
        ValueError: fewer wafers than classes (every class must be covered).
    """
    if count < NUM_CLASSES:
        raise ValueError(f"a golden set needs at least {NUM_CLASSES} wafers (one per class)")
    rng = np.random.default_rng(seed)
    low, high = GOLDEN_SIZES
    maps = []
    for i in range(count):
        rows, cols = (int(v) for v in rng.integers(low, high + 1, size=2))
        maps.append(preprocess(generate_map(DefectClass(i % NUM_CLASSES), rng, rows, cols)))
    return np.stack(maps)


def package_model(
    model_dir: Path, out: Path, *, private_key: Path, key_id: str, golden: int = 64
) -> Artifact:
    """Package a model directory as a signed artifact ``out`` with its signature ``out.sig``.

    The model is loaded with `wafercore.runtime` (which checks the graph against the manifest)
    and run on ``golden`` fixed synthetic wafers; its answers become the artifact's golden set.

    Args:
        model_dir: folder with ``model.onnx`` and ``model.json``.
        out: the artifact to write (replaced atomically if it exists).
        private_key: the registry's Ed25519 private key (PEM).
        key_id: id under which nodes trust the matching public key.
        golden: number of golden wafers (at least one per class).

    Raises:
        ValueError: malformed key id, key that is not Ed25519, too few golden wafers.
        wafercore.runtime.ModelLoadError: the model directory cannot be served.
    """
    _check_key_id(key_id)
    key = load_private_key(private_key)
    runtime = ModelRuntime.load(model_dir)
    tokens = golden_tokens(golden)
    # 26x26 canonical maps: the model builds its own input from them, as a node will.
    maps = list(tokens.reshape(-1, GRID, GRID))
    novelty = (
        runtime.novelty.score(runtime.novelty.prepare(maps)).score if runtime.novelty else None
    )
    golden_set = GoldenSet.from_result(tokens, runtime.predict(runtime.prepare(maps)), novelty)
    out.parent.mkdir(parents=True, exist_ok=True)
    signature_path = out.with_name(out.name + SIGNATURE_SUFFIX)
    # Write both beside their final names, then rename: a reader never sees a half-written
    # artifact, nor a new artifact with the old signature for longer than one rename.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work:
        staged = Path(work) / out.name
        write_artifact(
            staged,
            {
                MODEL_FILE: model_dir / MODEL_FILE,
                MANIFEST_FILE: model_dir / MANIFEST_FILE,
                GOLDEN_FILE: golden_set.to_bytes(),
                # The novelty model travels with its classifier (wafercore.novelty).
                **(
                    {name: model_dir / name for name in OPTIONAL_MEMBERS}
                    if runtime.novelty is not None
                    else {}
                ),
            },
        )
        signature, sha256, size = sign_file(staged, key)
        staged_signature = Path(work) / signature_path.name
        staged_signature.write_bytes(signature)
        os.replace(staged, out)
        os.replace(staged_signature, signature_path)
    return Artifact(
        path=out,
        signature_path=signature_path,
        version=runtime.version,
        sha256=sha256,
        size_bytes=size,
        key_id=key_id,
        golden=golden,
    )


def ensure_keypair(settings: CloudSettings) -> tuple[Path, str]:
    """The key that signs the registry's artifacts: its private key file and key id.

    ``settings.signing_key`` (with ``settings.signing_key_id``) when configured. Otherwise a
    development key, generated once under ``settings.work_dir / "keys"`` and reused after; its
    public half (``<key_id>.pub`` beside it) is what nodes must pin to accept these artifacts.
    A development key lives next to the data it signs, so it is announced with a warning.

    Returns:
        The private key (PEM) and the key id nodes know it by.

    Raises:
        ValueError: a malformed key id.
        FileNotFoundError: the configured key file does not exist, or a development key's
            public half exists without its private key.
    """
    key_id = settings.signing_key_id
    _check_key_id(key_id)
    if settings.signing_key is not None:
        if not settings.signing_key.is_file():
            raise FileNotFoundError(f"signing key {settings.signing_key} does not exist")
        return settings.signing_key, key_id
    keys_dir = settings.work_dir / DEV_KEYS_DIR
    private_key = keys_dir / f"{key_id}{PRIVATE_KEY_SUFFIX}"
    if not private_key.is_file():
        try:
            generate_keypair(keys_dir, key_id)
        except FileExistsError:
            # Another process generated it first; its private key is there too, or it is gone.
            if not private_key.is_file():
                raise FileNotFoundError(
                    f"{keys_dir / (key_id + PUBLIC_KEY_SUFFIX)} exists without {private_key}: "
                    "remove it or configure a signing key"
                ) from None
    resolved = private_key.resolve()
    if resolved not in _warned_dev_keys:
        _warned_dev_keys.add(resolved)
        log.warning(
            "signing with the development key %s (key id %r): configure a signing key "
            "(CLOUD_SIGNING_KEY, CLOUD_SIGNING_KEY_ID) before any real deployment",
            resolved,
            key_id,
        )
    return private_key, key_id
