"""The frozen backbone is the shipped model itself: its penultimate features, through its own
last layer, give back its own logits."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cloud.heads.features import BackboneError, extract_features, load_backbone
from wafercore.model_input import build_input
from wafercore.runtime import ModelRuntime
from wafercore.shipped import shipped_model_dir
from wafercore.synthetic import generate_dataset

BACKBONE = "cnn-v2.0.0"


def test_features_through_the_last_layer_are_the_models_logits() -> None:
    model_dir = shipped_model_dir(BACKBONE)
    backbone = load_backbone(model_dir)
    dataset = generate_dataset(2, np.random.default_rng(0))
    features = extract_features(backbone, dataset, batch_size=7)
    assert features.shape == (len(dataset), backbone.dim) and backbone.dim == 128

    graph = onnx.load(str(model_dir / "model.onnx")).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    logits = features @ weights["head.weight"].T + weights["head.bias"]
    runtime = ModelRuntime.load(model_dir)
    expected = runtime.predict(build_input(list(dataset.maps()), runtime.manifest.input))
    logits = logits / runtime.manifest.temperature  # the runtime's calibration
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected.probabilities, atol=1e-4)


def test_a_recursive_model_is_refused_with_the_reason() -> None:
    with pytest.raises(BackboneError, match="single-pass"):
        load_backbone(shipped_model_dir("trm-v1.0.0"))
