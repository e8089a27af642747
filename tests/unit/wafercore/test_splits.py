"""Splits: the official lot-grouped split, the production one, and the random stratified one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from wafercore.classes import NUM_CLASSES, DefectClass
from wafercore.dataset import UNLABELLED, WaferDataset
from wafercore.readers.npz import read_npz
from wafercore.splits import (
    PROTOCOLS,
    REVIEWED_FRACTION,
    Split,
    official_split,
    production_split,
    protocol_split,
    stratified_split,
)

# Roughly WM-811K's class mix: mostly "none", a long tail down to Near-full.
CLASS_MIX = np.array([0.62, 0.07, 0.02, 0.07, 0.1, 0.05, 0.01, 0.03, 0.03])


def _dataset(
    lots: list[str], splits: list[str], labels: list[int] | npt.NDArray[np.int64]
) -> WaferDataset:
    maps = [np.zeros((1, 1), np.uint8)] * len(lots)
    return WaferDataset.from_maps(maps, labels=labels, split=splits, lot=lots)


def _synthetic(n_train_lots: int = 150, n_test_lots: int = 50, seed: int = 7) -> WaferDataset:
    rng = np.random.default_rng(seed)
    lots: list[str] = []
    splits: list[str] = []
    labels: list[int] = []
    for i in range(n_train_lots + n_test_lots):
        size = int(rng.integers(1, 26))
        lots += [f"lot{i}"] * size
        splits += ["Training" if i < n_train_lots else "Test"] * size
        drawn = rng.choice(NUM_CLASSES, size=size, p=CLASS_MIX)
        drawn[rng.random(size) < 0.05] = UNLABELLED
        labels += drawn.tolist()
    return _dataset(lots, splits, labels)


@pytest.fixture(scope="module")
def synthetic() -> WaferDataset:
    return _synthetic()


def _assert_disjoint(split: Split) -> None:
    parts = (split.train, split.val, split.test)
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)


def _lots(ds: WaferDataset, index: npt.NDArray[np.int64]) -> set[str]:
    return set(ds.lot[index].tolist())


# official_split ---------------------------------------------------------------------------


def test_official_split_is_deterministic_by_seed(synthetic: WaferDataset) -> None:
    a, b = official_split(synthetic, seed=3), official_split(synthetic, seed=3)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    others = [official_split(synthetic, seed=s).val for s in (4, 5)]
    assert any(not np.array_equal(a.val, other) for other in others)


def test_official_split_parts_are_disjoint_lots_and_labelled(synthetic: WaferDataset) -> None:
    split = official_split(synthetic)
    _assert_disjoint(split)
    train, val, test = (_lots(synthetic, p) for p in (split.train, split.val, split.test))
    assert not train & val and not train & test and not val & test
    labelled = synthetic.labels != UNLABELLED
    np.testing.assert_array_equal(
        split.test, np.flatnonzero(labelled & (synthetic.split == "Test"))
    )
    training = np.flatnonzero(labelled & (synthetic.split == "Training"))
    np.testing.assert_array_equal(np.sort(np.concatenate([split.train, split.val])), training)


def test_official_split_val_has_about_the_fraction_in_every_class(synthetic: WaferDataset) -> None:
    split = official_split(synthetic, val_fraction=0.1)
    n_training = len(split.train) + len(split.val)
    assert len(split.val) == pytest.approx(0.1 * n_training, rel=0.15)
    val_counts = np.bincount(synthetic.labels[split.val], minlength=NUM_CLASSES)
    train_counts = np.bincount(synthetic.labels[split.train], minlength=NUM_CLASSES)
    assert np.all(val_counts > 0), val_counts
    assert np.all(train_counts > 0), train_counts
    none_share = val_counts[DefectClass.NONE] / (val_counts + train_counts)[DefectClass.NONE]
    assert none_share == pytest.approx(0.1, abs=0.02)


def test_official_split_keeps_a_single_lot_class_in_train() -> None:
    lots = ["a"] * 5 + ["b"] * 5 + ["c"] * 5 + ["d"] * 5 + ["t"] * 3
    labels = [0] * 5 + [0, 0, 0, 0, DefectClass.DONUT] + [0] * 5 + [0] * 5 + [0, 1, 2]
    ds = _dataset(lots, ["Training"] * 20 + ["Test"] * 3, labels)
    for seed in range(5):
        split = official_split(ds, val_fraction=0.25, seed=seed)
        assert "b" in _lots(ds, split.train)
        assert len(split.val) == 5


def test_official_split_puts_a_rare_class_in_val_when_it_can() -> None:
    # Scratch occurs once in each of two lots: its 10 % target is 0.2 wafers, yet val gets one.
    lots = [f"l{i}" for i in range(40) for _ in range(5)]
    labels = np.zeros(200, dtype=np.int64)
    labels[[3, 57]] = DefectClass.SCRATCH
    ds = _dataset(lots, ["Training"] * 200, labels)
    for seed in range(5):
        split = official_split(ds, val_fraction=0.1, seed=seed)
        assert DefectClass.SCRATCH in ds.labels[split.val]
        assert DefectClass.SCRATCH in ds.labels[split.train]


def test_official_split_drops_training_rows_of_a_lot_that_is_also_in_test() -> None:
    lots = ["a", "a", "b", "b", "c", "c", "b"]
    splits = ["Training"] * 6 + ["Test"]
    ds = _dataset(lots, splits, [0] * 7)
    split = official_split(ds, val_fraction=0.3)
    assert "b" not in _lots(ds, np.concatenate([split.train, split.val]))
    assert split.test.tolist() == [6]


def test_official_split_without_val(synthetic: WaferDataset) -> None:
    split = official_split(synthetic, val_fraction=0.0)
    assert len(split.val) == 0


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_official_split_rejects_bad_fractions(synthetic: WaferDataset, fraction: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        official_split(synthetic, val_fraction=fraction)


def test_split_arrays_are_sorted_read_only_int64() -> None:
    split = Split(train=np.array([3, 1]), val=np.array([2]), test=np.array([], dtype=np.int64))
    assert split.train.tolist() == [1, 3]
    assert split.train.dtype == np.int64 and split.test.dtype == np.int64
    with pytest.raises(ValueError, match="read-only"):
        split.train[0] = 9


# production_split -------------------------------------------------------------------------


def test_production_split_tests_on_test_lots_it_never_trains_or_validates_on(
    synthetic: WaferDataset,
) -> None:
    split = production_split(synthetic, val_fraction=0.3, seed=2)
    _assert_disjoint(split)
    official = official_split(synthetic)
    test_lots = _lots(synthetic, official.test)
    assert _lots(synthetic, split.test) < test_lots  # a part of the Test lots
    assert _lots(synthetic, split.val) < test_lots  # validation is reviewed Test lots only
    for a, b in ((split.train, split.val), (split.train, split.test), (split.val, split.test)):
        assert not _lots(synthetic, a) & _lots(synthetic, b)
    # Every Training row official_split uses trains here, with the reviewed Test lots.
    training = np.concatenate([official.train, official.val])
    assert set(training.tolist()) <= set(split.train.tolist())
    reviewed = _lots(synthetic, split.train) & test_lots
    assert reviewed and _lots(synthetic, split.val) | reviewed | _lots(synthetic, split.test) == (
        test_lots
    )
    n_test = len(official.test)
    n_reviewed = n_test - len(split.test)
    assert abs(n_reviewed - REVIEWED_FRACTION * n_test) < 0.1 * n_test
    assert abs(len(split.val) - 0.3 * n_reviewed) < 0.1 * n_reviewed


def test_production_split_is_deterministic_by_seed(synthetic: WaferDataset) -> None:
    a, b = production_split(synthetic, seed=3), production_split(synthetic, seed=3)
    assert np.array_equal(a.test, b.test) and np.array_equal(a.val, b.val)
    assert not np.array_equal(a.test, production_split(synthetic, seed=4).test)


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_production_split_rejects_bad_fractions(synthetic: WaferDataset, fraction: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        production_split(synthetic, val_fraction=fraction)


def test_protocol_split_names_each_protocol(synthetic: WaferDataset) -> None:
    assert PROTOCOLS == ("official", "production", "random")
    for protocol, expected in (
        ("official", official_split(synthetic, 0.2, 1)),
        ("production", production_split(synthetic, 0.2, 1)),
        ("random", stratified_split(synthetic.labels, (0.6, 0.2, 0.2), 1)),
    ):
        got = protocol_split(synthetic, protocol, 0.2, 1)
        assert all(np.array_equal(getattr(got, p), getattr(expected, p)) for p in ("val", "test"))
    with pytest.raises(ValueError, match="protocol must be one of"):
        protocol_split(synthetic, "lots", 0.2, 1)


# stratified_split -------------------------------------------------------------------------


def _labels(seed: int = 1) -> npt.NDArray[np.int64]:
    rng = np.random.default_rng(seed)
    labels = rng.choice(NUM_CLASSES, size=3000, p=CLASS_MIX).astype(np.int64)
    labels[:100] = UNLABELLED
    labels[100:103] = DefectClass.NEAR_FULL  # make sure the rarest class is tiny
    labels[103:] = np.where(labels[103:] == DefectClass.NEAR_FULL, 0, labels[103:])
    return labels


def test_stratified_split_is_deterministic_by_seed() -> None:
    labels = _labels()
    a, b, c = (stratified_split(labels, seed=s) for s in (0, 0, 1))
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.train, c.train)


def test_stratified_split_covers_the_labelled_rows_once() -> None:
    labels = _labels()
    split = stratified_split(labels)
    _assert_disjoint(split)
    joined = np.sort(np.concatenate([split.train, split.val, split.test]))
    np.testing.assert_array_equal(joined, np.flatnonzero(labels != UNLABELLED))


def test_stratified_split_is_proportional_per_class_and_covers_every_class() -> None:
    labels = _labels()
    fractions = (0.7, 0.15, 0.15)
    split = stratified_split(labels, fractions)
    total = np.bincount(labels[labels != UNLABELLED], minlength=NUM_CLASSES)
    for part, share in zip((split.train, split.val, split.test), fractions, strict=True):
        counts = np.bincount(labels[part], minlength=NUM_CLASSES)
        assert np.all(counts > 0), counts
        big = total >= 20  # tiny classes get their guaranteed one row instead
        assert np.all(np.abs(counts[big] - share * total[big]) < 1.0 + 1e-9)


def test_stratified_split_gives_a_three_row_class_one_row_each() -> None:
    labels = np.array([DefectClass.LOC] * 3 + [DefectClass.NONE] * 13)
    split = stratified_split(labels)
    for part in (split.train, split.val, split.test):
        assert np.count_nonzero(labels[part] == DefectClass.LOC) == 1


def test_stratified_split_with_an_empty_part() -> None:
    split = stratified_split(_labels(), fractions=(0.8, 0.0, 0.2))
    assert len(split.val) == 0
    assert len(split.train) > 0 and len(split.test) > 0


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.7, 0.2, 0.2), (-0.1, 0.6, 0.5)])
def test_stratified_split_rejects_bad_fractions(fractions: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="fractions"):
        stratified_split(_labels(), fractions)


# The real WM-811K split (skipped without WAFER_DATA_DIR) -----------------------------------


@pytest.fixture(scope="module")
def labelled(wafer_data_dir: Path) -> WaferDataset:
    return read_npz(wafer_data_dir / "labelled.npz")


def test_real_official_split_sizes_and_lot_disjointness(labelled: WaferDataset) -> None:
    split = official_split(labelled, val_fraction=0.1, seed=0)
    assert len(split.test) == 94_918
    assert len(split.train) + len(split.val) == 54_355
    assert len(split.val) == pytest.approx(5_435, rel=0.05)
    train, val, test = (_lots(labelled, p) for p in (split.train, split.val, split.test))
    assert not train & val, "a lot is in train and val"
    assert not (train | val) & test, "a Training lot is in Test"
    for part in (split.train, split.val):
        assert np.all(np.bincount(labelled.labels[part], minlength=NUM_CLASSES) > 0)


def test_real_production_split_sizes_and_lot_disjointness(labelled: WaferDataset) -> None:
    split = production_split(labelled, val_fraction=0.3, seed=0)
    assert len(split.train) + len(split.val) + len(split.test) == 54_355 + 94_918
    assert len(split.test) == pytest.approx(94_918 * (1 - REVIEWED_FRACTION), rel=0.02)
    assert set(labelled.split[split.test]) == set(labelled.split[split.val]) == {"Test"}
    parts = [_lots(labelled, p) for p in (split.train, split.val, split.test)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    for part in (split.train, split.val, split.test):
        assert np.all(np.bincount(labelled.labels[part], minlength=NUM_CLASSES) > 0)
