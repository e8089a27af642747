"""Fill a fab database with synthetic wafers classified by the real model (demos, load tests)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.repository import results as results_repo
from fab_server.services.classify import Classifier, classify_batch
from fab_server.services.ingest import ingest_batch
from fab_server.settings import FabSettings
from wafercore.synthetic import generate_dataset

SEED_NODE_ID = "seed"
"""``node_id`` of seeded results, so they are told apart from a real station's."""
WAFERS_PER_LOT = 25


async def seed_synthetic(
    sessions: async_sessionmaker[AsyncSession],
    classifier: Classifier,
    *,
    settings: FabSettings,
    count: int,
    seed: int = 0,
    batch_size: int = 500,
) -> domain.IngestOutcome:
    """Generate ``count`` synthetic wafers (every class), classify and store them.

    Wafers go into lots of 25 named ``SYN-{seed}-{n}``; sequences continue after what the seed
    node already stored, so seeding twice adds wafers instead of colliding.

    Returns:
        The ack of the last batch, with ``accepted`` summed over all batches.
    """
    per_class = -(-count // 9)
    data = generate_dataset(per_class, np.random.default_rng(seed))
    order = np.random.default_rng(seed + 1).permutation(len(data))[:count]
    accepted = duplicates = acked = 0
    start = await _next_sequence(sessions)
    for first in range(0, len(order), batch_size):
        chunk = order[first : first + batch_size]
        wafers: list[domain.WaferInput] = []
        for i in chunk:
            grid = data.map(int(i))
            wafers.append(
                domain.WaferInput(
                    wafer_id=f"SYN-{seed}-W{start + first + len(wafers):07d}",
                    lot_id=f"SYN-{seed}-{(start + first + len(wafers)) // WAFERS_PER_LOT:05d}",
                    wafer_map=domain.RawWaferMap(
                        rows=grid.shape[0], cols=grid.shape[1], values=grid.tobytes()
                    ),
                )
            )
        outcomes = await classify_batch(classifier, wafers=wafers, settings=settings)
        results = []
        for offset, (wafer, outcome) in enumerate(zip(wafers, outcomes, strict=True)):
            assert outcome.result is not None, outcome.error  # generated maps are valid
            raw = wafer.wafer_map
            assert raw is not None
            results.append(
                replace(
                    outcome.result,
                    node_id=SEED_NODE_ID,
                    sequence=start + first + offset,
                    wafer_map=domain.StoredMap(rows=raw.rows, cols=raw.cols, values=raw.values),
                    classified_at=datetime.now(UTC),
                )
            )
        ack = await ingest_batch(sessions, node_id=SEED_NODE_ID, results=results, settings=settings)
        accepted += ack.accepted
        duplicates += ack.duplicates
        acked = ack.acked_sequence
    return domain.IngestOutcome(
        node_id=SEED_NODE_ID, acked_sequence=acked, accepted=accepted, duplicates=duplicates
    )


async def _next_sequence(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return await results_repo.node_acked_sequence(session, node_id=SEED_NODE_ID) + 1
