"""The fab server's in-memory index of wafer embeddings, to find similar wafers (issue 14).

Each stored wafer is a float32 embedding of dimension D (`wafercore.novelty`'s latent mean)
under an int64 id, the database row id of its result. `EmbeddingIndex.search` returns the ids
of the k stored embeddings nearest a query, by Euclidean distance.

Below ``exact_below`` stored embeddings the search is exact (a faiss ``IndexFlatL2``). When the
store reaches that size, an HNSW graph (``faiss.IndexHNSWFlat``) is built once from everything
stored so far and then grows with each `EmbeddingIndex.add`; its search is approximate (see
``bench/similar_search.py`` for its recall at 1M). HNSW cannot remove a vector, and neither can
this index: ids are only ever added. faiss labels are insertion positions; the index maps them
back to ids with an array aligned with insertion order.
"""

from __future__ import annotations

import threading
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

IdArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


class EmbeddingIndex:
    """Nearest-neighbour index of wafer embeddings by id; exact while small, HNSW beyond.

    Safe to share between threads: one lock serializes `add` and `search` (faiss may still use
    several OpenMP threads inside one call; this class leaves faiss's thread count alone).

    Args:
        dim: dimension D of the embeddings.
        exact_below: stored embeddings below which the search is exact.
        m: HNSW neighbours per node (memory is about ``4 * D + 8 * m`` bytes per embedding).
        ef_construction: HNSW candidate list while inserting (higher: better graph, slower add).
        ef_search: HNSW candidate list while searching (higher: better recall, slower search);
            it can be changed later through the `ef_search` property.
    """

    def __init__(
        self,
        dim: int,
        *,
        exact_below: int = 20_000,
        m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 96,
    ) -> None:
        for name, value, least in (
            ("dim", dim, 1),
            ("exact_below", exact_below, 0),
            ("m", m, 2),
            ("ef_construction", ef_construction, 1),
            ("ef_search", ef_search, 1),
        ):
            _check_int(name, value, least)
        self._dim = dim
        self._exact_below = exact_below
        self._m = m
        self._ef_construction = ef_construction
        self._ef_search = ef_search
        self._lock = threading.Lock()
        self._index: Any = faiss.IndexFlatL2(dim)
        self._exact = True
        self._ids: IdArray = np.empty(0, np.int64)
        """Id of each stored embedding, in insertion order (faiss's label is the position)."""
        self._sorted_ids: IdArray = np.empty(0, np.int64)
        """The same ids sorted, to refuse an id added twice (8 bytes each, unlike a set)."""
        self._switch_if_due()

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def exact(self) -> bool:
        """True while searches are exact (fewer than ``exact_below`` embeddings stored)."""
        return self._exact

    @property
    def ef_search(self) -> int:
        """HNSW candidate list while searching; setting it applies to later searches."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        _check_int("ef_search", value, 1)
        with self._lock:
            self._ef_search = value
            if not self._exact:
                self._index.hnsw.efSearch = value

    def add(self, ids: IdArray, vectors: FloatArray) -> None:
        """Store ``vectors`` (N, D) float32 under ``ids`` (N,) int64 (non-negative, new).

        Raises:
            ValueError: wrong type, dtype or shape, a vector that is not finite, a negative id
                (-1 is faiss's "none"), or an id repeated in ``ids`` or already stored; the
                message names the argument. Nothing is stored then.
        """
        ids, vectors = self._checked(ids, vectors)
        with self._lock:
            new = np.sort(ids)
            at = np.searchsorted(self._sorted_ids, new)
            known = at < len(self._sorted_ids)
            known[known] = self._sorted_ids[at[known]] == new[known]
            if known.any():
                raise ValueError(f"ids: {int(new[known][0])} is already stored (added once only)")
            self._index.add(vectors)
            self._ids = np.concatenate([self._ids, ids])
            self._sorted_ids = np.insert(self._sorted_ids, at, new)
            self._switch_if_due()

    def search(self, query: npt.NDArray[np.floating[Any]], k: int) -> tuple[IdArray, FloatArray]:
        """Ids and Euclidean (L2, not squared) distances of the k stored embeddings nearest.

        Args:
            query: one embedding (D,) or Q of them (Q, D), floating (cast to float32), finite.
            k: neighbours wanted, >= 1.

        Returns:
            ids (Q, k') int64 and distances (Q, k') float32, nearest first, where
            k' = min(k, len(self)): an empty index gives (Q, 0) arrays. Once HNSW, the search is
            approximate and may, rarely, find fewer than k' neighbours; the places it could not
            fill hold id -1 and distance inf.

        Raises:
            ValueError: ``query`` of the wrong dimension or not finite, or ``k`` below 1.
        """
        _check_int("k", k, 1)
        queries = _as_matrix("query", query, self._dim, np.floating)
        with self._lock:
            found = min(k, len(self._ids))
            if found == 0:
                empty = np.empty((len(queries), 0))
                return empty.astype(np.int64), empty.astype(np.float32)
            squared, labels = self._index.search(np.ascontiguousarray(queries, np.float32), found)
            ids = np.where(labels >= 0, self._ids[labels], -1)
        distances = np.sqrt(np.maximum(squared, 0), dtype=np.float32)
        distances[labels < 0] = np.inf
        return ids.astype(np.int64, copy=False), distances

    def _checked(self, ids: IdArray, vectors: FloatArray) -> tuple[IdArray, FloatArray]:
        """``ids`` and ``vectors`` as `add` takes them, or ValueError naming the bad one."""
        if not isinstance(ids, np.ndarray) or ids.dtype != np.int64 or ids.ndim != 1:
            raise ValueError(f"ids: must be a 1-D int64 array, not {_describe(ids)}")
        if not isinstance(vectors, np.ndarray) or vectors.dtype != np.float32:
            raise ValueError(f"vectors: must be a float32 array, not {_describe(vectors)}")
        vectors = _as_matrix("vectors", vectors, self._dim, np.float32, one_allowed=False)
        if len(vectors) != len(ids):
            raise ValueError(f"vectors: {len(vectors)} rows for {len(ids)} ids")
        if (ids < 0).any():
            raise ValueError(f"ids: {int(ids[ids < 0][0])} is negative (ids must be >= 0)")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids: an id is repeated within the batch")
        return ids, np.ascontiguousarray(vectors)

    def _switch_if_due(self) -> None:
        """Build the HNSW graph from everything stored once the store reaches ``exact_below``."""
        if not self._exact or len(self._ids) < self._exact_below:
            return
        hnsw = faiss.IndexHNSWFlat(self._dim, self._m)
        hnsw.hnsw.efConstruction = self._ef_construction
        hnsw.hnsw.efSearch = self._ef_search
        if len(self._ids):
            hnsw.add(self._index.reconstruct_n(0, len(self._ids)))
        self._index, self._exact = hnsw, False


def _check_int(name: str, value: object, least: int) -> None:
    """ValueError naming ``name`` unless ``value`` is an int (not a bool) >= ``least``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise ValueError(f"{name}: must be an integer >= {least}, not {value!r}")


def _as_matrix(
    name: str, array: Any, dim: int, kind: type, *, one_allowed: bool = True
) -> npt.NDArray[Any]:
    """``array`` as a finite (rows, dim) matrix of ``kind``, or ValueError naming ``name``."""
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, kind):
        raise ValueError(f"{name}: must be a {kind.__name__} array, not {_describe(array)}")
    shape = array.shape
    if one_allowed and array.ndim == 1:
        array = array[np.newaxis]
    if array.ndim != 2 or array.shape[1] != dim:
        wanted = f"({dim},) or (Q, {dim})" if one_allowed else f"(N, {dim})"
        raise ValueError(f"{name}: shape {shape} is not {wanted}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: holds NaN or infinite values")
    return np.asarray(array)


def _describe(value: object) -> str:
    """A value's type, and its dtype and shape when it is an array, for error messages."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__
