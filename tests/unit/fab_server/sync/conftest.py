"""Fixtures of the sync agent's unit tests: results and verdicts stored as the fab stores them."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.services import ingest, review
from fab_server.settings import FabSettings, SyncSettings

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PROBABILITIES = (0.3, 0.1, 0.1, 0.3, 0.04, 0.04, 0.04, 0.04, 0.04)
Sessions = async_sessionmaker[AsyncSession]


def make_result(sequence: int, **changes: Any) -> domain.Result:
    """A low-confidence result of ``edge-1`` (queued for review at ingest), with a 3x3 map."""
    base = domain.Result(
        node_id="edge-1",
        sequence=sequence,
        wafer_id=f"WAFER-{sequence:04d}",
        lot_id="LOT-SECRET-7",
        model_version="trm-v1.0.0",
        prediction=3,
        probabilities=PROBABILITIES,
        confidence=0.3,
        steps=2,
        latency_ms=10.0 + sequence,
        flagged=False,
        classified_at=NOW - timedelta(hours=1) + timedelta(seconds=sequence),
        wafer_map=domain.StoredMap(rows=3, cols=3, values=bytes([2, 0, 2, 0, 1, 0, 2, 1, 2])),
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def fab_settings(tmp_path: Path) -> FabSettings:
    """Fab settings with sync configured (fixed hash key, small batches)."""
    return FabSettings(
        artifact_dir=tmp_path / "artifacts",
        sync=SyncSettings(
            fab_id="fab-1",
            token=SecretStr("fab-token-of-the-tests-000000001"),
            hash_key=SecretStr("k" * 32),
            trusted_keys_dir=tmp_path / "trusted",
            batch_size=2,
            overlap_s=120.0,
        ),
    )


@pytest.fixture
def store(
    sessions: Sessions, fab_settings: FabSettings
) -> Callable[[Sequence[domain.Result], datetime], Awaitable[domain.IngestOutcome]]:
    """``await store(results, received_at)``: ingest one node's batch as StreamResults does."""

    async def run(results: Sequence[domain.Result], now: datetime = NOW) -> domain.IngestOutcome:
        return await ingest.ingest_batch(
            sessions, node_id=results[0].node_id, results=results, settings=fab_settings, now=now
        )

    return run


@pytest.fixture
def verdict(sessions: Sessions) -> Callable[..., Awaitable[domain.ReviewItem]]:
    """``await verdict(node, sequence, outcome, label=None, user=..., at=NOW)``: resolve the
    queued item of a result (as an admin override)."""

    async def run(
        node_id: str,
        sequence: int,
        outcome: domain.ReviewOutcome,
        label: int | None = None,
        *,
        user: str = "eng-alice",
        at: datetime = NOW,
    ) -> domain.ReviewItem:
        items = await review.list_queue(sessions, limit=500, now=at)
        (item,) = [i for i in items if (i.node_id, i.sequence) == (node_id, sequence)]
        return await review.resolve(
            sessions,
            item_id=item.id,
            resolution=domain.Resolution(outcome=outcome, true_label=label),
            user=user,
            override=True,
            now=at,
        )

    return run
