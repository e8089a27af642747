import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from cloud.cli import main
from cloud.evaluation.champion import choose_champion
from cloud.training.ensemble import ensemble_graph
from wafercore.readers.npz import file_sha256, write_npz
from wafercore.runtime import FEATURES, MODEL_FILE, ModelRuntime
from wafercore.synthetic import generate_dataset


@pytest.fixture
def member(tmp_path: Path, area_classifier: Callable[..., Path]) -> Callable[..., Path]:
    """A tiny classifier named ``name`` in the test's folder, seed ``seed`` (cnn-v0.0.<seed>)."""

    def make(name: str, seed: int, temperature: float, data: dict, features: bool) -> Path:
        extra = {"data": data, "params": 100 + seed, "gflops_per_step": 0.01, "validation": {}}
        return area_classifier(
            tmp_path / name,
            version=f"cnn-v0.0.{seed}",
            seed=seed,
            features=features,
            temperature=temperature,
            extra=extra,
        )

    return make


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "labelled.npz"
    write_npz(generate_dataset(12, np.random.default_rng(8), sizes=(20, 40)), path)
    return path


def _provenance(path: Path) -> dict:
    return {"sha256": file_sha256(path), "protocol": "random", "val_fraction": 0.2, "seed": 0}


def _probabilities(graph: bytes, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    outs = session.run(None, {"x": x})
    logits = outs[0]
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), outs


def test_the_ensemble_graph_averages_its_members_at_their_temperatures(
    member: Callable[..., Path],
) -> None:
    data = {"sha256": "0" * 64}
    a = member("a", 1, 0.5, data, features=True)
    b = member("b", 2, 2.0, data, features=True)
    graph = ensemble_graph([onnx.load(a / MODEL_FILE), onnx.load(b / MODEL_FILE)], [0.5, 2.0])
    x = np.random.default_rng(0).random((5, 2, 16, 16), dtype=np.float32)
    mean, outs = _probabilities(graph.SerializeToString(), x)
    members = [ModelRuntime.load(d) for d in (a, b)]  # softmax(logits / own temperature)
    expected = np.mean([m.predict(x).probabilities for m in members], axis=0)
    assert np.allclose(mean, expected, atol=1e-5)
    assert not np.allclose(members[0].predict(x).probabilities, expected, atol=1e-3)
    features = np.concatenate([m.predict(x).features for m in members], axis=1)
    assert np.allclose(outs[1], features, atol=1e-5)


def test_members_without_features_make_an_ensemble_without_them(
    member: Callable[..., Path],
) -> None:
    data = {"sha256": "0" * 64}
    a = member("a", 1, 1.0, data, features=True)
    b = member("b", 2, 1.0, data, features=False)
    graph = ensemble_graph([onnx.load(a / MODEL_FILE), onnx.load(b / MODEL_FILE)], [1.0, 1.0])
    assert [o.name for o in graph.graph.output] == ["logits"]
    with pytest.raises(ValueError, match="two or more"):
        ensemble_graph([onnx.load(a / MODEL_FILE)], [1.0])


def test_wafer_cloud_ensemble_writes_a_calibrated_candidate(
    tmp_path: Path, labelled: Path, member: Callable[..., Path]
) -> None:
    data = _provenance(labelled)
    a = member("a", 1, 0.8, data, features=True)
    b = member("b", 2, 1.3, data, features=True)
    out = tmp_path / "ens"
    env = {"CLOUD_WORK_DIR": str(tmp_path / "work")}
    args = ["ensemble", "--model", str(a), "--model", str(b), "--version", "cnn-v0.1.0"]
    done = CliRunner().invoke(main, [*args, "--data", str(labelled), "--out", str(out)], env=env)
    assert done.exit_code == 0, done.output
    assert "cnn-v0.0.1 + cnn-v0.0.2" in done.output
    manifest = ModelRuntime.load(out).manifest
    assert manifest.extra["ensemble"]["members"] == ["cnn-v0.0.1", "cnn-v0.0.2"]
    assert manifest.extra["params"] == 101 + 102
    assert manifest.extra["gflops_per_step"] == pytest.approx(0.02)
    assert manifest.extra["validation"]["second_look"]  # tuned on validation lots
    report = json.loads((out / "report.json").read_text())
    assert report["model_version"] == "cnn-v0.1.0"
    chosen, _ = choose_champion([out])
    assert chosen is not None and chosen.version == "cnn-v0.1.0"
    assert FEATURES in ModelRuntime.load(out).output_names


def test_wafer_cloud_ensemble_refuses_members_of_other_data(
    tmp_path: Path, labelled: Path, member: Callable[..., Path]
) -> None:
    a = member("a", 1, 1.0, _provenance(labelled), features=False)
    b = member("b", 2, 1.0, {**_provenance(labelled), "seed": 3}, features=False)
    args = ["ensemble", "--model", str(a), "--model", str(b), "--version", "cnn-v0.1.0"]
    done = CliRunner().invoke(
        main,
        [*args, "--data", str(labelled), "--out", str(tmp_path / "e")],
        env={"CLOUD_WORK_DIR": str(tmp_path / "work")},
    )
    assert done.exit_code == 1 and "not validated on the same lots" in done.output
    assert "Traceback" not in done.output
