import numpy as np

from cloud.training.config import AugmentConfig, OptimConfig
from cloud.training.data import (
    BatchSampler,
    Part,
    class_weights,
    resample_to_grid,
    sampling_weights,
)
from wafercore.encoding import OUT
from wafercore.model_input import InputSpec
from wafercore.synthetic import generate_dataset


def test_sampling_balances_classes_and_map_sizes() -> None:
    # Class 0: 90 small maps and 10 large; class 1: 10 small maps.
    labels = np.array([0] * 100 + [1] * 10)
    shapes = np.array([[25, 27]] * 90 + [[52, 59]] * 10 + [[25, 27]] * 10, dtype=np.int32)
    balanced = sampling_weights(labels, shapes, "balanced")
    assert np.isclose(balanced.sum(), 1)
    assert np.isclose(balanced[labels == 0].sum(), 0.5)
    # Within class 0 both size buckets get the same share.
    assert np.isclose(balanced[:90].sum(), balanced[90:100].sum())
    natural = sampling_weights(labels, shapes, "natural")
    assert np.isclose(natural[labels == 0].sum(), 100 / 110)
    sqrt = sampling_weights(labels, shapes, "sqrt")
    assert np.isclose(sqrt[labels == 0].sum(), 10 / (10 + np.sqrt(10)))
    # Without size balancing every row of a class is equally likely, whatever its size.
    plain = sampling_weights(labels, shapes, "balanced", size_balanced=False)
    assert np.isclose(plain[labels == 0].sum(), 0.5)
    assert np.isclose(plain[0], plain[95])


def test_reviewed_production_wafers_are_drawn_reviewed_weight_times_as_often() -> None:
    raw = generate_dataset(4, np.random.default_rng(0), sizes=(20, 30))
    raw.split = np.where(np.arange(len(raw)) % 3 == 0, "Test", "Training")
    natural = OptimConfig(sampling="natural", size_balanced=False)
    assert np.allclose(BatchSampler(raw, natural, AugmentConfig(), 0).weights, 1 / len(raw))
    optim = natural.model_copy(update={"reviewed_weight": 3.0})
    weights = BatchSampler(raw, optim, AugmentConfig(), 0).weights
    reviewed = raw.split == "Test"
    assert np.isclose(weights.sum(), 1)
    assert np.allclose(weights[reviewed], 3 * weights[~reviewed][0])


def test_class_weights_have_mean_one_and_favour_rare_classes() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    for mode in ("inverse", "effective"):
        w = class_weights(labels, mode)
        assert np.isclose(w.mean(), 1)
        assert w[1] > w[0]
    assert np.allclose(class_weights(labels, "none"), 1)


def test_resolution_resampling_keeps_a_round_wafer_round() -> None:
    rows, cols = np.mgrid[:40, :50]
    wafer = np.where(((rows - 19.5) / 20) ** 2 + ((cols - 24.5) / 25) ** 2 <= 1, 0, OUT)
    wafer = wafer.astype(np.uint8)
    wafer[18:22, 22:28] = 1  # a centre blob
    for factors in ([0.6, 0.6], [1.6, 1.0], [0.8, 1.5]):
        grid = resample_to_grid(wafer, np.array(factors))
        assert grid.shape == (26, 26)
        assert grid[0, 0] == OUT and grid[13, 13] == 1
        assert set(np.unique(grid)) <= {0, 1, 2}


def test_area_batches_are_the_declared_input_of_augmented_raw_maps() -> None:
    raw = generate_dataset(4, np.random.default_rng(0), sizes=(20, 60))
    spec = InputSpec(size=32, resample="area", channels=("fail", "die"))
    sampler = BatchSampler(raw, OptimConfig(batch_size=8), AugmentConfig(), 0, spec)
    idx = sampler.epoch(0, 0)[0]
    inputs, labels = sampler.batch(idx, np.random.default_rng(1))
    assert inputs.shape == (8, 2, 32, 32) and inputs.dtype == np.float32
    assert 0.0 <= inputs.min() and inputs.max() <= 1.0
    assert labels.tolist() == raw.labels[idx].tolist()
    # Without augmentation a batch is exactly what the runtime builds from the raw maps.
    plain = AugmentConfig(flips_rotations=False, resolution_scale=None)
    exact, _ = BatchSampler(raw, OptimConfig(), plain, 0, spec).batch(idx, np.random.default_rng(1))
    assert np.array_equal(exact, Part.of(raw.subset(idx)).inputs(spec, 0, len(idx)))


def test_area_batches_without_noise_only_rotate_and_mirror() -> None:
    raw = generate_dataset(2, np.random.default_rng(0), sizes=(30, 30))
    spec = InputSpec(size=32, resample="area", channels=("fail", "die"))
    plain = AugmentConfig(noise=False, resolution_scale=None)
    sampler = BatchSampler(raw, OptimConfig(batch_size=8), plain, 0, spec)
    idx = sampler.epoch(0, 0)[0]
    inputs, _ = sampler.batch(idx, np.random.default_rng(2))
    exact = Part.of(raw.subset(idx)).inputs(spec, 0, len(idx))
    for got, want in zip(inputs, exact, strict=True):
        views = [np.rot90(want, k, axes=(1, 2)) for k in range(4)]
        views += [v[:, :, ::-1] for v in views]
        assert any(np.allclose(got, v, atol=1e-6) for v in views)  # no die changed
