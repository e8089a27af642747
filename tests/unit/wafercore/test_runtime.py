"""ModelRuntime: per-wafer halting, batching and the flags, on a tiny exported TRM."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wafercore.classes import NUM_CLASSES
from wafercore.encoding import TOKENS
from wafercore.model_input import TOKENS_INPUT, InputSpec
from wafercore.runtime import ModelManifest, ModelRuntime

N_SUP = 3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    from cloud.export import export_trm_dir
    from cloud.models.trm import TinyRecursiveModel, TRMConfig

    torch.manual_seed(0)
    model = TinyRecursiveModel(TRMConfig(dim=16, heads=2, patch=4, n=1, T=2, n_sup=N_SUP))
    with torch.no_grad():  # spread the untrained halting head so thresholds split the batch
        model.halt.bias.zero_()
        model.halt.weight.mul_(8.0)
    out = tmp_path_factory.mktemp("trm")
    export_trm_dir(model, out, version="trm-v0.0.1", halt_threshold=0.5, review_threshold=0.6)
    return out


@pytest.fixture(scope="module")
def runtime(model_dir: Path) -> ModelRuntime:
    return ModelRuntime.load(model_dir)


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 3, size=(40, TOKENS), dtype=np.uint8)


def test_threshold_zero_stops_every_wafer_after_one_step(
    runtime: ModelRuntime, tokens: np.ndarray
) -> None:
    result = runtime.predict(tokens, halt_threshold=0.0)
    probs, halt = runtime.predict_all_steps(tokens)
    assert result.steps.tolist() == [1] * len(tokens)
    np.testing.assert_allclose(result.probabilities, probs[0], atol=1e-5)
    np.testing.assert_allclose(result.halt, halt[0], atol=1e-5)


def test_threshold_above_one_runs_every_step(runtime: ModelRuntime, tokens: np.ndarray) -> None:
    result = runtime.predict(tokens, halt_threshold=1.01)
    probs, halt = runtime.predict_all_steps(tokens)
    assert probs.shape == (N_SUP, len(tokens), NUM_CLASSES)
    assert result.steps.tolist() == [N_SUP] * len(tokens)
    np.testing.assert_allclose(result.probabilities, probs[-1], atol=1e-5)
    np.testing.assert_allclose(result.halt, halt[-1], atol=1e-5)


def test_each_wafer_stops_at_its_first_confident_step(
    runtime: ModelRuntime, tokens: np.ndarray
) -> None:
    probs, halt = runtime.predict_all_steps(tokens)  # (S, B, 9), (S, B)
    # A threshold in the widest gap near the median: no wafer sits on the boundary.
    values = np.sort(halt[:-1].ravel())
    middle = slice(len(values) // 4, 3 * len(values) // 4)
    gap = int(np.argmax(np.diff(values)[middle])) + middle.start
    threshold = float(values[gap] + values[gap + 1]) / 2
    assert values[gap + 1] - values[gap] > 1e-4

    confident = halt >= threshold
    confident[-1] = True  # n_sup stops everything
    expected_steps = confident.argmax(axis=0) + 1
    assert len(set(expected_steps.tolist())) >= 2, "the fixture should split the batch"

    result = runtime.predict(tokens, halt_threshold=threshold)
    assert result.steps.tolist() == expected_steps.tolist()
    stopped_at = expected_steps - 1
    columns = np.arange(len(tokens))
    np.testing.assert_allclose(result.probabilities, probs[stopped_at, columns], atol=1e-5)
    np.testing.assert_allclose(result.halt, halt[stopped_at, columns], atol=1e-5)


class _CountingSession:
    """Wraps an ONNX Runtime session and records the batch size of every call."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.batches: list[int] = []

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
        self.batches.append(len(feeds["tokens"]))
        return self.session.run(names, feeds)


def test_finished_wafers_leave_the_batch(
    model_dir: Path, tokens: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = ModelRuntime.load(model_dir)
    result = runtime.predict(tokens)
    spy = _CountingSession(runtime._session)
    monkeypatch.setattr(runtime, "_session", spy)
    again = runtime.predict(tokens)
    assert again.steps.tolist() == result.steps.tolist()
    still_running = [int((result.steps >= s).sum()) for s in range(1, N_SUP + 1)]
    assert spy.batches == [n for n in still_running if n]
    assert sum(spy.batches) < N_SUP * len(tokens)


def test_outputs_are_consistent(runtime: ModelRuntime, tokens: np.ndarray) -> None:
    result = runtime.predict(tokens)
    assert result.probabilities.dtype == np.float32
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert result.prediction.tolist() == result.probabilities.argmax(axis=1).tolist()
    np.testing.assert_array_equal(result.confidence, result.probabilities.max(axis=1))
    assert result.flagged.tolist() == (result.confidence < 0.6).tolist()
    assert ((result.steps >= 1) & (result.steps <= N_SUP)).all()


def test_chunking_gives_the_same_answer(model_dir: Path, tokens: np.ndarray) -> None:
    whole = ModelRuntime.load(model_dir).predict(tokens)
    chunked_runtime = ModelRuntime.load(model_dir, chunk_size=3)
    chunked = chunked_runtime.predict(tokens)
    np.testing.assert_allclose(chunked.probabilities, whole.probabilities, atol=1e-5)
    assert chunked.steps.tolist() == whole.steps.tolist()
    np.testing.assert_allclose(
        chunked_runtime.predict_all_steps(tokens)[0],
        ModelRuntime.load(model_dir).predict_all_steps(tokens)[0],
        atol=1e-5,
    )


def test_max_steps_caps_the_steps(runtime: ModelRuntime, tokens: np.ndarray) -> None:
    probs, _ = runtime.predict_all_steps(tokens)
    result = runtime.predict(tokens, halt_threshold=1.01, max_steps=2)
    assert result.steps.tolist() == [2] * len(tokens)
    np.testing.assert_allclose(result.probabilities, probs[1], atol=1e-5)
    with pytest.raises(ValueError, match="max_steps"):
        runtime.predict(tokens, max_steps=N_SUP + 1)


def test_properties_and_empty_batch(runtime: ModelRuntime) -> None:
    assert runtime.version == "trm-v0.0.1" and runtime.n_sup == N_SUP
    assert runtime.manifest.halt_threshold == 0.5
    result = runtime.predict(np.zeros((0, TOKENS), dtype=np.uint8))
    assert result.probabilities.shape == (0, NUM_CLASSES) and result.steps.shape == (0,)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 10), np.uint8), np.full((1, TOKENS), 3), np.zeros((1, TOKENS), np.float32)],
)
def test_bad_tokens_are_refused(runtime: ModelRuntime, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="tokens"):
        runtime.predict(bad)


def test_runtime_does_not_import_torch() -> None:
    code = "import sys, wafercore.runtime; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


AREA = InputSpec(size=16, resample="area", channels=("fail", "die"))


@pytest.fixture(scope="module")
def area_model_dir(
    tmp_path_factory: pytest.TempPathFactory, area_classifier: Callable[..., Path]
) -> Path:
    pytest.importorskip("torch")
    return area_classifier(tmp_path_factory.mktemp("area"))


def test_a_model_that_declares_an_area_input_is_fed_it(area_model_dir: Path) -> None:
    runtime = ModelRuntime.load(area_model_dir)
    assert runtime.manifest.input == AREA
    maps = [np.zeros((30, 40), dtype=np.uint8), np.ones((200, 7), dtype=np.uint8)]
    inputs = runtime.prepare(maps)
    assert inputs.shape == (2, 2, 16, 16) and inputs.dtype == np.float32
    result = runtime.predict(inputs)
    assert result.probabilities.shape == (2, NUM_CLASSES)
    assert result.steps.tolist() == [1, 1]
    with pytest.raises(ValueError, match="shape"):
        runtime.predict(np.zeros((1, TOKENS), dtype=np.int64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        runtime.predict(np.full((1, 2, 16, 16), 2.0, dtype=np.float32))


def test_older_manifests_read_the_token_grid(model_dir: Path) -> None:
    runtime = ModelRuntime.load(model_dir)
    assert runtime.manifest.input == TOKENS_INPUT
    assert "input" not in (model_dir / "model.json").read_text()
    assert runtime.prepare([np.zeros((26, 26), dtype=np.uint8)]).shape == (1, TOKENS)


def test_the_second_look_views_are_eight_unless_the_manifest_says_four(model_dir: Path) -> None:
    manifest = ModelRuntime.load(model_dir).manifest
    assert manifest.tta_views == 8
    assert "tta_views" not in manifest.to_json()  # older manifests stay what they were
    four = dataclasses.replace(manifest, tta_threshold=0.8, tta_views=4)
    assert ModelManifest.from_json(four.to_json()) == four
    for bad in (3, 5, True):
        with pytest.raises(ValueError, match="tta_views"):
            dataclasses.replace(manifest, tta_views=bad)
