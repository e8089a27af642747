"""Spatial features: the brief's checks, edge cases, and a cell-by-cell reference."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from wafercore.encoding import FAIL, OUT, PASS
from wafercore.features import (
    ANGULAR_SECTORS,
    FEATURE_NAMES,
    RADIAL_BINS,
    SpatialFeatures,
    spatial_features,
)

Grid = npt.NDArray[np.uint8]


def round_grid(size: int = 26, radius: float = 13.0) -> Grid:
    """A (size, size) all-pass wafer: cells whose centre is within ``radius`` of the middle."""
    centre = (size - 1) / 2
    r, c = np.mgrid[0:size, 0:size]
    inside = np.hypot(r - centre, c - centre) <= radius
    return np.where(inside, PASS, OUT).astype(np.uint8)


def reference(grid: Grid) -> dict[str, Any]:
    """The brief's definitions, one cell at a time, in exact integer arithmetic.

    Coordinates are scaled by the number of in-wafer die so the centroid is an integer point.
    """
    h, w = grid.shape
    cells = [(r, c) for r in range(h) for c in range(w) if grid[r, c] != OUT]
    fails = [(r, c) for r, c in cells if grid[r, c] == FAIL]
    zeros = {
        "defect_ratio": 0.0,
        "radial_profile": np.zeros(RADIAL_BINS),
        "angular_profile": np.zeros(ANGULAR_SECTORS),
        "centroid_distance": 0.0,
        "spatial_entropy": 0.0,
    }
    if not cells:
        return zeros
    n = len(cells)
    sr, sc = sum(r for r, _ in cells), sum(c for _, c in cells)

    def offset(r: int, c: int) -> tuple[int, int]:
        return sr - r * n, c * n - sc  # (up, right), times n

    d2max = max(y * y + x * x for y, x in (offset(r, c) for r, c in cells))
    radial_n, radial_f = [0] * RADIAL_BINS, [0] * RADIAL_BINS
    sector_n, sector_f = [0] * ANGULAR_SECTORS, [0] * ANGULAR_SECTORS
    for r, c in cells:
        y, x = offset(r, c)
        d2 = y * y + x * x
        k = 0
        while d2 and k + 1 < RADIAL_BINS and (k + 1) ** 2 * d2max <= RADIAL_BINS**2 * d2:
            k += 1
        radial_n[k] += 1
        radial_f[k] += grid[r, c] == FAIL
        if (y, x) == (0, 0):
            continue  # the centre die has no direction
        # Half-open 45-degree sectors [45k, 45k + 45), written out one by one.
        sector = [
            y >= 0 and y < x,
            x > 0 and y >= x,
            x <= 0 and y > -x,
            y > 0 and y <= -x,
            y <= 0 and y > x,
            x < 0 and y <= x,
            x >= 0 and y < -x,
            y < 0 and y >= -x,
        ]
        assert sum(sector) == 1
        s = sector.index(True)
        sector_n[s] += 1
        sector_f[s] += grid[r, c] == FAIL

    def rates(f: list[int], t: list[int]) -> npt.NDArray[np.float64]:
        return np.array([a / b if b else 0.0 for a, b in zip(f, t, strict=True)])

    centroid = 0.0
    if fails and d2max:
        fy = sum(offset(r, c)[0] for r, c in fails) / len(fails)
        fx = sum(offset(r, c)[1] for r, c in fails) / len(fails)
        centroid = math.hypot(fy, fx) / math.sqrt(d2max)
    blocks: dict[tuple[int, int], list[int]] = {}
    for r, c in cells:
        entry = blocks.setdefault((r // 4, c // 4), [0, 0])
        entry[0] += 1
        entry[1] += grid[r, c] == FAIL
    block_rates = [f / t for t, f in blocks.values()]
    total = sum(block_rates)
    entropy = 0.0
    if total > 0 and len(blocks) > 1:
        ps = [v / total for v in block_rates if v > 0]
        entropy = -sum(p * math.log(p) for p in ps) / math.log(len(blocks))
    return {
        "defect_ratio": len(fails) / n,
        "radial_profile": rates(radial_f, radial_n),
        "angular_profile": rates(sector_f, sector_n),
        "centroid_distance": centroid,
        "spatial_entropy": entropy,
    }


def assert_matches(features: SpatialFeatures, i: int, expected: dict[str, Any]) -> None:
    got = features.for_map(i)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-9, atol=1e-12, err_msg=key)


@st.composite
def wafer_grids(draw: st.DrawFn, max_side: int = 26) -> Grid:
    """Any grid of 0/1/2 values, usually with a round wafer in it."""
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    if draw(st.booleans()):
        return draw(arrays(np.uint8, (h, w), elements=st.integers(0, 2)))
    r, c = np.mgrid[0:h, 0:w]
    radius = draw(st.floats(0.3, 1.2))
    inside = np.hypot((r - (h - 1) / 2) / (h / 2), (c - (w - 1) / 2) / (w / 2)) <= radius
    fails = draw(arrays(np.bool_, (h, w)))
    return np.where(inside, fails.astype(np.uint8), OUT).astype(np.uint8)


def test_brief_verification_example() -> None:
    test_map = np.full((26, 26), 0)
    test_map[:3, :] = 2
    test_map[-3:, :] = 2
    test_map[11:15, 11:15] = 1

    features = spatial_features(test_map).for_map(0)

    assert features["radial_profile"].shape == (13,)
    assert features["angular_profile"].shape == (8,)
    assert features["centroid_distance"] < 0.3
    assert features["defect_ratio"] == pytest.approx(16 / (20 * 26))


def test_edge_ring_peaks_in_outer_bins() -> None:
    grid = round_grid()
    ring = (grid != OUT) & (round_grid(radius=10.5) == OUT)
    grid[ring] = FAIL

    profile = spatial_features(grid).radial_profile[0]

    assert profile.argmax() >= RADIAL_BINS - 3
    assert profile[: RADIAL_BINS // 2].max() == 0.0
    assert spatial_features(grid).centroid_distance[0] < 0.05


def test_random_sprinkle_is_more_spread_out_than_a_scratch() -> None:
    rng = np.random.default_rng(7)
    sprinkle = round_grid()
    sprinkle[(sprinkle == PASS) & (rng.random(sprinkle.shape) < 0.1)] = FAIL
    scratch = round_grid()
    for i in range(5, 21):  # a diagonal line
        scratch[i, i] = FAIL

    entropy = spatial_features(np.stack([sprinkle, scratch])).spatial_entropy

    assert entropy[0] > entropy[1] + 0.1
    assert entropy[0] > 0.85


def test_all_pass_all_fail_and_no_wafer_are_finite() -> None:
    all_pass = round_grid()
    all_fail = np.where(all_pass == OUT, OUT, FAIL).astype(np.uint8)
    no_wafer = np.full((26, 26), OUT, np.uint8)
    single_die = no_wafer.copy()
    single_die[5, 7] = FAIL

    features = spatial_features(np.stack([all_pass, all_fail, no_wafer, single_die]))
    matrix = features.matrix()

    assert np.isfinite(matrix).all()
    np.testing.assert_array_equal(matrix[0], 0.0)
    np.testing.assert_array_equal(matrix[2], 0.0)
    assert features.defect_ratio[1] == 1.0
    np.testing.assert_array_equal(features.radial_profile[1], 1.0)
    np.testing.assert_array_equal(features.angular_profile[1], 1.0)
    assert features.centroid_distance[1] == pytest.approx(0.0, abs=1e-12)
    assert features.spatial_entropy[1] == pytest.approx(1.0)
    assert features.defect_ratio[3] == 1.0  # one die, failing: no radius, no direction
    assert features.centroid_distance[3] == 0.0


def test_matrix_columns_follow_feature_names() -> None:
    grids = np.stack([round_grid(), round_grid()])
    grids[1, 2:6, 10:16] = FAIL
    features = spatial_features(grids)
    matrix = features.matrix()

    assert len(FEATURE_NAMES) == 24 == len(set(FEATURE_NAMES))
    assert matrix.shape == (2, 24)
    assert len(features) == 2
    column = {name: matrix[:, i] for i, name in enumerate(FEATURE_NAMES)}
    np.testing.assert_array_equal(column["defect_ratio"], features.defect_ratio)
    np.testing.assert_array_equal(column["radial_00"], features.radial_profile[:, 0])
    np.testing.assert_array_equal(column["angular_7"], features.angular_profile[:, 7])
    np.testing.assert_array_equal(column["spatial_entropy"], features.spatial_entropy)


def test_empty_batch() -> None:
    features = spatial_features(np.zeros((0, 26, 26), np.uint8))

    assert features.matrix().shape == (0, 24)
    assert features.radial_profile.shape == (0, RADIAL_BINS)


@pytest.mark.parametrize(
    "bad",
    [
        np.full((2, 26, 26), 3, np.uint8),
        np.zeros((2, 2, 26, 26), np.uint8),
        np.zeros((26, 26), np.float64),
        np.full((1, 4, 4), -1, np.int64),
    ],
)
def test_rejects_invalid_grids(bad: npt.NDArray[np.generic]) -> None:
    with pytest.raises(ValueError):
        spatial_features(bad)  # type: ignore[arg-type]


def test_batch_equals_per_map_and_reference() -> None:
    # Enough maps to span several internal chunks, with many different centroids.
    rng = np.random.default_rng(3)
    grids = np.repeat(round_grid()[None], 1200, axis=0)
    grids[rng.random(grids.shape) < 0.05] = OUT  # ragged outlines move the centroid
    grids[(grids == PASS) & (rng.random(grids.shape) < 0.2)] = FAIL

    batch = spatial_features(grids)

    for i in (0, 1, 511, 512, 1199):
        single = spatial_features(grids[i])
        np.testing.assert_array_equal(single.matrix()[0], batch.matrix()[i])
        assert_matches(batch, i, reference(grids[i]))


@settings(max_examples=60, deadline=None)
@given(wafer_grids())
def test_matches_the_cell_by_cell_reference(grid: Grid) -> None:
    assert_matches(spatial_features(grid), 0, reference(grid))


def test_a_wafer_centre_on_an_out_of_wafer_cell_is_not_dropped_from_a_sector() -> None:
    """Found by hypothesis: the in-wafer centroid (3, 12) is itself outside the wafer."""
    grid = np.full((6, 20), OUT, np.uint8)
    grid[0, 0] = grid[0, 16] = grid[5, 12] = grid[5, 19] = 0
    grid[5, 13] = FAIL
    features = spatial_features(grid)
    assert_matches(features, 0, reference(grid))
    assert features.angular_profile[0].max() == 0.5  # 1 fail of the 2 die in its sector


@settings(max_examples=150, deadline=None)
@given(wafer_grids(max_side=40))
def test_features_are_finite_rates(grid: Grid) -> None:
    features = spatial_features(grid)
    matrix = features.matrix()

    assert matrix.shape == (1, 24)
    assert np.isfinite(matrix).all()
    assert (matrix >= 0.0).all()
    assert (matrix <= 1.0).all()


@settings(max_examples=60, deadline=None)
@given(wafer_grids())
def test_rotation_turns_the_angular_profile_and_keeps_the_rest(grid: Grid) -> None:
    if grid.shape[0] != grid.shape[1]:
        grid = grid[: min(grid.shape), : min(grid.shape)]
    original = spatial_features(grid)
    rotated = spatial_features(np.rot90(grid))  # counter-clockwise: sectors move up by two

    np.testing.assert_array_equal(rotated.radial_profile, original.radial_profile)
    np.testing.assert_array_equal(
        rotated.angular_profile, np.roll(original.angular_profile, 2, axis=1)
    )
    np.testing.assert_allclose(rotated.centroid_distance, original.centroid_distance, atol=1e-12)
    np.testing.assert_array_equal(rotated.defect_ratio, original.defect_ratio)
