"""Train/validation/test splits as index arrays, deterministic by seed.

Two protocols:

* `official_split`: WM-811K's own ``Training``/``Test`` split, whose lots are disjoint, with a
  validation set carved out of ``Training`` by whole lots. This is the honest protocol: the map
  outline gives the class away within a lot (DESIGN.md §4), so wafers of one lot on both sides
  of a split overstate accuracy.
* `production_split`: the official split's lots, with half of the ``Test`` lots (whole lots,
  class-stratified, seeded) standing for production wafers that engineers have reviewed: they
  join training and give the validation lots, and the other half is the test part. WM-811K's
  ``Test`` lots were labelled differently from its ``Training`` lots (far more wafers called
  None), as a fab's own reviewers label differently from any public set; a gate judged on
  ``Training`` lots picks models that production labels call worse (docs/model-ablations.md).
* `stratified_split`: the brief's random per-class split, for comparison with published numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from wafercore.classes import NUM_CLASSES
from wafercore.dataset import UNLABELLED, WaferDataset

TRAINING = "Training"
"""WM-811K's name for its training split."""
TEST = "Test"
"""WM-811K's name for its test split."""
PROTOCOLS = ("official", "production", "random")
"""The protocols `protocol_split` knows."""
REVIEWED_FRACTION = 0.5
"""Share of the ``Test`` wafers (whole lots) that `production_split` treats as reviewed."""


@dataclass(frozen=True)
class Split:
    """Row indices of each part of a split, sorted ascending, read-only.

    Attributes:
        train: int64 indices of the training rows.
        val: int64 indices of the validation rows.
        test: int64 indices of the test rows.
    """

    train: npt.NDArray[np.int64]
    val: npt.NDArray[np.int64]
    test: npt.NDArray[np.int64]

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            arr = np.sort(np.asarray(getattr(self, name), dtype=np.int64))
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)


def official_split(dataset: WaferDataset, val_fraction: float = 0.1, seed: int = 0) -> Split:
    """WM-811K's split, with a lot-grouped, class-stratified validation carve-out.

    Test is every labelled ``Test`` row. Validation is whole ``Training`` lots holding about
    ``val_fraction`` of the labelled ``Training`` wafers, chosen so its class counts come as
    close as whole lots allow to ``val_fraction`` of each class's, and so that it holds every
    class that occurs in at least two ``Training`` lots (a class in a single lot stays in
    train). Train is the remaining ``Training`` rows. Unlabelled rows are in no part. A lot is
    never in two parts: ``Training`` rows whose lot also has ``Test`` rows are left out.

    Args:
        dataset: maps with ``split``, ``lot`` and ``labels``.
        val_fraction: share of the ``Training`` wafers to hold out, in [0, 1).
        seed: breaks ties between equally good lots; same seed, same split.

    Returns:
        The split.

    Raises:
        ValueError: ``val_fraction`` is outside [0, 1).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train_rows, test = _official_rows(dataset)
    in_val = _carve_lots(dataset, train_rows, val_fraction, np.random.default_rng(seed))
    return Split(train=train_rows[~in_val], val=train_rows[in_val], test=test)


def production_split(dataset: WaferDataset, val_fraction: float = 0.1, seed: int = 0) -> Split:
    """The official split's lots, validated and tested on ``Test`` lots only.

    ``REVIEWED_FRACTION`` of the ``Test`` wafers, as whole lots chosen like validation lots
    (class-stratified, seeded), stand for production wafers engineers have reviewed. Of those,
    whole lots holding about ``val_fraction`` of them are validation; the rest join every
    ``Training`` row (less those of lots that also have ``Test`` rows) in train. Test is the
    other ``Test`` lots. No lot is in two parts.

    Args:
        dataset: maps with ``split``, ``lot`` and ``labels``.
        val_fraction: share of the reviewed wafers to hold out, in [0, 1).
        seed: breaks ties between equally good lots; same seed, same split.

    Raises:
        ValueError: ``val_fraction`` is outside [0, 1).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    training, test_rows = _official_rows(dataset)
    rng = np.random.default_rng([seed, 1])
    in_reviewed = _carve_lots(dataset, test_rows, REVIEWED_FRACTION, rng)
    reviewed = test_rows[in_reviewed]
    in_val = _carve_lots(dataset, reviewed, val_fraction, rng)
    return Split(
        train=np.concatenate([training, reviewed[~in_val]]),
        val=reviewed[in_val],
        test=test_rows[~in_reviewed],
    )


def protocol_split(
    dataset: WaferDataset, protocol: str, val_fraction: float = 0.1, seed: int = 0
) -> Split:
    """The split a training config's ``data.protocol`` names (one of ``PROTOCOLS``).

    ``random`` is `stratified_split` with ``val_fraction`` for validation and test each.

    Raises:
        ValueError: an unknown protocol, or a bad ``val_fraction``.
    """
    if protocol == "official":
        return official_split(dataset, val_fraction=val_fraction, seed=seed)
    if protocol == "production":
        return production_split(dataset, val_fraction=val_fraction, seed=seed)
    if protocol == "random":
        fractions = (1 - 2 * val_fraction, val_fraction, val_fraction)
        return stratified_split(dataset.labels, fractions, seed=seed)
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


def _official_rows(
    dataset: WaferDataset,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Labelled ``Training`` rows (less those of lots with ``Test`` rows) and ``Test`` rows."""
    labelled = np.asarray(dataset.labels, dtype=np.int64) != UNLABELLED
    split = np.asarray(dataset.split)
    lot = np.asarray(dataset.lot)
    test = np.flatnonzero(labelled & (split == TEST))
    training = labelled & (split == TRAINING) & ~np.isin(lot, lot[test])
    return np.flatnonzero(training), test


def _carve_lots(
    dataset: WaferDataset,
    rows: npt.NDArray[np.int64],
    fraction: float,
    rng: np.random.Generator,
) -> npt.NDArray[np.bool_]:
    """Which of ``rows`` belong to whole lots chosen to hold about ``fraction`` of each class."""
    labels = np.asarray(dataset.labels, dtype=np.int64)[rows]
    lot_names, lot_of_row = np.unique(np.asarray(dataset.lot)[rows], return_inverse=True)
    lot_of_row = lot_of_row.reshape(-1)
    counts = np.zeros((len(lot_names), NUM_CLASSES), dtype=np.int64)
    np.add.at(counts, (lot_of_row, labels), 1)
    chosen = _choose_val_lots(counts, fraction, rng)
    return chosen[lot_of_row]


def stratified_split(
    labels: npt.ArrayLike, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> Split:
    """Random split, per class in the given proportions (the brief's protocol).

    Each class is shuffled and cut by largest remainders, so the parts' class counts differ
    from the exact proportions by less than one; a class with at least as many rows as there
    are non-empty parts gets at least one row in each. Unlabelled rows are in no part. Lots
    are ignored: wafers of one lot end up on both sides (see the module docstring).

    Args:
        labels: class id per row, ``UNLABELLED`` for none.
        fractions: shares of (train, val, test); non-negative, summing to 1.
        seed: seed of the shuffle; same seed, same split.

    Returns:
        The split.

    Raises:
        ValueError: ``fractions`` is not three non-negative numbers summing to 1.
    """
    shares = np.asarray(fractions, dtype=np.float64)
    if shares.shape != (3,) or np.any(shares < 0) or not np.isclose(shares.sum(), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1: {fractions}")
    y = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    parts: list[list[npt.NDArray[np.int64]]] = [[], [], []]
    for cls in np.unique(y[y != UNLABELLED]):
        rows = rng.permutation(np.flatnonzero(y == cls))
        sizes = _allocate(len(rows), shares)
        for part, chunk in zip(parts, np.split(rows, np.cumsum(sizes)[:-1]), strict=True):
            part.append(chunk)
    train, val, test = (np.concatenate(p) if p else np.empty(0, dtype=np.int64) for p in parts)
    return Split(train=train, val=val, test=test)


def _choose_val_lots(
    counts: npt.NDArray[np.int64], val_fraction: float, rng: np.random.Generator
) -> npt.NDArray[np.bool_]:
    """Greedy choice of lots whose summed class counts approach ``val_fraction`` of the total.

    Each step adds the lot that most reduces the L1 distance between the chosen class counts and
    the target; it stops when no lot reduces it. Rare classes are seeded first, so a class the
    distance alone would skip (its target is under half a wafer) is still represented. A lot
    holding the last training lot of a class is never taken.
    """
    n_lots = len(counts)
    chosen = np.zeros(n_lots, dtype=bool)
    if n_lots == 0 or val_fraction == 0.0:
        return chosen
    has = counts > 0
    target = val_fraction * counts.sum(axis=0)
    current = np.zeros(NUM_CLASSES, dtype=np.float64)
    lots_left = has.sum(axis=0)  # per class, lots still in train
    # A random rank per lot breaks ties (lots with identical counts are common): the seed's job.
    rank = rng.permutation(n_lots)

    def pick(candidates: npt.NDArray[np.bool_], *, need_gain: bool) -> int | None:
        gain = np.abs(current - target).sum() - np.abs(current + counts - target).sum(axis=1)
        allowed = candidates & ~chosen & ~(has & (lots_left <= 1)).any(axis=1)
        gain = np.where(allowed, gain, -np.inf)
        best = gain.max()
        if best == -np.inf or (need_gain and best <= 1e-9):
            return None
        ties = np.flatnonzero(gain == best)
        return int(ties[np.argmin(rank[ties])])

    def take(lot: int) -> None:
        nonlocal current, lots_left
        chosen[lot] = True
        current = current + counts[lot]
        lots_left = lots_left - has[lot]

    for cls in np.argsort(has.sum(axis=0), kind="stable"):
        if current[cls] == 0 and (lot := pick(has[:, cls], need_gain=False)) is not None:
            take(lot)
    everyone = np.ones(n_lots, dtype=bool)
    while (lot := pick(everyone, need_gain=True)) is not None:
        take(lot)
    return chosen


def _allocate(n: int, shares: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Split ``n`` rows by ``shares`` with largest remainders, non-empty parts first."""
    exact = shares * n
    sizes = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - sizes), kind="stable")
    sizes[order[: n - int(sizes.sum())]] += 1
    wanted = np.flatnonzero(shares > 0)
    if n >= len(wanted):
        # A small class could round to zero in a part; take a row from the largest part.
        for part in wanted:
            if sizes[part] == 0:
                sizes[np.argmax(sizes)] -= 1
                sizes[part] += 1
    return sizes
