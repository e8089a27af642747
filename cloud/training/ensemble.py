"""Ensembles: classifiers that read the same input, averaged in one ONNX graph.

An ensemble is a candidate like any other (issue 10): one model directory of kind ``cnn``, whose
graph runs every member on the input and returns the log of the members' mean probabilities
(each member at its own calibrated temperature) as ``logits``; the runtime's softmax then gives
that mean. Where every member exposes its penultimate ``features``, the ensemble exposes their
concatenation. Halting, temperature and the second look are tuned on validation lots as for a
trained model (`cloud.training.finalize.calibrate`); its compute and parameters are the sums of
its members'.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cloud.export import write_model_dir
from cloud.training.config import DataConfig
from cloud.training.data import Part, prepare, split_of
from cloud.training.finalize import calibrate
from wafercore.readers.npz import file_sha256
from wafercore.runtime import FEATURES, MODEL_FILE, ModelManifest, ModelRuntime

log = logging.getLogger(__name__)

FLOOR = 1e-30
"""Smallest mean probability before the log (an exact 0 would be -inf)."""


def ensemble_graph(
    members: Sequence[onnx.ModelProto], temperatures: Sequence[float]
) -> onnx.ModelProto:
    """One graph running every member on their one input: ``logits`` = log of the mean of
    softmax(member logits / member temperature); ``features``, the members' features side by
    side, when every member has them.

    Raises:
        ValueError: fewer than two members, members of different inputs or opsets, or one
            without logits.
    """
    if len(members) < 2 or len(members) != len(temperatures):
        raise ValueError("an ensemble needs two or more members, each with its temperature")
    if len({m.graph.input[0].name for m in members}) != 1:
        raise ValueError("the members' graphs read differently named inputs")
    opsets = {tuple((o.domain, o.version) for o in m.opset_import) for m in members}
    if len(opsets) != 1:
        raise ValueError("the members were exported with different opsets")
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    probabilities, features = [], []
    for i, (member, temperature) in enumerate(zip(members, temperatures, strict=True)):
        outputs = [o.name for o in member.graph.output]
        if "logits" not in outputs:
            raise ValueError(f"member {i} has no 'logits' output")
        prefixed = onnx.compose.add_prefix(member, f"m{i}/", rename_inputs=False)
        nodes += prefixed.graph.node
        initializers += prefixed.graph.initializer
        scale = f"m{i}/ensemble_temperature"
        initializers.append(numpy_helper.from_array(np.array(temperature, np.float32), scale))
        nodes += [
            helper.make_node("Div", [f"m{i}/logits", scale], [f"m{i}/scaled"]),
            helper.make_node("Softmax", [f"m{i}/scaled"], [f"m{i}/probabilities"], axis=-1),
        ]
        probabilities.append(f"m{i}/probabilities")
        features.append(f"m{i}/{FEATURES}" if FEATURES in outputs else None)
    initializers += [
        numpy_helper.from_array(np.array(1.0 / len(members), np.float32), "ensemble_share"),
        numpy_helper.from_array(np.array(FLOOR, np.float32), "ensemble_floor"),
    ]
    nodes += [
        helper.make_node("Sum", probabilities, ["ensemble_sum"]),
        helper.make_node("Mul", ["ensemble_sum", "ensemble_share"], ["ensemble_mean"]),
        helper.make_node("Max", ["ensemble_mean", "ensemble_floor"], ["ensemble_kept"]),
        helper.make_node("Log", ["ensemble_kept"], ["logits"]),
    ]
    classes = members[0].graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])]
    if all(f is not None for f in features):
        nodes.append(helper.make_node("Concat", features, [FEATURES], axis=1))
        outputs.append(helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["batch", None]))
    graph = helper.make_graph(
        nodes, "ensemble", [members[0].graph.input[0]], outputs, initializer=initializers
    )
    model = helper.make_model(graph, opset_imports=members[0].opset_import)
    model.ir_version = members[0].ir_version
    onnx.checker.check_model(model, full_check=True)
    return model


def build_ensemble(
    model_dirs: Sequence[Path], version: str, data_path: Path, out_dir: Path, cache_dir: Path
) -> dict[str, Any]:
    """Write the ensemble of ``model_dirs`` as the model directory ``out_dir``, calibrated on
    the validation lots of ``data_path`` its members were calibrated on; returns its manifest's
    ``extra``.

    Raises:
        ValueError: a member is not a single-pass classifier, the members read different
            inputs or were trained on different files or splits, or ``data_path`` is not
            their file.
    """
    manifests: list[ModelManifest] = [ModelRuntime.load(d).manifest for d in model_dirs]
    if any(m.kind != "cnn" for m in manifests):
        raise ValueError("every member must be a single-pass classifier (kind cnn)")
    if len({m.input for m in manifests}) != 1:
        raise ValueError("the members read different inputs; an ensemble feeds them one")
    val = _members_validation(manifests, data_path, cache_dir)
    graph = ensemble_graph(
        [onnx.load(d / MODEL_FILE) for d in model_dirs],
        [m.temperature for m in manifests],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(graph, out_dir / MODEL_FILE)
    extra: dict[str, Any] = {
        "ensemble": {"members": [m.version for m in manifests]},
        "data": manifests[0].extra.get("data", {}),
        "params": sum(int(m.extra.get("params", 0)) for m in manifests),
        "gflops_per_step": sum(float(m.extra.get("gflops_per_step", 0.0)) for m in manifests),
    }
    write_model_dir(
        out_dir,
        out_dir / MODEL_FILE,
        version=version,
        kind="cnn",
        halt_threshold=1.0,
        review_threshold=manifests[0].review_threshold,
        extra=extra,
        input_spec=manifests[0].input,
    )
    log.info("ensemble %s of %s written; calibrating on validation", version, extra["ensemble"])
    return calibrate(out_dir, val, extra)


def _members_validation(
    manifests: Sequence[ModelManifest], data_path: Path, cache_dir: Path
) -> Part:
    """The validation lots every member was calibrated on, from ``data_path``."""
    splits = {split_of(m.extra.get("data", {})) for m in manifests}
    if len(splits) != 1 or None in next(iter(splits)):
        raise ValueError("the members were not validated on the same lots of the same file")
    sha, protocol, val_fraction, seed = splits.pop()
    if file_sha256(data_path) != sha:
        raise ValueError(f"{data_path} is not the file the members were trained on")
    config = DataConfig(path=data_path, protocol=protocol, val_fraction=val_fraction)
    return prepare(config, data_path, cache_dir, int(seed)).val
