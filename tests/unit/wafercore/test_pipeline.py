"""The one classify pipeline and the review decision, on the shipped model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from wafercore.pipeline import classify_maps
from wafercore.preprocessing import to_grid, to_tokens
from wafercore.review import DEFAULT_REVIEW_THRESHOLD, needs_review
from wafercore.runtime import ModelRuntime
from wafercore.shipped import shipped_model_dir
from wafercore.synthetic import generate_dataset


@pytest.fixture(scope="module")
def runtime() -> ModelRuntime:
    return ModelRuntime.load(shipped_model_dir("trm-v1.0.0"))


def _maps(count: int) -> list[np.ndarray]:
    dataset = generate_dataset(1, np.random.default_rng(11))
    return [dataset.map(i % len(dataset)) for i in range(count)]


def test_maps_of_any_size_are_classified_in_order_like_the_runtime_would(
    runtime: ModelRuntime,
) -> None:
    maps = [*_maps(3), np.full((300, 7), 1, dtype=np.uint8)]
    predictions = classify_maps(runtime, maps)
    direct = runtime.predict(to_tokens(np.stack([to_grid(m) for m in maps])))
    assert [p.prediction for p in predictions] == direct.prediction.tolist()
    assert [p.steps for p in predictions] == direct.steps.tolist()
    for p, row in zip(predictions, direct.probabilities, strict=True):
        assert p.probabilities == pytest.approx(row.tolist())
        assert p.confidence == max(p.probabilities)
        assert p.model_version == "trm-v1.0.0"
        assert p.latency_ms > 0
        assert p.flagged == (p.confidence < DEFAULT_REVIEW_THRESHOLD)


def test_the_review_threshold_decides_the_flag(runtime: ModelRuntime) -> None:
    maps = _maps(6)
    assert all(p.flagged for p in classify_maps(runtime, maps, review_threshold=1.01))
    assert not any(p.flagged for p in classify_maps(runtime, maps, review_threshold=0.0))


def test_needs_review_on_scalars_and_arrays() -> None:
    assert needs_review(0.59) and not needs_review(0.6)
    assert needs_review(np.array([0.1, 0.9]), 0.5).tolist() == [True, False]


def test_model_input_and_an_empty_call() -> None:
    maps = _maps(2)
    assert ModelRuntime.load(shipped_model_dir("trm-v1.0.0")).prepare(maps).shape == (2, 676)
    with pytest.raises(ValueError, match="at least one map"):
        classify_maps(ModelRuntime.load(shipped_model_dir("trm-v1.0.0")), [])


def test_without_a_novelty_model_nothing_is_scored(runtime: ModelRuntime) -> None:
    (p,) = classify_maps(runtime, _maps(1))
    assert (p.novelty, p.novel, p.embedding) == (None, False, None)


@pytest.mark.parametrize("size", [64, 32])  # the classifier's own input, and one of its own
def test_a_novel_map_is_scored_embedded_and_flagged_for_novelty(
    tmp_path: Path, novelty_model: Callable[..., Path], size: int
) -> None:
    maps = _maps(4)
    everything = ModelRuntime.load(novelty_model(tmp_path / "low", threshold=0.0, size=size))
    results = classify_maps(everything, maps, review_threshold=0.0)
    assert all(p.novel and p.flagged and p.reason == "novelty" for p in results)
    assert all(p.novelty is not None and p.novelty > 0 for p in results)
    assert all(p.embedding is not None and len(p.embedding) == 4 for p in results)
    scored = everything.novelty
    assert scored is not None
    expected = scored.score(scored.prepare(maps)).score
    assert [p.novelty for p in results] == pytest.approx(expected.tolist())

    nothing = ModelRuntime.load(novelty_model(tmp_path / "high", threshold=1e6, size=size))
    calm = classify_maps(nothing, maps, review_threshold=0.0)
    assert not any(p.novel or p.flagged for p in calm) and all(p.reason is None for p in calm)
    unsure = classify_maps(nothing, maps, review_threshold=1.01)
    assert all(p.flagged and p.reason == "low_confidence" for p in unsure)
