"""Model distribution: signed artifacts on the fab server's disk, assignments, chunked downloads.

The fab server never signs anything: artifacts arrive with the registry's Ed25519 signature of
their SHA-256 digest, and nodes verify it against their pinned key. The fab server keeps the
bytes, their digest and size, and tells each node what to run.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.errors import Conflict, InvalidArgument, NotFound
from fab_server.repository import distribution as repo
from fab_server.repository.distribution import DEFAULT_NODE
from fab_server.services.ingest import MAX_VERSION_CHARS
from fab_server.settings import FabSettings
from wafercore.validation import MAX_ID_CHARS, check_id

DEFAULT_FORMAT = "onnx"
"""Artifact format assumed when a node does not name one."""
SIGNATURE_BYTES = 64
"""Length of an Ed25519 signature."""
MAX_CHUNK_BYTES = 1024 * 1024
"""Largest chunk the contract allows (fits gRPC's default 4 MiB message limit)."""

_VERSION = re.compile(r"^[a-z][a-z0-9]*-v\d+\.\d+\.\d+$")
# Formats name files on disk: no separators, no dots first.
_FORMAT = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
_COPY_BUFFER = 1024 * 1024


def _check_version(version: str, field: str = "version") -> None:
    if not _VERSION.match(version) or len(version) > MAX_VERSION_CHARS:
        raise InvalidArgument(field, f"{version!r} is not a model version like 'trm-v1.0.0'")


def _check_format(artifact_format: str, field: str = "artifact_format") -> None:
    if not _FORMAT.match(artifact_format):
        raise InvalidArgument(
            field, f"{artifact_format!r} must be 1-32 of a-z, 0-9, '.', '_', '-' (like 'onnx')"
        )


def _check_node(node_id: str, field: str = "node_id") -> None:
    check_id(node_id, field)


def _copy_hashed(source: Path, directory: Path) -> tuple[Path, str, int]:
    """Copy ``source`` into ``directory`` under a temporary name, hashing it on the way."""
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with source.open("rb") as src, tempfile.NamedTemporaryFile(dir=directory, delete=False) as dst:
        while block := src.read(_COPY_BUFFER):
            digest.update(block)
            dst.write(block)
            size += len(block)
        dst.flush()
        os.fsync(dst.fileno())
    return Path(dst.name), digest.hexdigest(), size


async def register_artifact(
    sessions: async_sessionmaker[AsyncSession],
    *,
    version: str,
    artifact_format: str,
    path: Path,
    signature: bytes,
    signing_key_id: str,
    settings: FabSettings,
    now: datetime | None = None,
) -> domain.ModelArtifact:
    """Copy a signed artifact into ``settings.artifact_dir`` and register it.

    Registering the same bytes again returns the first registration (idempotent).

    Args:
        sessions: session factory.
        version: model version, ``trm-v{major}.{minor}.{patch}``.
        artifact_format: what runs it (``onnx``, ``tensorrt-orin-int8``).
        path: the artifact file to copy.
        signature: the registry's Ed25519 signature (64 bytes) of the raw SHA-256 digest.
        signing_key_id: id of the key that signed it.
        settings: where artifacts are kept.
        now: registration time (UTC); the current time by default.

    Raises:
        InvalidArgument: bad version, format, signature length, key id or missing file.
        Conflict: that version and format are registered with different bytes.
    """
    _check_version(version)
    _check_format(artifact_format)
    if len(signature) != SIGNATURE_BYTES:
        raise InvalidArgument("signature", f"has {len(signature)} bytes, expected 64 (Ed25519)")
    if not signing_key_id or len(signing_key_id) > MAX_ID_CHARS:
        raise InvalidArgument("signing_key_id", f"must have 1 to {MAX_ID_CHARS} characters")
    if not path.is_file():
        raise InvalidArgument("path", f"{path} is not a file")
    directory = settings.artifact_dir / version
    temporary, sha256, size = await asyncio.to_thread(_copy_hashed, path, directory)
    # Named by digest, so a racing registration of other bytes can never overwrite this file.
    final = directory / f"{artifact_format}-{sha256}"
    try:
        await asyncio.to_thread(os.replace, temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    artifact = domain.ModelArtifact(
        version=version,
        artifact_format=artifact_format,
        sha256=sha256,
        size_bytes=size,
        signature=bytes(signature),
        signing_key_id=signing_key_id,
        path=str(final),
        created_at=now or datetime.now(UTC),
    )
    async with sessions() as session, session.begin():
        if await repo.insert_artifact(session, artifact=artifact):
            return artifact
        existing = await repo.get_artifact(
            session, version=version, artifact_format=artifact_format
        )
    assert existing is not None  # the insert conflicted with it
    if existing.sha256 != sha256:
        if existing.path != str(final):
            final.unlink(missing_ok=True)
        raise Conflict(
            f"{version} ({artifact_format}) is registered with sha256 {existing.sha256}, "
            f"not {sha256}: a version's bytes never change"
        )
    return existing


async def assign(
    sessions: async_sessionmaker[AsyncSession],
    *,
    node_id: str,
    version: str,
    rollout_id: str = "",
    stage: int = 0,
    rollback: bool = False,
    now: datetime | None = None,
) -> domain.Assignment:
    """Set the version a node (``*``: every node without its own assignment) should run.

    Args:
        sessions: session factory.
        node_id: the node, or ``*`` for the fab-wide default.
        version: a registered version.
        rollout_id: the rollout it belongs to; empty when none.
        stage: the contract's RolloutStage (0 unspecified, 1 canary, 2 production).
        rollback: the node should switch back to ``version`` as its kept previous version.
        now: time of the change (UTC); the current time by default.

    Raises:
        InvalidArgument: bad node, version, rollout id or stage.
        NotFound: no artifact of ``version`` is registered.
    """
    if node_id != DEFAULT_NODE:
        _check_node(node_id)
    _check_version(version)
    if len(rollout_id) > MAX_VERSION_CHARS:
        raise InvalidArgument("rollout_id", f"has more than {MAX_VERSION_CHARS} characters")
    if stage not in (0, 1, 2):
        raise InvalidArgument("stage", f"must be 0 (unspecified), 1 (canary) or 2, got {stage}")
    async with sessions() as session, session.begin():
        if not await repo.version_registered(session, version=version):
            raise NotFound(f"model version {version!r}")
        return await repo.upsert_assignment(
            session,
            assignment=domain.Assignment(
                node_id=node_id,
                version=version,
                rollout_id=rollout_id,
                stage=stage,
                rollback=rollback,
                updated_at=now or datetime.now(UTC),
            ),
        )


async def get_assignment(
    sessions: async_sessionmaker[AsyncSession],
    *,
    node_id: str,
    installed_version: str,
    previous_version: str,
    artifact_format: str,
    now: datetime | None = None,
) -> tuple[domain.ModelAction, domain.ModelArtifact | None, domain.Assignment | None]:
    """What a node should do about its model; records the versions it reports.

    KEEP when it runs the desired version (or nothing is assigned), ROLLBACK when the
    assignment is a rollback to the version it keeps as previous (no download), INSTALL
    otherwise.

    Args:
        sessions: session factory.
        node_id: the asking node.
        installed_version: what it runs ("" when none).
        previous_version: what it keeps for rollback ("" when none).
        artifact_format: what it can run; ``onnx`` when empty.
        now: time of the poll (UTC); the current time by default.

    Returns:
        The action, the artifact of the desired version in the node's format (None when no
        version is assigned, or for KEEP/ROLLBACK when that format is not registered), and
        the assignment that applies (None when there is none).

    Raises:
        InvalidArgument: bad node id, versions or format.
        NotFound: INSTALL of a version with no artifact in the node's format.
    """
    _check_node(node_id)
    for field, value in (
        ("installed_version", installed_version),
        ("previous_version", previous_version),
    ):
        if len(value) > MAX_VERSION_CHARS:
            raise InvalidArgument(field, f"has more than {MAX_VERSION_CHARS} characters")
    artifact_format = artifact_format or DEFAULT_FORMAT
    _check_format(artifact_format)
    async with sessions() as session, session.begin():
        await repo.record_node_versions(
            session,
            node_id=node_id,
            installed_version=installed_version,
            previous_version=previous_version,
            now=now or datetime.now(UTC),
        )
        assignment = await repo.assignment_for(session, node_id=node_id)
        if assignment is None:
            return domain.ModelAction.KEEP, None, None
        artifact = await repo.get_artifact(
            session, version=assignment.version, artifact_format=artifact_format
        )
    if assignment.version == installed_version:
        return domain.ModelAction.KEEP, artifact, assignment
    if assignment.rollback and assignment.version == previous_version:
        return domain.ModelAction.ROLLBACK, artifact, assignment
    if artifact is None:
        raise NotFound(f"artifact of {assignment.version} in format {artifact_format!r}")
    return domain.ModelAction.INSTALL, artifact, assignment


async def find_artifact(
    sessions: async_sessionmaker[AsyncSession], *, version: str, artifact_format: str
) -> domain.ModelArtifact:
    """The registered artifact of a version in a format (``onnx`` when empty).

    Raises:
        InvalidArgument: bad version or format.
        NotFound: not registered.
    """
    _check_version(version, "model_version")
    artifact_format = artifact_format or DEFAULT_FORMAT
    _check_format(artifact_format)
    async with sessions() as session:
        artifact = await repo.get_artifact(
            session, version=version, artifact_format=artifact_format
        )
    if artifact is None:
        raise NotFound(f"artifact of {version} in format {artifact_format!r}")
    return artifact


async def read_chunks(
    artifact: domain.ModelArtifact, *, offset: int, chunk_bytes: int
) -> AsyncIterator[tuple[int, bytes]]:
    """The artifact's bytes from ``offset`` on, as (offset, data) chunks.

    At least one chunk comes out, empty when ``offset`` is the artifact's size, so a resumed
    download that already has every byte still learns the digest. Reads run in a worker thread.

    Args:
        artifact: what to read.
        offset: first byte, 0..size.
        chunk_bytes: most bytes per chunk (capped at 1 MiB).

    Raises:
        InvalidArgument: ``offset`` beyond the artifact's size.
    """
    if not 0 <= offset <= artifact.size_bytes:
        raise InvalidArgument(
            "offset", f"is {offset}; the artifact has {artifact.size_bytes} bytes"
        )
    size = min(chunk_bytes, MAX_CHUNK_BYTES)
    handle = await asyncio.to_thread(Path(artifact.path).open, "rb")
    try:
        await asyncio.to_thread(handle.seek, offset)
        data = await asyncio.to_thread(handle.read, size)
        yield offset, data
        while data:
            offset += len(data)
            data = await asyncio.to_thread(handle.read, size)
            if data:
                yield offset, data
    finally:
        handle.close()
