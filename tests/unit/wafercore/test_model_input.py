"""Model inputs: the declared spec, area resampling that keeps every failing die, the cache."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from wafercore.encoding import FAIL, OUT, PASS
from wafercore.model_input import (
    TOKENS_INPUT,
    InputSpec,
    area_resample,
    build_input,
    dequantize,
    overlap_weights,
    quantize,
)
from wafercore.preprocessing import preprocess

AREA = InputSpec(size=64, resample="area", channels=("fail", "die"))


def test_a_map_already_at_the_size_is_its_own_input() -> None:
    rng = np.random.default_rng(0)
    wafer = rng.integers(0, 3, size=(64, 64)).astype(np.uint8)
    (out,) = area_resample(wafer[None], 64)
    assert np.array_equal(out[0], (wafer == FAIL).astype(np.float32))
    assert np.array_equal(out[1], (wafer != OUT).astype(np.float32))


def test_a_double_size_map_averages_its_two_by_two_blocks() -> None:
    wafer = np.full((128, 128), PASS, dtype=np.uint8)
    wafer[0, 0] = FAIL  # one fail among the four die of cell (0, 0)
    wafer[2:4, 2:4] = OUT  # cell (1, 1) is outside the wafer
    wafer[2, 0] = OUT
    wafer[3, 0] = FAIL  # cell (1, 0): one fail among its three die
    (out,) = area_resample(wafer[None], 64)
    assert out[0, 0, 0] == 0.25 and out[1, 0, 0] == 1.0
    assert out[0, 1, 1] == 0.0 and out[1, 1, 1] == 0.0
    assert out[0, 1, 0] == pytest.approx(1 / 3) and out[1, 1, 0] == 0.75


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        np.uint8,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=300),
        elements=st.integers(0, 2),
    )
)
def test_every_failing_die_and_every_die_is_kept(wafer: np.ndarray) -> None:
    (out,) = area_resample(wafer[None], 64)
    cell = wafer.size / 64**2  # source cells per target cell
    die = out[1] * cell
    assert die.sum() == pytest.approx(float((wafer != OUT).sum()), rel=1e-4, abs=1e-3)
    assert (out[0] * die).sum() == pytest.approx(float((wafer == FAIL).sum()), rel=1e-4, abs=1e-3)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_overlap_weights_split_every_source_cell_exactly_once() -> None:
    for source, target in ((26, 64), (200, 64), (64, 64), (7, 3)):
        weights = overlap_weights(source, target)
        assert weights.sum(axis=0) == pytest.approx(np.ones(source))
        assert weights.sum(axis=1) == pytest.approx(np.full(target, source / target))


def test_a_thin_scratch_on_a_large_map_survives_where_the_nearest_grid_drops_it() -> None:
    wafer = np.zeros((300, 300), dtype=np.uint8)
    wafer[150, 20:280] = FAIL  # a one-die scratch across the wafer
    assert (preprocess(wafer) == FAIL).sum() == 0  # the 26x26 grid misses every die of it
    (out,) = build_input([wafer], AREA)
    assert (out[0] > 0).sum() >= 40


def test_build_input_handles_mixed_sizes_in_order_and_the_legacy_tokens() -> None:
    rng = np.random.default_rng(1)
    maps = [
        rng.integers(0, 3, size=shape).astype(np.uint8) for shape in ((30, 40), (64, 64), (30, 40))
    ]
    batch = build_input(maps, AREA)
    assert batch.shape == (3, 2, 64, 64) and batch.dtype == np.float32
    for i, wafer in enumerate(maps):
        assert np.array_equal(batch[i], area_resample(wafer[None], 64)[0])
    tokens = build_input(maps, TOKENS_INPUT)
    assert tokens.shape == (3, 676) and np.array_equal(tokens[1], preprocess(maps[1]))


def test_quantized_inputs_are_within_half_a_step() -> None:
    values = np.linspace(0, 1, 1001, dtype=np.float32)
    assert np.abs(dequantize(quantize(values)) - values).max() <= 0.5 / 255 + 1e-7


@pytest.mark.parametrize(
    "data",
    [
        {"size": 64, "resample": "area", "channels": ["die", "fail"]},
        {"size": 64, "resample": "area", "channels": []},
        {"size": 64, "resample": "bicubic", "channels": ["fail"]},
        {"size": 4, "resample": "area", "channels": ["fail"]},
        {"size": 32, "resample": "nearest"},
        {"size": 64, "resample": "area", "channels": ["fail"], "colour": 1},
    ],
)
def test_a_bad_declared_input_is_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        InputSpec.from_json(data)


def test_the_spec_round_trips_and_absent_means_tokens() -> None:
    assert InputSpec.from_json(AREA.to_json()) == AREA
    assert InputSpec.from_json(None) == TOKENS_INPUT
    assert AREA.shape == (2, 64, 64) and TOKENS_INPUT.shape == (676,)
