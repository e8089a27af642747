"""The novelty model beside a classifier: its manifest, a verified load, score, flag, embedding
and heatmap, and the heatmap carried back onto the wafer's die."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from wafercore.encoding import FAIL, OUT, PASS
from wafercore.model_input import InputSpec
from wafercore.novelty import (
    NOVELTY_FILE,
    NOVELTY_MANIFEST_FILE,
    NoveltyLoadError,
    NoveltyManifest,
    NoveltyRuntime,
    die_heatmap,
)
from wafercore.runtime import ModelLoadError, ModelRuntime
from wafercore.synthetic import generate_dataset

AREA = InputSpec(size=64, resample="area", channels=("fail", "die"))


def _manifest(**changes: object) -> NoveltyManifest:
    base = NoveltyManifest(
        version="vae-v1.0.0",
        onnx_sha256="0" * 64,
        input=AREA,
        latent=32,
        threshold=0.3,
        false_alarm_rate=0.01,
        extra={"best_epoch": 4},
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _maps(count: int) -> list[np.ndarray]:
    dataset = generate_dataset(1, np.random.default_rng(3))
    return [dataset.map(i % len(dataset)) for i in range(count)]


def test_the_manifest_round_trips_through_its_json() -> None:
    manifest = _manifest()
    assert NoveltyManifest.from_json(manifest.to_json()) == manifest


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"version": "cnn-v1.0.0"}, "version"),
        ({"onnx_sha256": "xyz"}, "onnx_sha256"),
        ({"input": InputSpec()}, "input"),
        ({"latent": 0}, "latent"),
        ({"threshold": float("nan")}, "threshold"),
        ({"false_alarm_rate": 1.0}, "false_alarm_rate"),
    ],
)
def test_an_invalid_manifest_names_the_field(changes: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        _manifest(**changes)


def test_unknown_or_missing_keys_are_refused() -> None:
    data = json.loads(_manifest().to_json())
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        NoveltyManifest.from_json(json.dumps({**data, "colour": "red"}))
    del data["threshold"]
    with pytest.raises(ValueError, match=r"missing keys \['threshold'\]"):
        NoveltyManifest.from_json(json.dumps(data))


def test_a_model_without_novelty_files_has_no_novelty_model(tmp_path: Path) -> None:
    assert NoveltyRuntime.load_beside(tmp_path) is None


def test_half_a_novelty_model_is_refused(
    tmp_path: Path, novelty_model: Callable[..., Path]
) -> None:
    model = novelty_model(tmp_path / "m")
    (model / NOVELTY_MANIFEST_FILE).unlink()
    with pytest.raises(NoveltyLoadError, match="without the other"):
        NoveltyRuntime.load_beside(model)


def test_a_changed_graph_is_refused_and_so_is_its_classifier(
    tmp_path: Path, novelty_model: Callable[..., Path]
) -> None:
    model = novelty_model(tmp_path / "m")
    graph = model / NOVELTY_FILE
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(NoveltyLoadError, match="sha256"):
        NoveltyRuntime.load(model)
    with pytest.raises(ModelLoadError, match="sha256"):
        ModelRuntime.load(model)


def test_the_classifier_loads_its_novelty_model(
    tmp_path: Path, novelty_model: Callable[..., Path]
) -> None:
    runtime = ModelRuntime.load(novelty_model(tmp_path / "m", threshold=0.25))
    assert runtime.novelty is not None
    assert runtime.novelty.manifest.version == "vae-v0.0.1"
    assert runtime.novelty.manifest.threshold == 0.25


def test_score_flag_embedding_and_heatmap_agree(
    tmp_path: Path, novelty_model: Callable[..., Path]
) -> None:
    folder = novelty_model(tmp_path / "m")
    model = NoveltyRuntime.load(folder)
    inputs = model.prepare(_maps(5))
    scored = model.score(inputs)
    with_heatmap, heatmap = model.score_with_heatmap(inputs)
    np.testing.assert_array_equal(with_heatmap.score, scored.score)
    assert scored.score.shape == (5,) and scored.embedding.shape == (5, 4)
    assert heatmap.shape == (5, 64, 64)
    # The score is the heatmap's mean over the wafer's die; nothing off-wafer counts.
    die = inputs[:, 1]
    np.testing.assert_allclose(
        scored.score, heatmap.sum(axis=(1, 2)) / die.sum(axis=(1, 2)), rtol=1e-4
    )
    assert np.all(heatmap[die == 0] == 0)
    # Novel means above the manifest's threshold; the same map always scores the same.
    threshold = float(np.median(scored.score))
    manifest = replace(model.manifest, threshold=threshold)
    (folder / NOVELTY_MANIFEST_FILE).write_text(manifest.to_json())
    again = NoveltyRuntime.load(folder).score(inputs)
    assert again.novel.tolist() == (scored.score > threshold).tolist()
    np.testing.assert_array_equal(again.score, scored.score)


def test_inputs_of_the_wrong_shape_are_refused(
    tmp_path: Path, novelty_model: Callable[..., Path]
) -> None:
    model = NoveltyRuntime.load(novelty_model(tmp_path / "m"))
    with pytest.raises(ValueError, match="shape"):
        model.score(np.zeros((1, 2, 32, 32), dtype=np.float32))


def test_the_die_heatmap_puts_each_cell_error_on_the_die_under_it() -> None:
    wafer = np.array([[OUT, PASS], [FAIL, PASS]], dtype=np.uint8)
    # A 4x4 grid over a 2x2 map: each die covers 2x2 cells; die centres fall in cells 1 and 3.
    cells = np.zeros((4, 4), dtype=np.float32)
    cells[1, 3], cells[3, 1], cells[3, 3] = 0.2, 0.9, 0.1
    die = np.ones((4, 4), dtype=np.float32)
    die[3, 3] = 0.5  # half a die there: the per-die error is the cell's divided by 0.5
    values = die_heatmap(wafer, cells, die)
    assert np.isnan(values[0, 0])  # outside the wafer
    assert values[0, 1] == pytest.approx(0.2)
    assert values[1, 0] == pytest.approx(0.9)
    assert values[1, 1] == pytest.approx(0.2)
