"""The second look: the rotations (and their mirror images) averaged, for doubtful wafers only."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from wafercore.model_input import TOKENS_INPUT, InputSpec
from wafercore.runtime import MANIFEST_FILE, ModelRuntime
from wafercore.second_look import VIEWS, dihedral, second_look
from wafercore.shipped import shipped_model_dir
from wafercore.synthetic import generate_dataset


@pytest.fixture(scope="module")
def runtime() -> ModelRuntime:
    return ModelRuntime.load(shipped_model_dir("trm-v1.0.0"))


def test_the_eight_views_are_the_rotations_and_flips() -> None:
    area = InputSpec(size=8, resample="area", channels=("fail",))
    x = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8)
    views = [dihedral(x, area, k) for k in range(VIEWS)]
    assert np.array_equal(views[0], x)
    assert len({v.tobytes() for v in views}) == VIEWS  # an asymmetric input: all distinct
    assert np.array_equal(views[1][0, 0], np.rot90(x[0, 0]))
    assert np.array_equal(views[4][0, 0], x[0, 0][:, ::-1])
    tokens = np.arange(676).reshape(1, 676) % 3
    assert np.array_equal(dihedral(tokens, TOKENS_INPUT, 2), tokens[:, ::-1])  # a half turn
    with pytest.raises(ValueError):
        dihedral(x, area, 8)


def test_only_doubtful_wafers_are_looked_at_and_their_views_averaged(
    runtime: ModelRuntime,
) -> None:
    dataset = generate_dataset(2, np.random.default_rng(7))
    inputs = runtime.prepare([dataset.map(i) for i in range(len(dataset))])
    first = runtime.predict(inputs)
    threshold = float(np.median(first.confidence))
    looked = second_look(runtime, inputs, first, threshold)
    assert looked.looked.tolist() == (first.confidence < threshold).tolist()
    assert (looked.extra_steps[~looked.looked] == 0).all()
    assert (looked.extra_steps[looked.looked] >= VIEWS - 1).all()
    row = int(np.flatnonzero(looked.looked)[0])
    views = [runtime.predict(dihedral(inputs[row : row + 1], TOKENS_INPUT, k)) for k in range(8)]
    expected = np.mean([v.probabilities[0] for v in views], axis=0)
    assert looked.result.probabilities[row] == pytest.approx(expected, abs=1e-6)
    assert looked.result.prediction[row] == expected.argmax()
    sure = np.flatnonzero(~looked.looked)
    assert np.array_equal(looked.result.probabilities[sure], first.probabilities[sure])
    assert np.array_equal(looked.result.steps, first.steps)


def test_the_manifest_threshold_decides_by_default(runtime: ModelRuntime, tmp_path: Path) -> None:
    inputs = runtime.prepare([generate_dataset(1, np.random.default_rng(8)).map(0)])
    first = runtime.predict(inputs)
    assert not second_look(runtime, inputs, first).looked.any()  # tta_threshold 0: never
    eager_dir = tmp_path / "eager"
    shutil.copytree(shipped_model_dir("trm-v1.0.0"), eager_dir)
    manifest = dataclasses.replace(runtime.manifest, tta_threshold=1.0)
    (eager_dir / MANIFEST_FILE).write_text(manifest.to_json())
    eager = ModelRuntime.load(eager_dir)
    assert eager.manifest.tta_threshold == 1.0
    assert second_look(eager, inputs, eager.predict(inputs)).looked.all()


def test_the_other_seven_views_go_through_the_model_in_one_batch(
    runtime: ModelRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = generate_dataset(2, np.random.default_rng(9))
    inputs = runtime.prepare([dataset.map(i) for i in range(len(dataset))])
    first = runtime.predict(inputs)
    batches: list[int] = []
    predict = runtime.predict

    def counting(x: np.ndarray) -> object:
        batches.append(len(x))
        return predict(x)

    monkeypatch.setattr(runtime, "predict", counting)
    looked = second_look(runtime, inputs, first, 1.01)  # every wafer is doubtful
    assert looked.looked.all()
    assert batches == [(VIEWS - 1) * len(inputs)]


def test_four_views_average_the_rotations_only(runtime: ModelRuntime) -> None:
    dataset = generate_dataset(1, np.random.default_rng(10))
    inputs = runtime.prepare([dataset.map(i) for i in range(len(dataset))])
    first = runtime.predict(inputs)
    looked = second_look(runtime, inputs, first, 1.01, views=4)
    assert looked.looked.all()
    rotations = [runtime.predict(dihedral(inputs, TOKENS_INPUT, k)) for k in range(4)]
    expected = np.mean([v.probabilities for v in rotations], axis=0)
    assert looked.result.probabilities == pytest.approx(expected, abs=1e-6)
    assert looked.extra_steps.tolist() == np.sum([v.steps for v in rotations[1:]], axis=0).tolist()
    eight = second_look(runtime, inputs, first, 1.01, views=8).result.probabilities
    assert not np.allclose(eight, looked.result.probabilities)  # the mirror images count there
    with pytest.raises(ValueError, match="views"):
        second_look(runtime, inputs, first, 1.01, views=3)


def test_the_manifest_says_how_many_views(runtime: ModelRuntime, tmp_path: Path) -> None:
    inputs = runtime.prepare([generate_dataset(1, np.random.default_rng(11)).map(0)])
    four_dir = tmp_path / "four"
    shutil.copytree(shipped_model_dir("trm-v1.0.0"), four_dir)
    manifest = dataclasses.replace(runtime.manifest, tta_threshold=1.0, tta_views=4)
    (four_dir / MANIFEST_FILE).write_text(manifest.to_json())
    four = ModelRuntime.load(four_dir)
    assert four.manifest.tta_views == 4
    first = four.predict(inputs)
    assert second_look(four, inputs, first).result.probabilities == pytest.approx(
        second_look(four, inputs, first, views=4).result.probabilities
    )
