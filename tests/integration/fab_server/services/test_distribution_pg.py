"""Model distribution on real PostgreSQL: registrations, upserted assignments, node versions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.db import make_async_engine, session_factory
from fab_server.models import EdgeNodeRow
from fab_server.services import distribution
from fab_server.settings import FabSettings

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]


@pytest_asyncio.fixture
async def sessions(fab_settings: FabSettings) -> AsyncIterator[Sessions]:
    engine = make_async_engine(fab_settings.database_url, fab_settings.db_schema)
    yield session_factory(engine)
    await engine.dispose()


@pytest.mark.asyncio
async def test_register_assign_and_poll(
    sessions: Sessions, fab_settings: FabSettings, tmp_path: Path
) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(b"onnx bytes" * 1000)
    # Concurrent registrations of the same bytes end in one artifact.
    registered = await asyncio.gather(
        *(
            distribution.register_artifact(
                sessions,
                version="trm-v2.1.0",
                artifact_format="onnx",
                path=source,
                signature=b"\x07" * 64,
                signing_key_id="registry-2026",
                settings=fab_settings,
            )
            for _ in range(3)
        )
    )
    assert len({a.sha256 for a in registered}) == 1 and len({a.path for a in registered}) == 1
    await distribution.assign(sessions, node_id="*", version="trm-v2.1.0")
    updated = await distribution.assign(
        sessions, node_id="*", version="trm-v2.1.0", rollout_id="r-1", stage=1
    )
    assert (updated.rollout_id, updated.stage) == ("r-1", 1)

    action, artifact, assignment = await distribution.get_assignment(
        sessions,
        node_id="edge-4",
        installed_version="trm-v2.0.0",
        previous_version="trm-v1.0.0",
        artifact_format="onnx",
    )
    assert action is domain.ModelAction.INSTALL
    assert artifact == registered[0] and assignment == updated
    async with sessions() as session:
        node = await session.get(EdgeNodeRow, "edge-4")
    assert node is not None
    assert (node.installed_version, node.previous_version, node.acked_sequence) == (
        "trm-v2.0.0",
        "trm-v1.0.0",
        0,
    )
