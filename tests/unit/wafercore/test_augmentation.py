"""Augmentation: label-safe operations that keep the wafer outline consistent."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from wafercore.augmentation import (
    IDENTITY_PROBABILITY,
    NOISE_RATE,
    Augmentation,
    apply_augmentations,
    augment,
    augment_batch,
    draw_augmentations,
    strong_augment,
)
from wafercore.encoding import FAIL, OUT, PASS

Grid = npt.NDArray[np.uint8]

GEOMETRIC = {
    Augmentation.ROT90: lambda g: np.rot90(g, 1),
    Augmentation.ROT180: lambda g: np.rot90(g, 2),
    Augmentation.ROT270: lambda g: np.rot90(g, 3),
    Augmentation.FLIP_LR: np.fliplr,
    Augmentation.FLIP_UD: np.flipud,
}
INVERSE = {
    Augmentation.ROT90: Augmentation.ROT270,
    Augmentation.ROT180: Augmentation.ROT180,
    Augmentation.ROT270: Augmentation.ROT90,
    Augmentation.FLIP_LR: Augmentation.FLIP_LR,
    Augmentation.FLIP_UD: Augmentation.FLIP_UD,
}


@st.composite
def wafers(draw: st.DrawFn) -> Grid:
    """A 26x26 grid: a round (possibly off-centre) wafer with random fails on it."""
    radius = draw(st.floats(4.0, 14.0))
    cy, cx = draw(st.floats(11.0, 14.0)), draw(st.floats(11.0, 14.0))
    r, c = np.mgrid[0:26, 0:26]
    inside = np.hypot(r - cy, c - cx) <= radius
    fails = draw(arrays(np.bool_, (26, 26)))
    return np.where(inside, fails.astype(np.uint8), OUT).astype(np.uint8)


seeds = st.integers(0, 2**32 - 1)


def asymmetric_wafer() -> Grid:
    """A wafer that every non-identity operation changes (no symmetry, many passing die)."""
    r, c = np.mgrid[0:26, 0:26]
    grid = np.where(np.hypot(r - 12.5, c - 12.5) <= 13, PASS, OUT).astype(np.uint8)
    grid[3:6, 8:11] = FAIL
    grid[14, 4:9] = FAIL
    grid[20, 17] = FAIL
    return grid


@settings(max_examples=150, deadline=None)
@given(wafers(), seeds)
def test_augment_keeps_shape_values_and_outline_size(grid: Grid, seed: int) -> None:
    before = grid.copy()
    out = augment(grid, np.random.default_rng(seed))

    assert out.shape == (26, 26)
    assert out.dtype == grid.dtype
    assert set(np.unique(out)) <= {PASS, FAIL, OUT}
    assert np.count_nonzero(out == OUT) == np.count_nonzero(grid == OUT)
    assert np.count_nonzero(out == FAIL) >= np.count_nonzero(grid == FAIL)
    np.testing.assert_array_equal(grid, before)  # the input is not modified


@settings(max_examples=150, deadline=None)
@given(wafers(), seeds)
def test_noise_turns_only_a_few_passing_die_into_fails(grid: Grid, seed: int) -> None:
    out = apply_augmentations(grid[None], [Augmentation.NOISE], np.random.default_rng(seed))[0]

    changed = out != grid
    n_pass = np.count_nonzero(grid == PASS)
    np.testing.assert_array_equal(out == OUT, grid == OUT)
    assert (grid[changed] == PASS).all()
    assert (out[changed] == FAIL).all()
    n_changed = np.count_nonzero(changed)
    assert n_changed <= NOISE_RATE[1] * n_pass + 0.5
    assert n_changed <= NOISE_RATE[1] * np.count_nonzero(grid != OUT) + 0.5
    assert n_changed >= round(NOISE_RATE[0] * n_pass)


@settings(max_examples=100, deadline=None)
@given(wafers(), st.sampled_from(sorted(GEOMETRIC)))
def test_geometric_ops_are_exact_invertible_permutations(grid: Grid, op: Augmentation) -> None:
    rng = np.random.default_rng(0)
    out = apply_augmentations(grid[None], [op], rng)[0]

    np.testing.assert_array_equal(out, GEOMETRIC[op](grid))
    np.testing.assert_array_equal(np.sort(out, axis=None), np.sort(grid, axis=None))
    back = apply_augmentations(out[None], [INVERSE[op]], rng)[0]
    np.testing.assert_array_equal(back, grid)


def test_operation_frequencies() -> None:
    n = 200_000
    ops = draw_augmentations(n, np.random.default_rng(11))
    share = np.bincount(ops, minlength=len(Augmentation)) / n
    kind = (1 - IDENTITY_PROBABILITY) / 4

    # Standard errors are below 0.0011: a tolerance of 0.006 is more than five of them.
    assert share[Augmentation.IDENTITY] == pytest.approx(0.3, abs=0.006)
    rotations = share[[Augmentation.ROT90, Augmentation.ROT180, Augmentation.ROT270]]
    assert rotations.sum() == pytest.approx(kind, abs=0.006)
    np.testing.assert_allclose(rotations, kind / 3, atol=0.006)
    for op in (Augmentation.FLIP_LR, Augmentation.FLIP_UD, Augmentation.NOISE):
        assert share[op] == pytest.approx(kind, abs=0.006)


def test_augment_batch_leaves_about_thirty_percent_unchanged() -> None:
    grid = asymmetric_wafer()
    batch = np.repeat(grid[None], 20_000, axis=0)

    out = augment_batch(batch, np.random.default_rng(5))

    unchanged = (out == grid).all(axis=(1, 2)).mean()
    assert unchanged == pytest.approx(IDENTITY_PROBABILITY, abs=0.015)


def test_augment_batch_applies_one_known_operation_per_map() -> None:
    grid = asymmetric_wafer()
    images = [grid] + [f(grid) for f in GEOMETRIC.values()]
    batch = np.repeat(grid[None], 3_000, axis=0)

    out = augment_batch(batch, np.random.default_rng(9))

    kinds = np.zeros(len(images) + 1, dtype=int)
    for aug in out:
        match = [i for i, image in enumerate(images) if np.array_equal(aug, image)]
        if match:
            kinds[match[0]] += 1
            continue
        # Otherwise it must be noise: same outline, only pass -> fail, 1-2% of passing die.
        changed = aug != grid
        assert (aug[changed] == FAIL).all() and (grid[changed] == PASS).all()
        n_pass = np.count_nonzero(grid == PASS)
        assert round(0.01 * n_pass) <= changed.sum() <= round(0.02 * n_pass)
        kinds[-1] += 1
    assert (kinds > 0).all()  # every operation shows up


def test_same_seed_same_result_single_and_batch() -> None:
    grids = np.stack([asymmetric_wafer(), np.rot90(asymmetric_wafer())])

    first = augment_batch(grids, np.random.default_rng(1))
    again = augment_batch(grids, np.random.default_rng(1))
    single = augment(grids[0], np.random.default_rng(1))

    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(single, augment_batch(grids[:1], np.random.default_rng(1))[0])


def test_non_square_maps_are_rotated_by_180_only() -> None:
    rng = np.random.default_rng(2)
    grids = rng.integers(0, 3, size=(2_000, 20, 31)).astype(np.uint8)

    ops = draw_augmentations(len(grids), rng, square=False)
    out = augment_batch(grids, rng)

    assert out.shape == grids.shape
    assert not np.isin(ops, [Augmentation.ROT90, Augmentation.ROT270]).any()
    assert (ops == Augmentation.ROT180).mean() == pytest.approx(0.175, abs=0.03)
    with pytest.raises(ValueError, match="90 degrees"):
        apply_augmentations(grids[:1], [Augmentation.ROT90], rng)


def test_keeps_the_input_dtype_brief_example() -> None:
    # The brief's verification cell: values drawn anywhere, int64 from np.random.choice.
    test_map = np.random.default_rng(0).choice([0, 1, 2], size=(26, 26), p=[0.7, 0.2, 0.1])
    for seed in range(20):
        augmented = augment(test_map.copy(), np.random.default_rng(seed))
        assert augmented.shape == (26, 26)
        assert augmented.dtype == test_map.dtype
        assert set(np.unique(augmented)) <= {0, 1, 2}
        assert np.sum(augmented != 2) == np.sum(test_map != 2)


@pytest.mark.parametrize(
    ("grids", "ops"),
    [
        (np.zeros((26, 26), np.uint8), [0]),
        (np.zeros((2, 26, 26), np.uint8), [0]),
        (np.zeros((1, 26, 26), np.uint8), [7]),
    ],
)
def test_apply_rejects_bad_arguments(grids: Grid, ops: list[int]) -> None:
    with pytest.raises(ValueError):
        apply_augmentations(grids, ops, np.random.default_rng(0))


def test_augment_wants_one_map() -> None:
    with pytest.raises(ValueError):
        augment(np.zeros((1, 26, 26), np.uint8), np.random.default_rng(0))


def test_strong_augmentation_keeps_the_wafer_and_moves_only_some_die() -> None:
    rng = np.random.default_rng(3)
    wafer = np.full((40, 40), 2, dtype=np.uint8)
    yy, xx = np.mgrid[:40, :40]
    inside = (yy - 19.5) ** 2 + (xx - 19.5) ** 2 < 19**2
    wafer[inside] = 0
    wafer[inside & (xx < 12)] = 1  # a pattern on one side
    for _ in range(20):
        out = strong_augment(wafer, rng)
        assert out.shape == wafer.shape and out.dtype == wafer.dtype
        # The out-of-wafer mask moves with the map (symmetric here) and is never written.
        assert np.array_equal(out == 2, wafer == 2)
        fails = int((out == 1).sum())
        assert 0.75 * (wafer == 1).sum() <= fails <= (wafer == 1).sum() + 0.05 * (wafer == 0).sum()
    rect = np.zeros((10, 30), dtype=np.uint8)
    assert strong_augment(rect, rng).shape == (10, 30)
