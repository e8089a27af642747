"""The frozen backbone: penultimate features of an exported single-pass classifier.

The ONNX graph's last layer is the ``Gemm`` (or ``MatMul``) that makes the ``logits`` output;
its input is the penultimate feature vector. The graph is loaded with that tensor as an extra
output, so the backbone is exactly the shipped model, weights untouched, run by ONNX Runtime
on the model's own input (`wafercore.model_input`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.export import penultimate
from wafercore.dataset import WaferDataset
from wafercore.model_input import build_input
from wafercore.runtime import MANIFEST_FILE, MODEL_FILE, ModelManifest


class BackboneError(ValueError):
    """The model cannot serve as the benchmark's backbone (the message says why)."""


@dataclass(frozen=True)
class Backbone:
    """A loaded backbone: its session, manifest, feature tensor name and width."""

    session: Any
    manifest: ModelManifest
    feature_name: str
    dim: int

    @property
    def version(self) -> str:
        """The model's version."""
        return self.manifest.version


def load_backbone(model_dir: Path, *, threads: int = 0) -> Backbone:
    """The model in ``model_dir`` with its penultimate features exposed.

    Raises:
        BackboneError: not a single-pass (``cnn``) model, or no final linear layer.
    """
    import onnx
    import onnxruntime as ort

    manifest = ModelManifest.from_json((model_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    if manifest.kind != "cnn":
        raise BackboneError(
            f"{manifest.version} is a {manifest.kind} model: the head benchmark needs a "
            "single-pass classifier (kind cnn) whose last layer is linear"
        )
    graph = (model_dir / MODEL_FILE).read_bytes()
    if hashlib.sha256(graph).hexdigest() != manifest.onnx_sha256:
        raise BackboneError(f"{model_dir / MODEL_FILE} differs from its manifest's sha256")
    model = onnx.load_from_string(graph)
    try:
        feature_name, dim = penultimate(model)
    except ValueError as exc:
        raise BackboneError(f"{manifest.version}: {exc}") from None
    if feature_name not in [o.name for o in model.graph.output]:
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(feature_name, onnx.TensorProto.FLOAT, None)
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    return Backbone(session, manifest, feature_name, dim)


def extract_features(
    backbone: Backbone, dataset: WaferDataset, *, batch_size: int = 512
) -> npt.NDArray[np.float32]:
    """(N, dim) penultimate features of every map of ``dataset``, in order."""
    out = np.empty((len(dataset), backbone.dim), dtype=np.float32)
    input_name = backbone.session.get_inputs()[0].name
    for start in range(0, len(dataset), batch_size):
        stop = min(start + batch_size, len(dataset))
        maps = [dataset.map(i) for i in range(start, stop)]
        inputs = build_input(maps, backbone.manifest.input)
        (features,) = backbone.session.run([backbone.feature_name], {input_name: inputs})
        out[start:stop] = np.asarray(features, dtype=np.float32).reshape(stop - start, -1)
    return out
