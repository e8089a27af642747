"""Label-preserving augmentation of wafer maps (brief §3.1), one map or a whole batch at once.

A wafer is round, so rotations by multiples of 90 degrees and mirror images show the same
defect pattern; measurement noise (a few passing die read as failing) does not change it either.
Translations and crops are never applied: where a pattern sits relative to the wafer centre is
what tells Center, Loc and Edge-Loc apart.

Each call picks ONE operation per map: the identity with probability 0.3, otherwise one of four
kinds with equal probability (0.175 each): a rotation (by 90, 180 or 270 degrees, equally likely),
a horizontal flip (mirror left-right), a vertical flip (mirror top-bottom) or noise. Geometric
operations move the out-of-wafer mask with the map; noise turns 1-2% of the passing in-wafer die
into fails and never touches an out-of-wafer cell or a failing die.

Non-square maps (raw maps with rectangular die) keep their shape: for them a rotation is always
by 180 degrees, so the kinds keep their probabilities and no map changes shape.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from wafercore.encoding import FAIL, PASS

IDENTITY_PROBABILITY = 0.3
"""Share of maps returned unchanged."""
NOISE_RATE = (0.01, 0.02)
"""Range of the share of passing die turned into fails by `Augmentation.NOISE`, per map."""

_Grid = TypeVar("_Grid", bound=np.integer[Any])


class Augmentation(IntEnum):
    """The operations `augment_batch` chooses from; values index `apply_augmentations`."""

    IDENTITY = 0
    ROT90 = 1  # counter-clockwise, as np.rot90
    ROT180 = 2
    ROT270 = 3
    FLIP_LR = 4  # horizontal flip: columns reversed
    FLIP_UD = 5  # vertical flip: rows reversed
    NOISE = 6


_KIND = (1.0 - IDENTITY_PROBABILITY) / 4  # rotation, horizontal, vertical flip, noise
_PROBABILITIES = np.array(
    [IDENTITY_PROBABILITY, _KIND / 3, _KIND / 3, _KIND / 3, _KIND, _KIND, _KIND]
)
_PROBABILITIES_NON_SQUARE = np.array([IDENTITY_PROBABILITY, 0.0, _KIND, 0.0, _KIND, _KIND, _KIND])


def draw_augmentations(
    n: int, rng: np.random.Generator, *, square: bool = True
) -> npt.NDArray[np.int8]:
    """Choose the operation for each of ``n`` maps.

    Args:
        n: number of maps.
        rng: source of randomness.
        square: the maps are square; when False, rotations are by 180 degrees only.

    Returns:
        (n,) int8 `Augmentation` values.
    """
    probabilities = _PROBABILITIES if square else _PROBABILITIES_NON_SQUARE
    return rng.choice(len(Augmentation), size=n, p=probabilities).astype(np.int8)


def apply_augmentations(
    grids: npt.NDArray[_Grid], ops: npt.ArrayLike, rng: np.random.Generator
) -> npt.NDArray[_Grid]:
    """Apply the chosen operation to each map of a batch.

    Maps are grouped by operation and each group is transformed with one array operation, so
    the cost does not grow with a Python loop over maps.

    Args:
        grids: (N, H, W) maps in the canonical encoding (0 pass, 1 fail, 2 out of wafer).
        ops: (N,) `Augmentation` values, one per map.
        rng: source of randomness for the noise.

    Returns:
        A new (N, H, W) array of the same dtype.

    Raises:
        ValueError: ``grids`` is not 3-D, ``ops`` does not match it, or a 90/270-degree rotation
            is asked of non-square maps.
    """
    if grids.ndim != 3:
        raise ValueError(f"grids must be (N, H, W), got shape {grids.shape}")
    chosen = np.asarray(ops)
    if chosen.shape != grids.shape[:1]:
        raise ValueError(f"need one operation per map: {grids.shape[0]}, got {chosen.shape}")
    if chosen.size and (chosen.min() < 0 or chosen.max() >= len(Augmentation)):
        raise ValueError("operations must be Augmentation values")
    square = grids.shape[1] == grids.shape[2]
    if not square and np.isin(chosen, (Augmentation.ROT90, Augmentation.ROT270)).any():
        raise ValueError(f"cannot rotate {grids.shape[1]}x{grids.shape[2]} maps by 90 degrees")
    out = grids.copy()
    for op in Augmentation:
        index = np.flatnonzero(chosen == op)
        if index.size == 0 or op == Augmentation.IDENTITY:
            continue
        group = grids[index]  # (k, H, W)
        if op in (Augmentation.ROT90, Augmentation.ROT180, Augmentation.ROT270):
            out[index] = np.rot90(group, k=int(op), axes=(1, 2))
        elif op == Augmentation.FLIP_LR:
            out[index] = group[:, :, ::-1]
        elif op == Augmentation.FLIP_UD:
            out[index] = group[:, ::-1, :]
        else:
            out[index] = _add_noise(group, rng)
    return out


def augment_batch(grids: npt.NDArray[_Grid], rng: np.random.Generator) -> npt.NDArray[_Grid]:
    """Augment every map of a batch with one randomly chosen operation each.

    Args:
        grids: (N, H, W) maps in the canonical encoding.
        rng: source of randomness; the result is a function of its state.

    Returns:
        A new (N, H, W) array of the same dtype.

    Raises:
        ValueError: ``grids`` is not 3-D.
    """
    if grids.ndim != 3:
        raise ValueError(f"grids must be (N, H, W), got shape {grids.shape}")
    ops = draw_augmentations(len(grids), rng, square=grids.shape[1] == grids.shape[2])
    return apply_augmentations(grids, ops, rng)


def augment(grid: npt.NDArray[_Grid], rng: np.random.Generator) -> npt.NDArray[_Grid]:
    """Augment one (H, W) map with one randomly chosen operation (the brief's contract).

    Args:
        grid: (H, W) map in the canonical encoding, normally (26, 26).
        rng: source of randomness.

    Returns:
        A new (H, W) array of the same dtype.

    Raises:
        ValueError: ``grid`` is not 2-D.
    """
    if grid.ndim != 2:
        raise ValueError(f"grid must be (H, W), got shape {grid.shape}")
    out: npt.NDArray[_Grid] = augment_batch(grid[None], rng)[0]
    return out


def _add_noise(grids: npt.NDArray[_Grid], rng: np.random.Generator) -> npt.NDArray[_Grid]:
    """Turn round(rate * passing die) passing die of each map into fails, rate in 1-2%."""
    k, h, w = grids.shape
    flat = grids.reshape(k, h * w).copy()  # (k, H*W)
    passing = flat == PASS
    n_pass = passing.sum(axis=1)  # (k,)
    n_flip = np.rint(rng.uniform(*NOISE_RATE, size=k) * n_pass).astype(np.intp)  # (k,)
    most = int(n_flip.max(initial=0))
    if most == 0:
        return flat.reshape(k, h, w)
    # Random keys, infinite off the passing die: each map's n_flip smallest keys are a uniform
    # sample of its passing die without replacement. Partitioning for the largest n_flip only
    # costs O(H*W) per map, unlike a full sort.
    keys = np.where(passing, rng.random((k, h * w)), np.inf)
    candidates = np.argpartition(keys, most - 1, axis=1)[:, :most]  # (k, most), unordered
    order = np.argsort(np.take_along_axis(keys, candidates, axis=1), axis=1)
    ranked = np.take_along_axis(candidates, order, axis=1)  # (k, most), smallest key first
    chosen = np.arange(most)[None, :] < n_flip[:, None]  # (k, most)
    rows = np.broadcast_to(np.arange(k)[:, None], (k, most))
    flat[rows[chosen], ranked[chosen]] = FAIL
    noisy: npt.NDArray[_Grid] = flat.reshape(k, h, w)
    return noisy


STRONG_NOISE_RATE = (0.0, 0.04)
"""Share of passing die read as failing by `strong_augment`."""
STRONG_DROP_RATE = (0.0, 0.2)
"""Share of failing die read as passing by `strong_augment` (a retest that passed)."""


def random_dihedral(grid: npt.NDArray[_Grid], rng: np.random.Generator) -> npt.NDArray[_Grid]:
    """One (H, W) map rotated and perhaps mirrored at random: any of the eight symmetries of a
    square map, one of the four that keep a rectangular map's shape. Die values are kept."""
    if grid.ndim != 2:
        raise ValueError(f"grid must be (H, W), got shape {grid.shape}")
    square = grid.shape[0] == grid.shape[1]
    turned = np.rot90(grid, int(rng.integers(4)) if square else 2 * int(rng.integers(2)))
    if rng.random() < 0.5:
        turned = turned[:, ::-1]
    return np.array(turned)  # a contiguous, writable copy


def strong_augment(grid: npt.NDArray[_Grid], rng: np.random.Generator) -> npt.NDArray[_Grid]:
    """A heavy, still label-preserving distortion of one (H, W) map, for consistency training.

    A random rotation or mirror image (`random_dihedral`), then up to 4% of the passing die
    turned into fails and up to 20% of the failing die into passes. The pattern's place on the
    wafer, and so its class, is kept; its die are not.
    """
    out = random_dihedral(grid, rng)
    noise = rng.random(out.shape)
    passing, failing = out == PASS, out == FAIL
    out[passing & (noise < rng.uniform(*STRONG_NOISE_RATE))] = FAIL
    out[failing & (noise < rng.uniform(*STRONG_DROP_RATE))] = PASS
    return out
