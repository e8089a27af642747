"""Result embeddings (``wafer_embeddings``): written with the results, read by similar-wafer
search (`fab_server.services.similar`) in ``id`` order, so an index catches up incrementally.

A vector is stored as float32 little-endian bytes; its model version says which latent space it
lives in (vectors of two novelty models are never compared).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import select, text
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from fab_server import domain
from fab_server.models import LabelRow, ResultRow, WaferEmbeddingRow, WaferMapRow
from fab_server.repository import is_postgres, records_json, recordset_insert

_RECORD: tuple[tuple[str, str], ...] = (
    ("node_id", "text"),
    ("sequence", "int8"),
    ("model_version", "text"),
    ("vector", "bytea"),
)
_PG_INSERT = text(
    recordset_insert(
        WaferEmbeddingRow.__tablename__, _RECORD, conflict=("node_id", "sequence"), returning="id"
    )
)
_CONFIRMING = (domain.ReviewOutcome.CONFIRMED.value, domain.ReviewOutcome.RELABELLED.value)


@dataclass(frozen=True)
class StoredEmbedding:
    """One stored embedding: its row id (the index's key), whose result it is, and the vector."""

    id: int
    node_id: str
    sequence: int
    model_version: str
    vector: npt.NDArray[np.float32]


@dataclass(frozen=True)
class Neighbour:
    """A stored result found near a query, with the label an engineer confirmed, if any."""

    result: domain.Result
    distance: float
    confirmed_label: int | None


def _vector(raw: bytes) -> npt.NDArray[np.float32]:
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


async def insert_embeddings(session: AsyncSession, *, results: Sequence[domain.Result]) -> None:
    """Store the embeddings of results that carry one (skipping those already stored)."""
    postgres = is_postgres(session)
    rows: list[dict[str, Any]] = []
    for r in results:
        if r.embedding is None:
            continue
        raw = np.asarray(r.embedding, dtype="<f4").tobytes()
        rows.append(
            {
                "node_id": r.node_id,
                "sequence": r.sequence,
                "model_version": r.model_version,
                "vector": "\\x" + raw.hex() if postgres else raw,  # JSON has no bytes
            }
        )
    if not rows:
        return
    if postgres:
        await session.execute(_PG_INSERT, {"records": records_json(rows)})
    else:
        stmt = sqlite_insert(WaferEmbeddingRow).on_conflict_do_nothing(
            index_elements=["node_id", "sequence"]
        )
        await session.execute(stmt, rows)


async def embeddings_after(
    session: AsyncSession, *, after_id: int, limit: int
) -> list[StoredEmbedding]:
    """Up to ``limit`` embeddings with an id above ``after_id``, in id order."""
    rows = await session.scalars(
        select(WaferEmbeddingRow)
        .where(WaferEmbeddingRow.id > after_id)
        .order_by(WaferEmbeddingRow.id)
        .limit(limit)
    )
    return [
        StoredEmbedding(r.id, r.node_id, r.sequence, r.model_version, _vector(r.vector))
        for r in rows
    ]


async def embedding_of(
    session: AsyncSession, *, node_id: str, sequence: int
) -> StoredEmbedding | None:
    """The embedding of one stored result, or None when it came without one."""
    row = await session.scalar(
        select(WaferEmbeddingRow).where(
            WaferEmbeddingRow.node_id == node_id, WaferEmbeddingRow.sequence == sequence
        )
    )
    if row is None:
        return None
    return StoredEmbedding(
        row.id, row.node_id, row.sequence, row.model_version, _vector(row.vector)
    )


async def neighbours(
    session: AsyncSession, *, ids: Sequence[int], distances: Sequence[float]
) -> list[Neighbour]:
    """The results of embedding ids (in the order given), with their maps when stored and
    their latest confirmed label."""
    if not ids:
        return []
    same_result = (ResultRow.node_id == WaferEmbeddingRow.node_id) & (
        ResultRow.sequence == WaferEmbeddingRow.sequence
    )
    same_map = (WaferMapRow.node_id == WaferEmbeddingRow.node_id) & (
        WaferMapRow.sequence == WaferEmbeddingRow.sequence
    )
    found = await session.execute(
        select(WaferEmbeddingRow.id, ResultRow, WaferMapRow)
        .join(ResultRow, same_result)
        .outerjoin(WaferMapRow, same_map)
        .where(WaferEmbeddingRow.id.in_(ids))
    )
    results = {
        int(emb_id): row.to_domain(stored.to_domain() if stored is not None else None)
        for emb_id, row, stored in found.all()
    }
    labels: dict[tuple[str, int], int | None] = {}
    if results:
        label_rows = await session.execute(
            select(LabelRow.node_id, LabelRow.sequence, LabelRow.true_label, LabelRow.outcome)
            .where(
                LabelRow.node_id.in_({r.node_id for r in results.values()}),
                LabelRow.sequence.in_({r.sequence for r in results.values()}),
                LabelRow.outcome.in_(_CONFIRMING),
            )
            .order_by(LabelRow.resolved_at)
        )
        for node_id, sequence, true_label, _ in label_rows.all():
            labels[(node_id, int(sequence))] = true_label  # the latest verdict wins
    return [
        Neighbour(
            result=results[i],
            distance=float(d),
            confirmed_label=labels.get((results[i].node_id, results[i].sequence)),
        )
        for i, d in zip(ids, distances, strict=True)
        if i in results
    ]
