"""A model's own input: what it declares in its manifest, built here for training and serving.

Two kinds:

* ``tokens`` (legacy): the 26x26 nearest-neighbour grid as 676 canonical die values. It keeps
  one die per cell and drops the rest, and with them the thin scratches of large maps.
* ``area``: an S x S grid of float channels, where every source die contributes to the cells
  its area overlaps (area resampling). Channel ``fail`` is the fraction of failing die among the
  cell's die, channel ``die`` the fraction of the cell inside the wafer. No failing die is lost
  at any map size up to 512x512, and the grid is the same for a 26-row and a 200-row map of one
  pattern.

Both are vectorised over batches: maps are grouped by shape, and each group is resampled with
two matrix products (rows, then columns) of fractional overlap weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from wafercore.encoding import FAIL, OUT, TOKENS
from wafercore.preprocessing import to_grid, to_tokens

Resample = Literal["nearest", "area"]
CHANNELS = ("fail", "die")
"""Channels an ``area`` input can have, in this order."""
QUANTUM = 255
"""Cached inputs store each fraction as round(fraction * 255) in a uint8 (see `quantize`)."""


@dataclass(frozen=True)
class InputSpec:
    """What a model reads, as ``model.json`` declares it under ``input``.

    Attributes:
        size: side of the square grid.
        resample: ``nearest`` (legacy 26x26 tokens) or ``area``.
        channels: for ``area``: some of ``fail``, ``die``, in that order.
    """

    size: int = 26
    resample: Resample = "nearest"
    channels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.resample == "nearest":
            if self.size != 26 or self.channels:
                raise ValueError("a nearest input is the legacy 26x26 token grid, no channels")
        elif self.resample == "area":
            if not 8 <= self.size <= 256:
                raise ValueError(f"input size {self.size} must be in 8..256")
            if not self.channels or list(self.channels) != [
                c for c in CHANNELS if c in self.channels
            ]:
                raise ValueError(f"channels {list(self.channels)} must be some of {CHANNELS}")
        else:
            raise ValueError(f"resample {self.resample!r} is not 'nearest' or 'area'")

    @property
    def is_tokens(self) -> bool:
        """The legacy (B, 676) integer tokens."""
        return self.resample == "nearest"

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one wafer's input: (676,) or (channels, size, size)."""
        if self.is_tokens:
            return (self.size * self.size,)
        return (len(self.channels), self.size, self.size)

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``input`` object."""
        return {"size": self.size, "resample": self.resample, "channels": list(self.channels)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> InputSpec:
        """Parse the manifest's ``input`` (absent: the legacy tokens).

        Raises:
            ValueError: unknown keys or values.
        """
        if data is None:
            return cls()
        unknown = sorted(set(data) - {"size", "resample", "channels"})
        if unknown:
            raise ValueError(f"input has unknown keys {unknown}")
        return cls(
            size=int(data.get("size", 26)),
            resample=data.get("resample", "nearest"),
            channels=tuple(data.get("channels", ())),
        )


TOKENS_INPUT = InputSpec()
"""The legacy input of every model made before inputs were declared."""


@lru_cache(maxsize=1024)
def overlap_weights(source: int, target: int) -> npt.NDArray[np.float32]:
    """(target, source) fraction of each source cell inside each target cell's span.

    Target cell ``i`` spans ``[i * source / target, (i + 1) * source / target)`` in source
    coordinates; a row sums to ``source / target`` (the cell's extent in source cells).
    """
    edges = np.arange(target + 1, dtype=np.float64) * source / target
    low, high = edges[:-1, None], edges[1:, None]
    cells = np.arange(source, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(high, cells + 1) - np.maximum(low, cells), 0.0, None)
    weights: npt.NDArray[np.float32] = overlap.astype(np.float32)
    weights.flags.writeable = False  # cached: shared by every caller
    return weights


def area_resample(
    maps: npt.NDArray[np.uint8], size: int, channels: Sequence[str] = CHANNELS
) -> npt.NDArray[np.float32]:
    """Area-resample a batch of same-shape canonical maps (N, H, W) to (N, C, size, size).

    ``fail`` is failing die / die in each cell (0 where a cell holds no die), ``die`` is the
    fraction of the cell's area inside the wafer.
    """
    n, rows, cols = maps.shape
    wy, wx = overlap_weights(rows, size), overlap_weights(cols, size)
    die = (maps != OUT).astype(np.float32)
    fail = (maps == FAIL).astype(np.float32)
    # (size, H) @ (N, H, W) @ (W, size): die and fail counts per target cell, fractional.
    die_sum = wy @ die @ wx.T
    fail_sum = wy @ fail @ wx.T
    out = np.empty((n, len(channels), size, size), dtype=np.float32)
    for k, name in enumerate(channels):
        if name == "fail":
            np.divide(fail_sum, die_sum, out=out[:, k], where=die_sum > 1e-6)
            out[:, k][die_sum <= 1e-6] = 0.0
        else:
            out[:, k] = die_sum * (size * size / (rows * cols))
    np.clip(out, 0.0, 1.0, out=out)
    return out


def build_input(
    maps: Sequence[npt.NDArray[np.uint8]], spec: InputSpec
) -> npt.NDArray[np.uint8] | npt.NDArray[np.float32]:
    """A model's input for canonical maps of any sizes, in order.

    Returns:
        (B, 676) uint8 tokens, or (B, C, S, S) float32 for an ``area`` input.
    """
    if spec.is_tokens:
        return to_tokens(np.stack([to_grid(m) for m in maps]))
    out = np.empty((len(maps), *spec.shape), dtype=np.float32)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(maps):
        groups.setdefault((int(m.shape[0]), int(m.shape[1])), []).append(i)
    for index in groups.values():
        out[index] = area_resample(np.stack([maps[i] for i in index]), spec.size, spec.channels)
    return out


def quantize(inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """Fractions in [0, 1] as uint8 (x 255): a cached 64x64x2 input costs 8 KB, not 32 KB."""
    return np.rint(inputs * QUANTUM).astype(np.uint8)


def dequantize(cached: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """The fractions of a `quantize`-d input (within 1/510 of the original)."""
    return cached.astype(np.float32) / np.float32(QUANTUM)


def as_tokens(tokens: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """A token batch as the runtime takes it: (B, 676) int64 values 0..2, or ValueError."""
    arr = np.asarray(tokens)
    if arr.ndim != 2 or arr.shape[1] != TOKENS:
        raise ValueError(f"tokens must have shape (B, {TOKENS}), got {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokens must be integers 0..2, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 2):
        raise ValueError("tokens must be canonical die values 0 (pass), 1 (fail), 2 (out)")
    return np.ascontiguousarray(arr, dtype=np.int64)


def as_area(inputs: npt.ArrayLike, spec: InputSpec) -> npt.NDArray[np.float32]:
    """An area batch as the runtime takes it: (B, C, S, S) float32 in [0, 1], or ValueError."""
    arr = np.asarray(inputs)
    if arr.ndim != 4 or arr.shape[1:] != spec.shape:
        raise ValueError(
            f"inputs must have shape (B, {', '.join(map(str, spec.shape))}), got {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"inputs must be fractions in [0, 1], got dtype {arr.dtype}")
    if arr.size and not (arr.min() >= 0.0 and arr.max() <= 1.0):  # NaN fails too
        raise ValueError("inputs must be fractions in [0, 1]")
    return np.ascontiguousarray(arr, dtype=np.float32)
