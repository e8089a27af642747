"""Export trained models for serving: ONNX graphs, model directories, TensorRT engines.

A TRM is exported as ONE supervision step with explicit state (DESIGN.md §4), so the runtime
(`wafercore.runtime`), not the graph, decides when each wafer stops. A model directory is
``model.onnx`` (weights inside, no external data) plus ``model.json`` (`ModelManifest`).

Export uses PyTorch's TorchScript-based ONNX exporter (``dynamo=False``) with a dynamic batch
axis: on this model it gives the same numbers as the dynamo exporter (both within 1e-5 of
PyTorch) but exports in about 1-3 s instead of 20-30 s (torch 2.13, CPU), which keeps the
training pipeline and the tests fast.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from cloud.models.trm import ExportableStep, TinyRecursiveModel
from cloud.models.vae import VAEScorer, WaferVAE
from wafercore.classes import CLASS_NAMES
from wafercore.encoding import OUT, TOKENS
from wafercore.model_input import TOKENS_INPUT, InputSpec
from wafercore.novelty import NOVELTY_FILE, NOVELTY_MANIFEST_FILE, OUTPUTS, NoveltyManifest
from wafercore.review import DEFAULT_REVIEW_THRESHOLD
from wafercore.runtime import (
    FEATURES,
    MANIFEST_FILE,
    MODEL_FILE,
    ModelKind,
    ModelManifest,
    file_sha256,
)

OPSET = 17
"""ONNX opset: recent enough for every op used, old enough for TensorRT 8.6+ and any ORT."""
TRT_MAX_BATCH = 1024
"""Largest batch a TensorRT engine's optimisation profile accepts."""


class TensorRTUnavailable(RuntimeError):  # noqa: N818 - the name says what happened
    """TensorRT cannot build an engine here; ``reason`` says why and what to do."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def export_trm(model: TinyRecursiveModel, path: Path, input_spec: InputSpec = TOKENS_INPUT) -> None:
    """Export one TRM supervision step as a single self-contained ONNX graph.

    Inputs ``tokens`` (B, 676) int64 (or ``x`` (B, C, S, S) float32 for an area input),
    ``y`` and ``z`` (B, L, D) float32; outputs ``y_next``, ``z_next``, ``logits``
    (B, classes) and ``halt`` (B,) (a probability). B is dynamic. The initial state is zeros.
    The model is exported in eval mode and its mode restored.
    """
    config = model.config
    if config.num_classes != len(CLASS_NAMES):
        raise ValueError(f"model has {config.num_classes} classes, platform {len(CLASS_NAMES)}")
    device = _device(model)
    example, name = _example_input(input_spec, device)
    y, z = model.initial_state(2, device)  # (2, L, D) each
    _export(
        ExportableStep(model),
        (example, y, z),
        path,
        inputs=(name, "y", "z"),
        outputs=("y_next", "z_next", "logits", "halt"),
    )


def _example_input(spec: InputSpec, device: torch.device) -> tuple[Tensor, str]:
    """A batch of two inputs of ``spec`` to trace with, and the graph input's name."""
    if spec.is_tokens:
        return torch.full((2, TOKENS), OUT, dtype=torch.int64, device=device), "tokens"
    return torch.zeros((2, *spec.shape), dtype=torch.float32, device=device), "x"


def export_classifier(model: nn.Module, path: Path, input_spec: InputSpec = TOKENS_INPUT) -> None:
    """Export a single-pass classifier, its input → ``logits`` (B, classes).

    The input is ``tokens`` (B, 676) int64 for the legacy grid, ``x`` (B, C, S, S) float32 for
    an area input (`wafercore.model_input`).
    """
    example, name = _example_input(input_spec, _device(model))
    _export(model, (example,), path, inputs=(name,), outputs=("logits",))


def write_model_dir(
    out_dir: Path,
    onnx_path: Path,
    *,
    version: str,
    kind: ModelKind,
    n_sup: int = 1,
    state_shape: tuple[int, int] | None = None,
    halt_threshold: float = 0.5,
    temperature: float = 1.0,
    review_threshold: float = DEFAULT_REVIEW_THRESHOLD,
    extra: Mapping[str, Any] | None = None,
    input_spec: InputSpec = TOKENS_INPUT,
    tta_threshold: float = 0.0,
) -> ModelManifest:
    """Make ``out_dir`` a model directory: ``model.onnx`` (copied from ``onnx_path`` unless it
    is already there) and ``model.json``. Both are written atomically.

    Args:
        extra: training metadata (architecture, training config, code version, data
            provenance); must be JSON-serialisable.
        input_spec: what the model reads (declared in the manifest, built by the runtime).
        tta_threshold: confidence below which a wafer gets the second look (0: never).

    Returns:
        The manifest written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / MODEL_FILE
    if Path(onnx_path).resolve() != target.resolve():
        _write_atomic(target, Path(onnx_path).read_bytes())
    manifest = ModelManifest(
        version=version,
        kind=kind,
        n_sup=n_sup,
        state_shape=state_shape,
        halt_threshold=halt_threshold,
        temperature=temperature,
        review_threshold=review_threshold,
        class_names=CLASS_NAMES,
        onnx_sha256=file_sha256(target),
        extra=dict(extra or {}),
        input=input_spec,
        tta_threshold=tta_threshold,
    )
    _write_atomic(out_dir / MANIFEST_FILE, manifest.to_json().encode("utf-8"))
    return manifest


def rewrite_manifest(out_dir: Path, manifest: ModelManifest) -> None:
    """Replace a model directory's ``model.json`` atomically (what was tuned after export);
    the graph, and so ``onnx_sha256``, is unchanged."""
    _write_atomic(out_dir / MANIFEST_FILE, manifest.to_json().encode("utf-8"))


def export_trm_dir(
    model: TinyRecursiveModel,
    out_dir: Path,
    *,
    version: str,
    halt_threshold: float = 0.5,
    temperature: float = 1.0,
    review_threshold: float = DEFAULT_REVIEW_THRESHOLD,
    extra: Mapping[str, Any] | None = None,
    input_spec: InputSpec = TOKENS_INPUT,
) -> ModelManifest:
    """Export a TRM into a model directory; the architecture goes into ``extra``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    export_trm(model, out_dir / MODEL_FILE, input_spec)
    config = model.config
    return write_model_dir(
        out_dir,
        out_dir / MODEL_FILE,
        version=version,
        kind="trm",
        n_sup=config.n_sup,
        state_shape=(config.tokens, config.dim),
        halt_threshold=halt_threshold,
        temperature=temperature,
        review_threshold=review_threshold,
        extra={
            **(extra or {}),
            "architecture": {"name": "TinyRecursiveModel", "config": config.to_dict()},
        },
        input_spec=input_spec,
    )


def export_classifier_dir(
    model: nn.Module,
    out_dir: Path,
    *,
    version: str,
    temperature: float = 1.0,
    review_threshold: float = DEFAULT_REVIEW_THRESHOLD,
    extra: Mapping[str, Any] | None = None,
    input_spec: InputSpec = TOKENS_INPUT,
) -> ModelManifest:
    """Export a single-pass classifier into a model directory (kind ``cnn``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    export_classifier(model, out_dir / MODEL_FILE, input_spec)
    return write_model_dir(
        out_dir,
        out_dir / MODEL_FILE,
        version=version,
        kind="cnn",
        halt_threshold=1.0,
        temperature=temperature,
        review_threshold=review_threshold,
        extra=extra,
        input_spec=input_spec,
    )


def export_novelty_dir(
    vae: WaferVAE,
    out_dir: Path,
    *,
    version: str,
    threshold: float,
    false_alarm_rate: float,
    extra: Mapping[str, Any] | None = None,
) -> NoveltyManifest:
    """Write ``novelty.onnx`` (`VAEScorer`: ``x`` to score, heatmap, embedding) and
    ``novelty.json`` into ``out_dir`` (`wafercore.novelty`); returns the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = InputSpec(size=vae.config.size, resample="area", channels=("fail", "die"))
    example, _ = _example_input(spec, _device(vae))
    _export(VAEScorer(vae), (example,), out_dir / NOVELTY_FILE, inputs=("x",), outputs=OUTPUTS)
    return write_novelty_manifest(
        out_dir,
        NoveltyManifest(
            version=version,
            onnx_sha256=file_sha256(out_dir / NOVELTY_FILE),
            input=spec,
            latent=vae.config.latent,
            threshold=threshold,
            false_alarm_rate=false_alarm_rate,
            extra={**(extra or {}), "architecture": vae.config.to_dict()},
        ),
    )


def write_novelty_manifest(out_dir: Path, manifest: NoveltyManifest) -> NoveltyManifest:
    """Write (or replace) a directory's ``novelty.json`` atomically; returns ``manifest``."""
    _write_atomic(out_dir / NOVELTY_MANIFEST_FILE, manifest.to_json().encode("utf-8"))
    return manifest


def penultimate(model: onnx.ModelProto) -> tuple[str, int]:
    """The penultimate feature tensor of a single-pass classifier graph and its width: the
    input of the ``Gemm`` (or ``MatMul``) whose output is ``logits``.

    Raises:
        ValueError: no such linear last layer with a constant weight.
    """
    last = [n for n in model.graph.node if "logits" in n.output and n.op_type in ("Gemm", "MatMul")]
    if not last:
        raise ValueError("no Gemm/MatMul makes the 'logits' output")
    weight = {t.name: t for t in model.graph.initializer}.get(last[0].input[1])
    if weight is None:
        raise ValueError("the last layer's weight is not a constant")
    transposed = any(a.name == "transB" and a.i == 1 for a in last[0].attribute)
    return last[0].input[0], int(weight.dims[1] if transposed else weight.dims[0])


def expose_features(graph: bytes) -> bytes:
    """A single-pass classifier's graph with its penultimate features as a second output,
    ``features`` (B, D), weights and ``logits`` untouched: what the node embeds each wafer with
    for the fab's similar-wafer search (`wafercore.runtime.FEATURES`).

    Raises:
        ValueError: not a graph with a linear last layer, or one that exposes them already.
    """
    model = onnx.load_from_string(graph)
    if FEATURES in [o.name for o in model.graph.output]:
        raise ValueError("the graph already has a 'features' output")
    tensor, dim = penultimate(model)
    model.graph.node.append(onnx.helper.make_node("Identity", [tensor], [FEATURES]))
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(FEATURES, onnx.TensorProto.FLOAT, ["batch", dim])
    )
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def build_tensorrt(onnx_path: Path, engine_path: Path, fp16: bool = True) -> Path:
    """Build and serialise a TensorRT engine for batches 1..1024 from an exported graph.

    Raises:
        TensorRTUnavailable: tensorrt is not installed or no CUDA GPU is visible.
        RuntimeError: TensorRT could not parse the graph or build the engine.
    """
    try:
        import tensorrt as trt  # optional: GPU machines only
    except ImportError:
        raise TensorRTUnavailable(
            "tensorrt is not installed: pip install tensorrt on a machine with an NVIDIA GPU"
        ) from None
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("no CUDA GPU visible: TensorRT engines are built on the GPU")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 8 needs the explicit-batch flag; TensorRT 10 is always explicit and ignores it.
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if fp16 and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]  # every axis but the batch is static
        profile.set_shape(tensor.name, (1, *rest), (64, *rest), (TRT_MAX_BATCH, *rest))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    _write_atomic(Path(engine_path), bytes(serialized))
    return Path(engine_path)


def _export(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    *,
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
) -> None:
    was_training = module.training
    module.eval()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter is chosen on purpose (module docstring); its notes on
            # Slice constant folding concern steps != 1 and change no result.
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            warnings.filterwarnings("ignore", message="The feature will be removed")
            # binary_cross_entropy_with_logits checks shapes in Python: constant once traced.
            warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")
            torch.onnx.export(
                module,
                args,
                buffer,
                dynamo=False,
                opset_version=OPSET,
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_axes={name: {0: "batch"} for name in (*inputs, *outputs)},
                do_constant_folding=True,
            )
    finally:
        module.train(was_training)
    # Writing the bytes ourselves keeps the weights inside the one file.
    graph = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(graph, full_check=True)
    _write_atomic(Path(path), buffer.getvalue())


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; servers read models as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
