"""Model distribution on SQLite: artifacts, assignments (KEEP/INSTALL/ROLLBACK), chunks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.errors import Conflict, NotFound
from fab_server.models import EdgeNodeRow
from fab_server.services import distribution
from fab_server.settings import FabSettings
from wafercore.errors import InvalidInput

Sessions = async_sessionmaker[AsyncSession]
SIGNATURE = bytes(range(64))
Action = domain.ModelAction


@pytest.fixture
def settings(tmp_path: Path) -> FabSettings:
    return FabSettings(artifact_dir=tmp_path / "artifacts", download_chunk_bytes=1024)


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


async def _register(
    sessions: Sessions, settings: FabSettings, path: Path, version: str
) -> domain.ModelArtifact:
    return await distribution.register_artifact(
        sessions,
        version=version,
        artifact_format="onnx",
        path=path,
        signature=SIGNATURE,
        signing_key_id="registry-2026",
        settings=settings,
    )


@pytest.mark.asyncio
async def test_register_copies_hashes_and_is_idempotent(
    sessions: Sessions, settings: FabSettings, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 20
    source = _file(tmp_path, "model.onnx", data)
    artifact = await _register(sessions, settings, source, "trm-v2.0.0")
    assert artifact.sha256 == hashlib.sha256(data).hexdigest()
    assert artifact.size_bytes == len(data)
    stored = Path(artifact.path)
    assert stored.parent.parent == settings.artifact_dir and stored.read_bytes() == data
    assert await _register(sessions, settings, source, "trm-v2.0.0") == artifact
    other = _file(tmp_path, "other.onnx", b"other bytes")
    with pytest.raises(Conflict):
        await _register(sessions, settings, other, "trm-v2.0.0")
    assert sorted(p.name for p in stored.parent.iterdir()) == [stored.name]


@pytest.mark.asyncio
async def test_register_rejects_bad_input(
    sessions: Sessions, settings: FabSettings, tmp_path: Path
) -> None:
    source = _file(tmp_path, "model.onnx", b"x")
    with pytest.raises(InvalidInput) as version:
        await _register(sessions, settings, source, "v2")
    assert version.value.field == "version"
    with pytest.raises(InvalidInput) as signature:
        await distribution.register_artifact(
            sessions,
            version="trm-v2.0.0",
            artifact_format="../onnx",
            path=source,
            signature=SIGNATURE,
            signing_key_id="k",
            settings=settings,
        )
    assert signature.value.field == "artifact_format"


@pytest.mark.asyncio
async def test_assignment_actions(
    sessions: Sessions, settings: FabSettings, tmp_path: Path
) -> None:
    old = await _register(sessions, settings, _file(tmp_path, "a", b"old"), "trm-v1.0.0")
    new = await _register(sessions, settings, _file(tmp_path, "b", b"new"), "trm-v2.0.0")

    async def ask(node: str, installed: str, previous: str = "") -> tuple[Action, str | None]:
        action, artifact, _ = await distribution.get_assignment(
            sessions,
            node_id=node,
            installed_version=installed,
            previous_version=previous,
            artifact_format="",
        )
        return action, artifact.version if artifact else None

    assert await ask("edge-1", "trm-v1.0.0") == (Action.KEEP, None)  # nothing assigned
    await distribution.assign(sessions, node_id="*", version="trm-v2.0.0")
    assert await ask("edge-1", "trm-v1.0.0") == (Action.INSTALL, new.version)
    assert await ask("edge-1", "trm-v2.0.0", "trm-v1.0.0") == (Action.KEEP, new.version)
    # A node's own assignment overrides the default; a rollback uses the kept version.
    await distribution.assign(
        sessions, node_id="edge-1", version="trm-v1.0.0", rollout_id="r-7", stage=1, rollback=True
    )
    assert await ask("edge-1", "trm-v2.0.0", "trm-v1.0.0") == (Action.ROLLBACK, old.version)
    assert await ask("edge-1", "trm-v2.0.0", "") == (Action.INSTALL, old.version)
    assert await ask("edge-2", "trm-v1.0.0") == (Action.INSTALL, new.version)
    async with sessions() as session:
        node = await session.get(EdgeNodeRow, "edge-1")
    assert node is not None
    assert (node.installed_version, node.previous_version) == ("trm-v2.0.0", "")


@pytest.mark.asyncio
async def test_unknown_versions_and_formats(
    sessions: Sessions, settings: FabSettings, tmp_path: Path
) -> None:
    with pytest.raises(NotFound):
        await distribution.assign(sessions, node_id="*", version="trm-v9.0.0")
    await _register(sessions, settings, _file(tmp_path, "a", b"onnx"), "trm-v2.0.0")
    await distribution.assign(sessions, node_id="*", version="trm-v2.0.0")
    with pytest.raises(NotFound):
        await distribution.get_assignment(
            sessions,
            node_id="edge-1",
            installed_version="",
            previous_version="",
            artifact_format="tensorrt-orin-int8",
        )
    with pytest.raises(NotFound):
        await distribution.find_artifact(sessions, version="trm-v2.0.1", artifact_format="onnx")
    with pytest.raises(InvalidInput) as node:
        await distribution.get_assignment(
            sessions, node_id="", installed_version="", previous_version="", artifact_format=""
        )
    assert node.value.field == "node_id"


@pytest.mark.asyncio
async def test_chunks_reassemble_and_resume(
    sessions: Sessions, settings: FabSettings, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 10  # 2,560 bytes: chunks of 1,024, 1,024, 512
    artifact = await _register(sessions, settings, _file(tmp_path, "m", data), "trm-v2.0.0")
    chunks = [c async for c in distribution.read_chunks(artifact, offset=0, chunk_bytes=1024)]
    assert [offset for offset, _ in chunks] == [0, 1024, 2048]
    assert b"".join(part for _, part in chunks) == data
    resumed = [c async for c in distribution.read_chunks(artifact, offset=1500, chunk_bytes=1024)]
    assert resumed[0][0] == 1500 and b"".join(p for _, p in resumed) == data[1500:]
    at_end = [
        c async for c in distribution.read_chunks(artifact, offset=len(data), chunk_bytes=1024)
    ]
    assert at_end == [(len(data), b"")]
    with pytest.raises(InvalidInput) as beyond:
        _ = [c async for c in distribution.read_chunks(artifact, offset=9999, chunk_bytes=1024)]
    assert beyond.value.field == "offset"
