"""A labelled (or unlabelled) collection of wafer maps, as every reader returns it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from wafercore.encoding import OUT

UNLABELLED = -1
"""Label of a map with no class (WM-811K's unlabelled rows)."""


@dataclass
class WaferDataset:
    """Ragged wafer maps in the canonical encoding with their metadata.

    Maps of different shapes are stored flat, as in the WM-811K npz files: map ``i`` is
    ``values[offsets[i]:offsets[i + 1]].reshape(shapes[i])``.

    Attributes:
        values: uint8, all maps' die values (0 pass, 1 fail, 2 out of wafer), concatenated.
        offsets: int64 (N+1,), start of each map in ``values``.
        shapes: int32 (N, 2), (rows, cols) of each map.
        labels: int64 (N,), class id per map, ``UNLABELLED`` (-1) where there is none.
        split: str (N,), the source's own split (``Training``/``Test``), empty where unknown.
        lot: str (N,), lot id.
        wafer_index: float64 (N,), position of the wafer in its lot.
        die_size: float64 (N,), number of die on the wafer.
        source: where the data came from (a path), for provenance.
    """

    values: npt.NDArray[np.uint8]
    offsets: npt.NDArray[np.int64]
    shapes: npt.NDArray[np.int32]
    labels: npt.NDArray[np.int64]
    split: npt.NDArray[np.str_]
    lot: npt.NDArray[np.str_]
    wafer_index: npt.NDArray[np.float64]
    die_size: npt.NDArray[np.float64]
    source: str = field(default="")

    def __post_init__(self) -> None:
        n = len(self.shapes)
        if len(self.offsets) != n + 1:
            raise ValueError(f"offsets must have {n + 1} entries, got {len(self.offsets)}")
        for name in ("labels", "split", "lot", "wafer_index", "die_size"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} must have {n} entries, got {len(getattr(self, name))}")

    def __len__(self) -> int:
        return len(self.shapes)

    def map(self, i: int) -> npt.NDArray[np.uint8]:
        """Map ``i`` as an (rows, cols) array in the canonical encoding."""
        rows, cols = (int(v) for v in self.shapes[i])
        return self.values[self.offsets[i] : self.offsets[i + 1]].reshape(rows, cols)

    def maps(self) -> Iterator[npt.NDArray[np.uint8]]:
        """All maps in order."""
        for i in range(len(self)):
            yield self.map(i)

    def subset(self, index: npt.NDArray[np.integer]) -> WaferDataset:
        """A new dataset with the rows at ``index`` (in that order), values copied."""
        index = np.asarray(index, dtype=np.int64)
        starts = self.offsets[index]
        sizes = self.offsets[index + 1] - starts
        offsets = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        # One gather: position k of the output reads starts[row of k] + (k - offsets[row of k]).
        gather = np.arange(int(offsets[-1]), dtype=np.int64) + np.repeat(
            starts - offsets[:-1], sizes
        )
        values = self.values[gather]
        return WaferDataset(
            values=values,
            offsets=offsets,
            shapes=self.shapes[index],
            labels=self.labels[index],
            split=self.split[index],
            lot=self.lot[index],
            wafer_index=self.wafer_index[index],
            die_size=self.die_size[index],
            source=self.source,
        )

    @classmethod
    def concat(cls, parts: Sequence[WaferDataset], *, source: str = "") -> WaferDataset:
        """One dataset holding the rows of ``parts`` in order (values copied)."""
        if not parts:
            raise ValueError("concat needs at least one dataset")
        sizes = [int(p.offsets[-1]) for p in parts]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        offsets = np.concatenate(
            [[0]] + [p.offsets[1:] + start for p, start in zip(parts, starts, strict=True)]
        ).astype(np.int64)
        return cls(
            values=np.concatenate([p.values for p in parts]),
            offsets=offsets,
            shapes=np.concatenate([p.shapes for p in parts]).astype(np.int32),
            labels=np.concatenate([p.labels for p in parts]).astype(np.int64),
            split=np.concatenate([p.split.astype(np.str_) for p in parts]),
            lot=np.concatenate([p.lot.astype(np.str_) for p in parts]),
            wafer_index=np.concatenate([p.wafer_index for p in parts]),
            die_size=np.concatenate([p.die_size for p in parts]),
            source=source or parts[0].source,
        )

    @classmethod
    def from_maps(
        cls,
        maps: Sequence[npt.NDArray[np.integer[Any]]],
        labels: npt.ArrayLike | None = None,
        *,
        split: npt.ArrayLike | None = None,
        lot: npt.ArrayLike | None = None,
        source: str = "",
    ) -> WaferDataset:
        """Build a dataset from a list of canonical maps (tests, synthetic data, G85 files)."""
        n = len(maps)
        shapes = np.array([m.shape for m in maps], dtype=np.int32).reshape(n, 2)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(shapes[:, 0].astype(np.int64) * shapes[:, 1], out=offsets[1:])
        values = (
            np.concatenate([np.asarray(m, dtype=np.uint8).ravel() for m in maps])
            if n
            else np.empty(0, dtype=np.uint8)
        )
        return cls(
            values=values,
            offsets=offsets,
            shapes=shapes,
            labels=np.full(n, UNLABELLED, np.int64)
            if labels is None
            else np.asarray(labels, np.int64),
            split=np.full(n, "", dtype="<U8")
            if split is None
            else np.asarray(split, dtype=np.str_),
            lot=np.full(n, "", dtype="<U1") if lot is None else np.asarray(lot, dtype=np.str_),
            wafer_index=np.zeros(n, np.float64),
            die_size=np.array([np.count_nonzero(np.asarray(m) != OUT) for m in maps], np.float64),
            source=source,
        )
