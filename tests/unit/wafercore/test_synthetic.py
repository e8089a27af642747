"""Synthetic wafer maps: round outlines at any size, the nine patterns, and separability."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from wafercore.classes import CLASS_NAMES, NUM_CLASSES, DefectClass
from wafercore.encoding import FAIL, OUT
from wafercore.features import spatial_features
from wafercore.preprocessing import dataset_to_grids, to_grid
from wafercore.synthetic import generate_dataset, generate_map, round_wafer_mask

SIZES = [(15, 15), (26, 26), (40, 25), (25, 61), (200, 180)]


def normalised_radius(rows: int, cols: int) -> npt.NDArray[np.float64]:
    """(rows, cols) distance of each cell centre from the middle, 1 on the inscribed ellipse."""
    r, c = np.mgrid[0:rows, 0:cols]
    radius: npt.NDArray[np.float64] = np.hypot(
        (r + 0.5 - rows / 2) / (rows / 2), (c + 0.5 - cols / 2) / (cols / 2)
    )
    return radius


@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("defect", list(DefectClass))
def test_every_class_draws_a_round_wafer_at_any_size(
    defect: DefectClass, shape: tuple[int, int]
) -> None:
    rng = np.random.default_rng(int(defect) * 100 + shape[0])
    for _ in range(3):
        wafer = generate_map(defect, rng, *shape)

        assert wafer.shape == shape
        assert wafer.dtype == np.uint8
        assert set(np.unique(wafer)) <= {0, 1, 2}
        rho = normalised_radius(*shape)
        assert (wafer[rho > 1.0] == OUT).all()  # outside the inscribed circle/ellipse
        assert (wafer[rho <= 0.9] != OUT).all()  # a flat cuts at most 8% of the radius
        rows, cols = shape
        assert wafer[0, 0] == wafer[0, -1] == wafer[-1, 0] == wafer[-1, -1] == OUT
        assert wafer[rows // 2, cols // 2] != OUT
        # Each row of a round wafer is one unbroken run of die.
        for row in wafer:
            on = np.flatnonzero(row != OUT)
            assert on.size == 0 or on[-1] - on[0] + 1 == on.size


def fail_rate(maps: list[npt.NDArray[np.uint8]], region: npt.NDArray[np.bool_]) -> float:
    fails = sum(np.count_nonzero((m == FAIL) & region) for m in maps)
    die = sum(np.count_nonzero((m != OUT) & region) for m in maps)
    return fails / die


@pytest.mark.parametrize("shape", [(26, 26), (60, 90)])
def test_patterns_put_fails_where_their_class_says(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(42)
    rho = normalised_radius(*shape)
    centre, middle, edge = rho < 0.15, (rho > 0.3) & (rho < 0.6), rho > 0.9

    def maps(defect: DefectClass) -> list[npt.NDArray[np.uint8]]:
        return [generate_map(defect, rng, *shape) for _ in range(60)]

    none, near_full, random = (
        maps(DefectClass.NONE),
        maps(DefectClass.NEAR_FULL),
        maps(DefectClass.RANDOM),
    )
    everywhere = np.ones(shape, bool)
    assert fail_rate(none, everywhere) < 0.1
    assert 0.12 < fail_rate(random, everywhere) < 0.5
    assert fail_rate(near_full, everywhere) > 0.7
    center = maps(DefectClass.CENTER)
    assert fail_rate(center, centre) > 0.4 > 0.1 > fail_rate(center, edge)
    donut = maps(DefectClass.DONUT)
    assert fail_rate(donut, middle) > 2 * fail_rate(donut, centre)
    ring = maps(DefectClass.EDGE_RING)
    assert fail_rate(ring, edge) > 0.4 > 0.1 > fail_rate(ring, middle)
    for sparse in (DefectClass.EDGE_LOC, DefectClass.LOC, DefectClass.SCRATCH):
        assert 0.005 < fail_rate(maps(sparse), everywhere) < 0.25


def test_edge_loc_is_one_sided_and_loc_stays_off_the_edge() -> None:
    rng = np.random.default_rng(8)
    shape = (40, 40)
    edge = normalised_radius(*shape) > 0.85
    grids = [generate_map(DefectClass.EDGE_LOC, rng, *shape) for _ in range(50)]
    features = spatial_features(np.stack([to_grid(g) for g in grids]))
    assert np.median(features.centroid_distance) > 0.5
    locs = [generate_map(DefectClass.LOC, rng, *shape) for _ in range(50)]
    assert fail_rate(locs, edge) < fail_rate(grids, edge) / 3


def test_round_wafer_mask_with_a_flat() -> None:
    plain = round_wafer_mask(30, 30)
    flat = round_wafer_mask(30, 30, flat_side=3, flat_depth=0.1)

    assert (flat <= plain).all()
    assert not flat[-1].any() and plain[-1].any()  # bottom row cut off
    np.testing.assert_array_equal(flat[:15], plain[:15])


def test_generate_map_rejects_tiny_maps() -> None:
    with pytest.raises(ValueError, match="at least"):
        generate_map(DefectClass.CENTER, np.random.default_rng(0), 3, 20)


def test_dataset_is_labelled_balanced_in_lots_and_deterministic() -> None:
    first = generate_dataset(30, np.random.default_rng(5), sizes=(15, 80))
    again = generate_dataset(30, np.random.default_rng(5), sizes=(15, 80))
    other = generate_dataset(30, np.random.default_rng(6), sizes=(15, 80))

    assert len(first) == 30 * NUM_CLASSES
    np.testing.assert_array_equal(np.bincount(first.labels), [30] * NUM_CLASSES)
    assert first.lot[0] == "SYN-0" and first.lot[25] == "SYN-1" and first.lot[-1] == "SYN-10"
    np.testing.assert_array_equal(first.wafer_index[:26], [*range(1, 26), 1])
    assert first.shapes.min() >= 15 and first.shapes.max() <= 80
    assert (first.shapes[:, 0] != first.shapes[:, 1]).mean() > 0.8  # non-square pitches
    assert first.source == "synthetic"
    for name in ("values", "offsets", "shapes", "labels", "lot", "die_size"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.labels, other.labels)


def test_dataset_sizes_as_choices_or_callable_and_class_subset() -> None:
    chosen = generate_dataset(
        5,
        np.random.default_rng(1),
        sizes=[(26, 26), (30, 45)],
        classes=[DefectClass.SCRATCH, DefectClass.DONUT],
    )
    assert set(map(tuple, chosen.shapes.tolist())) <= {(26, 26), (30, 45)}
    assert set(chosen.labels.tolist()) == {DefectClass.SCRATCH, DefectClass.DONUT}

    fixed = generate_dataset(2, np.random.default_rng(1), sizes=lambda rng: (33, 21))
    assert (fixed.shapes == [33, 21]).all()

    bad_sizes: list[Any] = [(80, 15), (2, 10), [(3, 30)]]
    for bad in bad_sizes:
        with pytest.raises(ValueError):
            generate_dataset(1, np.random.default_rng(0), sizes=bad)


def features_and_labels(seed: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    dataset = generate_dataset(200, np.random.default_rng(seed), sizes=(15, 120))
    return spatial_features(dataset_to_grids(dataset)).matrix(), dataset.labels


def test_classes_are_separable_by_spatial_features_across_seeds() -> None:
    """A nearest-centroid classifier on standardised features, trained on one seed's maps of
    random sizes and tested on another seed's, does far better than chance (1/9) on every
    class: the patterns carry the label, not one statistic or the map size."""
    train_x, train_y = features_and_labels(101)
    test_x, test_y = features_and_labels(202)
    mean, std = train_x.mean(axis=0), train_x.std(axis=0)
    std[std == 0] = 1.0
    train_z, test_z = (train_x - mean) / std, (test_x - mean) / std
    centroids = np.stack([train_z[train_y == k].mean(axis=0) for k in range(NUM_CLASSES)])

    distance = ((test_z[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)  # (N, 9)
    predicted = distance.argmin(axis=1)

    accuracy = (predicted == test_y).mean()
    recall = {CLASS_NAMES[k]: (predicted[test_y == k] == k).mean() for k in range(NUM_CLASSES)}
    assert accuracy >= 0.65, (accuracy, recall)
    assert min(recall.values()) >= 0.2, recall  # chance is 0.11
