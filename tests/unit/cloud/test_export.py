"""Export: the ONNX graph served by `wafercore.runtime` computes what the PyTorch model does."""

from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import Tensor, nn

from cloud import export
from cloud.export import (
    TensorRTUnavailable,
    build_tensorrt,
    export_classifier_dir,
    export_trm_dir,
    expose_features,
)
from cloud.models.trm import TinyRecursiveModel, TRMConfig
from wafercore.classes import CLASS_NAMES, NUM_CLASSES
from wafercore.encoding import TOKENS
from wafercore.pipeline import classify_maps
from wafercore.runtime import ModelLoadError, ModelManifest, ModelRuntime
from wafercore.synthetic import generate_dataset

TEMPERATURE = 1.5  # not 1, so a runtime that forgot it would fail parity


def _tiny_trm(mixer: str = "attention") -> TinyRecursiveModel:
    torch.manual_seed(0)
    config = TRMConfig(dim=16, heads=2, patch=4, n=1, T=2, n_sup=3, mixer=mixer)  # type: ignore[arg-type]
    return TinyRecursiveModel(config)


def _tokens(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3, size=(batch, TOKENS), dtype=np.uint8)


def _torch_steps(model: TinyRecursiveModel, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    with torch.no_grad():
        outs = model(torch.from_numpy(tokens.astype(np.int64)))
    probs = torch.stack([torch.softmax(o.logits / TEMPERATURE, dim=-1) for o in outs])
    halt = torch.stack([torch.sigmoid(o.halt_logit) for o in outs])
    return probs.numpy(), halt.numpy()  # (S, B, 9), (S, B)


@pytest.fixture(scope="module", params=["attention", "mlp"])
def trm_export(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TinyRecursiveModel, Path]:
    model = _tiny_trm(request.param)
    out = tmp_path_factory.mktemp(f"trm-{request.param}")
    export_trm_dir(
        model,
        out,
        version="trm-v0.1.0",
        temperature=TEMPERATURE,
        extra={"code_version": "abc123", "data": {"source": "synthetic"}},
    )
    return model, out


@pytest.mark.parametrize("batch", [1, 7])
def test_trm_runtime_matches_pytorch_at_every_step(
    trm_export: tuple[TinyRecursiveModel, Path], batch: int
) -> None:
    model, out = trm_export
    runtime = ModelRuntime.load(out)
    tokens = _tokens(batch, seed=batch)
    probs, halt = runtime.predict_all_steps(tokens)
    expected_probs, expected_halt = _torch_steps(model, tokens)
    assert probs.shape == (3, batch, NUM_CLASSES) and halt.shape == (3, batch)
    np.testing.assert_allclose(probs, expected_probs, atol=1e-4, rtol=0)
    np.testing.assert_allclose(halt, expected_halt, atol=1e-4, rtol=0)


def test_trm_model_dir_is_one_graph_with_a_dynamic_batch_and_a_full_manifest(
    trm_export: tuple[TinyRecursiveModel, Path],
) -> None:
    model, out = trm_export
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx"]
    graph = onnx.load(out / "model.onnx")
    onnx.checker.check_model(graph)
    assert not any(
        init.data_location == onnx.TensorProto.EXTERNAL for init in graph.graph.initializer
    )
    assert [i.name for i in graph.graph.input] == ["tokens", "y", "z"]
    assert [o.name for o in graph.graph.output] == ["y_next", "z_next", "logits", "halt"]
    for value in (*graph.graph.input, *graph.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"

    manifest = ModelManifest.from_json((out / "model.json").read_text())
    config = model.config
    assert manifest.kind == "trm" and manifest.version == "trm-v0.1.0"
    assert manifest.state_shape == (config.tokens, config.dim)
    assert manifest.n_sup == 3 and manifest.temperature == TEMPERATURE
    assert manifest.review_threshold == 0.6
    assert manifest.class_names == CLASS_NAMES
    assert manifest.extra["architecture"]["config"] == config.to_dict()
    assert manifest.extra["code_version"] == "abc123"
    assert ModelManifest.from_json(manifest.to_json()) == manifest


def test_export_restores_the_training_mode(tmp_path: Path) -> None:
    model = _tiny_trm().train()
    export.export_trm(model, tmp_path / "m.onnx")
    assert model.training


class _TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(3, 4)
        self.out = nn.Linear(TOKENS * 4, NUM_CLASSES)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.out(self.embed(tokens).flatten(1))  # (B, 676) -> (B, 9)


def test_classifier_exports_and_matches(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = _TinyCNN().eval()
    export_classifier_dir(model, tmp_path, version="cnn-v1.0.0", temperature=TEMPERATURE)
    runtime = ModelRuntime.load(tmp_path)
    assert runtime.manifest.kind == "cnn" and runtime.n_sup == 1
    tokens = _tokens(5, seed=3)
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens.astype(np.int64)))
    expected = torch.softmax(logits / TEMPERATURE, dim=-1).numpy()
    result = runtime.predict(tokens)
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-4, rtol=0)
    assert result.steps.tolist() == [1] * 5
    probs, _ = runtime.predict_all_steps(tokens)
    np.testing.assert_allclose(probs[0], expected, atol=1e-4, rtol=0)


def test_tampered_graph_is_refused(
    trm_export: tuple[TinyRecursiveModel, Path], tmp_path: Path
) -> None:
    _, out = trm_export
    for name in ("model.onnx", "model.json"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    data = bytearray((tmp_path / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256"):
        ModelRuntime.load(tmp_path)


def test_missing_files_and_bad_manifests_are_refused(
    trm_export: tuple[TinyRecursiveModel, Path], tmp_path: Path
) -> None:
    _, out = trm_export
    with pytest.raises(ModelLoadError, match="missing"):
        ModelRuntime.load(tmp_path)
    (tmp_path / "model.onnx").write_bytes((out / "model.onnx").read_bytes())
    manifest = json.loads((out / "model.json").read_text())
    manifest["temperature"] = 0
    (tmp_path / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="temperature"):
        ModelRuntime.load(tmp_path)


def test_tensorrt_without_the_package_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    with pytest.raises(TensorRTUnavailable, match="tensorrt is not installed: pip install") as err:
        build_tensorrt(tmp_path / "m.onnx", tmp_path / "m.engine")
    assert "NVIDIA GPU" in err.value.reason
    assert not (tmp_path / "m.engine").exists()


def test_tensorrt_without_a_gpu_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TensorRTUnavailable, match="no CUDA GPU visible"):
        build_tensorrt(tmp_path / "m.onnx", tmp_path / "m.engine")


def test_exposed_features_leave_the_logits_alone_and_feed_the_embedding(tmp_path: Path) -> None:
    source = Path(__file__).resolve().parents[3] / "models" / "cnn-v2.0.0"
    graph = (source / "model.onnx").read_bytes()
    exposed = expose_features(graph)
    with pytest.raises(ValueError, match="already"):
        expose_features(exposed)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(exposed)
    manifest = json.loads((source / "model.json").read_text())
    manifest["onnx_sha256"] = hashlib.sha256(exposed).hexdigest()
    (folder / "model.json").write_text(json.dumps(manifest))
    with_features, plain = ModelRuntime.load(folder), ModelRuntime.load(source)
    assert with_features.output_names == ("logits", "features")
    maps = list(generate_dataset(1, np.random.default_rng(4)).maps())
    inputs = plain.prepare(maps)
    a, b = plain.predict(inputs), with_features.predict(inputs)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    assert a.features is None and b.features is not None and b.features.shape == (len(maps), 128)
    # The node's embedding is those features at unit length (Euclidean distance ranks as cosine).
    (first,) = classify_maps(with_features, maps[:1])
    assert first.embedding is not None and len(first.embedding) == 128
    assert np.linalg.norm(first.embedding) == pytest.approx(1.0, abs=1e-5)
    expected = b.features[0] / np.linalg.norm(b.features[0])
    np.testing.assert_allclose(first.embedding, expected, rtol=1e-5, atol=1e-6)
