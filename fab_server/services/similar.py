"""Similar past wafers and novelty heatmaps for root cause (issue 14).

Similar wafers: every stored result that came with an embedding (the novelty model's latent
mean, computed where the wafer was classified) is kept in an in-memory nearest-neighbour index
per model version (`fab_server.similarity.index`: exact for a small store, HNSW once it grows).
Before each query the index catches up with the rows stored since its last look, in id order,
so every server process answers from the database's state without a message bus. A query
returns the nearest stored results of the same model version, with the label an engineer
confirmed for each, if any.

Heatmaps: the fab's own model (`fab_server.services.classify.Classifier`) scores the stored map
with its novelty model and maps the per-cell error back onto the wafer's die.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.errors import Conflict, InvalidArgument, NotFound
from fab_server.repository import embeddings as repo
from fab_server.repository import results as results_repo
from fab_server.repository import review as review_repo
from fab_server.services.classify import Classifier
from fab_server.similarity.index import EmbeddingIndex
from wafercore.novelty import die_heatmap
from wafercore.validation import check_id

Sessions = async_sessionmaker[AsyncSession]

Neighbour = repo.Neighbour
"""A stored result near a query, with its distance and confirmed label (the transports' view)."""

MAX_K = 100
"""Most neighbours one query returns."""
CATCH_UP_ROWS = 20_000
"""Embeddings read per round trip while an index catches up."""


@dataclass(frozen=True)
class SimilarWafers:
    """A query result and its nearest stored neighbours (nearest first)."""

    query: domain.Result
    neighbours: list[Neighbour]


@dataclass(frozen=True)
class Heatmap:
    """A stored wafer's novelty: score and flag by the fab's model, error per die.

    ``values`` has the map's shape; cells outside the wafer are None.
    """

    result: domain.Result
    novelty_model: str
    score: float
    threshold: float
    novel: bool
    values: list[list[float | None]]


class SimilarityIndex:
    """The fab's similar-wafer index: one `EmbeddingIndex` per model version."""

    def __init__(self, *, exact_below: int = 20_000) -> None:
        self._exact_below = exact_below
        self._indexes: dict[str, tuple[EmbeddingIndex, int]] = {}  # version -> (index, dim)
        self._last_id = 0
        self._lock = asyncio.Lock()

    async def catch_up(self, sessions: Sessions) -> int:
        """Add every embedding stored since the last call; returns how many were added."""
        added = 0
        async with self._lock:
            while True:
                async with sessions() as session:
                    rows = await repo.embeddings_after(
                        session, after_id=self._last_id, limit=CATCH_UP_ROWS
                    )
                if not rows:
                    return added
                await asyncio.to_thread(self._add, rows)
                self._last_id, added = rows[-1].id, added + len(rows)

    def _add(self, rows: list[repo.StoredEmbedding]) -> None:
        groups: dict[str, list[repo.StoredEmbedding]] = {}
        for row in rows:
            groups.setdefault(row.model_version, []).append(row)
        for version, group in groups.items():
            if version not in self._indexes:
                dim = len(group[0].vector)
                self._indexes[version] = (EmbeddingIndex(dim, exact_below=self._exact_below), dim)
            index, dim = self._indexes[version]
            # A vector of another size than its model's: nothing to compare it with.
            fits = [r for r in group if len(r.vector) == dim]
            if fits:
                index.add(
                    np.array([r.id for r in fits], dtype=np.int64),
                    np.stack([r.vector for r in fits]).astype(np.float32),
                )

    def search(
        self, version: str, vector: npt.NDArray[np.float32], k: int
    ) -> tuple[list[int], list[float]]:
        """The ``k`` nearest stored ids of ``version``'s index and their distances."""
        if version not in self._indexes:
            return [], []
        index, dim = self._indexes[version]
        if len(index) == 0 or dim != len(vector):
            return [], []
        ids, distances = index.search(vector, k)
        return ids[0].tolist(), distances[0].tolist()


async def _query_result(
    session: AsyncSession, *, wafer_id: str, node_id: str | None, sequence: int | None
) -> domain.Result:
    """The stored result a query names: ``(node_id, sequence)``, else the wafer's newest one."""
    check_id(wafer_id, "wafer_id")
    if (node_id is None) != (sequence is None):
        raise InvalidArgument("node_id", "node_id and sequence come together, or neither")
    if node_id is None or sequence is None:
        newest = await results_repo.newest_of_wafer(session, wafer_id=wafer_id)
        if newest is None:
            raise NotFound(f"wafer {wafer_id}")
        node_id, sequence = newest
    result = await review_repo.load_result(
        session, node_id=node_id, sequence=sequence, with_map=True
    )
    if result is None or result.wafer_id != wafer_id:
        raise NotFound(f"result {node_id}/{sequence} of wafer {wafer_id}")
    return result


async def similar_wafers(
    sessions: Sessions,
    index: SimilarityIndex,
    *,
    wafer_id: str,
    k: int = 10,
    node_id: str | None = None,
    sequence: int | None = None,
) -> SimilarWafers:
    """The ``k`` stored results nearest to a wafer's result, without the result itself.

    Raises:
        InvalidArgument: ``k`` out of 1..MAX_K, a bad wafer id, or half a result key.
        NotFound: no such stored result.
        Conflict: the result came without an embedding (its node runs no novelty model).
    """
    if not 1 <= k <= MAX_K:
        raise InvalidArgument("k", f"must be in 1..{MAX_K}, got {k}")
    async with sessions() as session:
        query = await _query_result(session, wafer_id=wafer_id, node_id=node_id, sequence=sequence)
        stored = await repo.embedding_of(session, node_id=query.node_id, sequence=query.sequence)
    if stored is None:
        raise Conflict(
            f"wafer {wafer_id} ({query.node_id}/{query.sequence}) has no embedding: its model "
            f"{query.model_version} runs no novelty model"
        )
    await index.catch_up(sessions)
    ids, distances = await asyncio.to_thread(
        index.search, stored.model_version, stored.vector, k + 1
    )
    # Itself out, and any place an approximate search could not fill (id -1).
    keep = [(i, d) for i, d in zip(ids, distances, strict=True) if i not in (stored.id, -1)][:k]
    async with sessions() as session:
        found = await repo.neighbours(
            session, ids=[i for i, _ in keep], distances=[d for _, d in keep]
        )
    return SimilarWafers(query=query, neighbours=found)


async def heatmap(
    sessions: Sessions,
    classifier: Classifier,
    *,
    wafer_id: str,
    node_id: str | None = None,
    sequence: int | None = None,
) -> Heatmap:
    """The novelty heatmap of a stored wafer's map, by the fab's current model.

    Raises:
        InvalidArgument: a bad wafer id or half a result key.
        NotFound: no such stored result.
        Conflict: no map was stored with it, or the fab's model has no novelty model.
    """
    async with sessions() as session:
        result = await _query_result(session, wafer_id=wafer_id, node_id=node_id, sequence=sequence)
    if result.wafer_map is None:
        raise Conflict(f"no map is stored for wafer {wafer_id}: its node did not send one")
    runtime = await classifier.runtime()
    model = runtime.novelty
    if model is None:
        raise Conflict(f"the fab's model {runtime.version} has no novelty model")
    stored = result.wafer_map
    wafer = np.frombuffer(stored.values, dtype=np.uint8).reshape(stored.rows, stored.cols)
    inputs = await asyncio.to_thread(model.prepare, [wafer])
    scored, cells = await asyncio.to_thread(model.score_with_heatmap, inputs)
    per_die = die_heatmap(wafer, cells[0], inputs[0, 1])
    return Heatmap(
        result=result,
        novelty_model=model.manifest.version,
        score=float(scored.score[0]),
        threshold=model.manifest.threshold,
        novel=bool(scored.novel[0]),
        values=[[None if np.isnan(v) else float(v) for v in row] for row in per_die],
    )
