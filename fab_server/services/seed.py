"""Fill a fab database with wafers classified by the real model (demos, load tests).

Synthetic wafers (`seed_synthetic`) or real WM-811K ones from a dataset (`seed_dataset`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.repository import results as results_repo
from fab_server.services.classify import Classifier, classify_batch
from fab_server.services.ingest import ingest_batch
from fab_server.settings import FabSettings
from wafercore.dataset import WaferDataset
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

    Wafers go into lots of 25 named ``SYN-{seed}-{n}``, each lot one product (one map shape,
    as in a real fab, so a lot's maps stack die on die); sequences continue after what the seed
    node already stored, so seeding twice adds wafers instead of colliding.

    Returns:
        The ack of the last batch, with ``accepted`` summed over all batches.
    """
    rng = np.random.default_rng(seed)
    start = await _next_sequence(sessions)
    first_lot = -(-(start - 1) // WAFERS_PER_LOT)  # a new lot after the last one seeded
    wafers: list[tuple[str, str, npt.NDArray[np.uint8]]] = []
    while len(wafers) < count:
        lot_id = f"SYN-{seed}-{first_lot + len(wafers) // WAFERS_PER_LOT:05d}"
        shape = (int(rng.integers(15, 81)), int(rng.integers(15, 81)))
        # Three of every class (27), shuffled, of which the lot keeps 25.
        lot = generate_dataset(3, rng, sizes=[shape])
        for i in rng.permutation(len(lot))[:WAFERS_PER_LOT]:
            if len(wafers) < count:
                wafers.append((f"SYN-{seed}-W{start + len(wafers):07d}", lot_id, lot.map(int(i))))
    return await _seed_wafers(
        sessions, classifier, settings=settings, wafers=wafers, batch_size=batch_size
    )


async def seed_dataset(
    sessions: async_sessionmaker[AsyncSession],
    classifier: Classifier,
    *,
    settings: FabSettings,
    dataset: WaferDataset,
    indices: Sequence[int],
    batch_size: int = 500,
) -> domain.IngestOutcome:
    """Classify and store the maps ``indices`` of a dataset (real WM-811K wafers, for demos).

    Each wafer keeps its lot (``WM-{lot}``) and is named ``WM-{lot}-W{index in lot:02d}``.

    Returns:
        The ack of the last batch, with ``accepted`` summed over all batches.
    """
    wafers = [
        (
            f"WM-{dataset.lot[i]}-W{int(dataset.wafer_index[i]):02d}",
            f"WM-{dataset.lot[i]}",
            dataset.map(int(i)),
        )
        for i in indices
    ]
    return await _seed_wafers(
        sessions, classifier, settings=settings, wafers=wafers, batch_size=batch_size
    )


async def _seed_wafers(
    sessions: async_sessionmaker[AsyncSession],
    classifier: Classifier,
    *,
    settings: FabSettings,
    wafers: Sequence[tuple[str, str, npt.NDArray[np.uint8]]],
    batch_size: int,
) -> domain.IngestOutcome:
    """Classify (wafer_id, lot_id, canonical map) triples and store them as the seed node's."""
    accepted = duplicates = acked = 0
    start = await _next_sequence(sessions)
    for first in range(0, len(wafers), batch_size):
        inputs = [
            domain.WaferInput(
                wafer_id=wafer_id,
                lot_id=lot_id,
                wafer_map=domain.RawWaferMap(
                    rows=grid.shape[0], cols=grid.shape[1], values=grid.tobytes()
                ),
            )
            for wafer_id, lot_id, grid in wafers[first : first + batch_size]
        ]
        outcomes = await classify_batch(classifier, wafers=inputs, settings=settings)
        results = []
        for offset, (wafer, outcome) in enumerate(zip(inputs, outcomes, strict=True)):
            assert outcome.result is not None, outcome.error  # seeded maps are valid
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
