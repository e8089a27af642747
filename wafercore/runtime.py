"""Serve an exported model with ONNX Runtime: NumPy in, class probabilities out, no PyTorch.

A model directory holds ``model.onnx`` and ``model.json`` (a `ModelManifest`). For a TRM the
graph is ONE supervision step with explicit state (``x, y, z -> y', z', logits, halt``), so
this runtime, not the graph, decides when each wafer stops: easy wafers cost one step.

The manifest declares the model's input (`wafercore.model_input.InputSpec`): `prepare` builds
it from canonical maps exactly as training did. Models made before inputs were declared read
the 26x26 token grid through a graph input named ``tokens``; the others read ``x``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped]

from wafercore.classes import CLASS_NAMES, NUM_CLASSES
from wafercore.encoding import OUT
from wafercore.model_input import TOKENS_INPUT, InputSpec, as_area, as_tokens, build_input
from wafercore.novelty import NoveltyLoadError, NoveltyRuntime
from wafercore.review import DEFAULT_REVIEW_THRESHOLD, needs_review

MODEL_FILE = "model.onnx"
"""Name of the ONNX graph inside a model directory."""
MANIFEST_FILE = "model.json"
"""Name of the manifest inside a model directory."""
MANIFEST_SCHEMA = 1
"""Version of the ``model.json`` layout this code writes and reads."""
TTA_VIEWS = (4, 8)
"""What a second look may average (`wafercore.second_look.dihedral`'s first 4 or 8 views): the
rotations only, or the rotations and their mirror images."""
DEFAULT_TTA_VIEWS = 8
"""The views of a manifest that names none: what every manifest before ``tta_views`` meant."""
DEFAULT_CHUNK = 1024
"""Wafers per ONNX Runtime call when a large batch is classified (bounds memory)."""

ModelKind = Literal["trm", "cnn"]
_KINDS: tuple[str, ...] = ("trm", "cnn")
_VERSION = re.compile(r"^[a-z][a-z0-9]*-v\d+\.\d+\.\d+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Graph outputs per kind, the names export writes; the first input is the model's input.
_TRM_OUT = ("y_next", "z_next", "logits", "halt")
_CNN_OUT = ("logits",)
FEATURES = "features"
"""Optional last output of a cnn graph: its penultimate features, for similar-wafer search."""


class ModelLoadError(RuntimeError):
    """A model directory that cannot be served: missing files, bad manifest, tampered graph."""


@dataclass(frozen=True)
class ModelManifest:
    """What ``model.json`` says about ``model.onnx``: the one schema, written by export.

    Attributes:
        version: model version, ``trm-v{major}.{minor}.{patch}`` (``cnn-v...`` for baselines).
        kind: ``trm`` (one supervision step per call, halting in the runtime) or ``cnn``
            (a single-pass classifier).
        n_sup: most supervision steps a wafer can take (1 for ``cnn``).
        state_shape: ``(L, D)`` of the TRM state ``y`` and ``z``; None for ``cnn``.
        halt_threshold: a wafer stops after the first step whose halt probability is at least
            this, in (0, 1]. At 1.0 only a saturated halting head stops early.
        temperature: logits are divided by it before the softmax (calibration), > 0.
        review_threshold: predictions with confidence below it are flagged for review.
        class_names: display names by class id, as the model was trained.
        onnx_sha256: hex SHA-256 of ``model.onnx``; checked on load.
        extra: training metadata: architecture, training config, code version, data provenance.
        schema: layout version of the manifest itself.
        input: what the model reads (absent from older manifests: the 26x26 tokens).
        tta_threshold: wafers whose first-pass confidence is below it get a second look,
            the average of their views (`wafercore.second_look`); 0, the default, never looks
            twice.
        tta_views: the views a second look averages: 8, the four rotations and their mirror
            images (the default, what older manifests meant), or 4, the rotations only.
    """

    version: str
    kind: ModelKind
    n_sup: int
    onnx_sha256: str
    state_shape: tuple[int, int] | None = None
    halt_threshold: float = 0.5
    temperature: float = 1.0
    review_threshold: float = DEFAULT_REVIEW_THRESHOLD
    class_names: tuple[str, ...] = CLASS_NAMES
    extra: Mapping[str, Any] = field(default_factory=dict)
    schema: int = MANIFEST_SCHEMA
    input: InputSpec = TOKENS_INPUT
    tta_threshold: float = 0.0
    tta_views: int = DEFAULT_TTA_VIEWS

    @property
    def input_name(self) -> str:
        """Name of the graph's model input: ``tokens`` (legacy) or ``x``."""
        return "tokens" if self.input.is_tokens else "x"

    def __post_init__(self) -> None:
        problems = []
        if not _VERSION.match(self.version):
            problems.append(f"version {self.version!r} is not like 'trm-v1.0.0'")
        if self.kind not in _KINDS:
            problems.append(f"kind {self.kind!r} is not one of {_KINDS}")
        if isinstance(self.n_sup, bool) or not isinstance(self.n_sup, int) or self.n_sup < 1:
            problems.append(f"n_sup {self.n_sup!r} must be an integer >= 1")
        elif self.kind == "cnn" and self.n_sup != 1:
            problems.append("n_sup must be 1 for a cnn")
        if self.kind == "trm" and (
            self.state_shape is None
            or len(self.state_shape) != 2
            or any(not isinstance(v, int) or v < 1 for v in self.state_shape)
        ):
            problems.append(f"state_shape {self.state_shape!r} must be [L, D] for a trm")
        if self.kind == "cnn" and self.state_shape is not None:
            problems.append("state_shape must be null for a cnn")
        if not 0.0 < self.halt_threshold <= 1.0:
            problems.append(f"halt_threshold {self.halt_threshold} must be in (0, 1]")
        if not self.temperature > 0.0:
            problems.append(f"temperature {self.temperature} must be > 0")
        if not 0.0 <= self.review_threshold <= 1.0:
            problems.append(f"review_threshold {self.review_threshold} must be in [0, 1]")
        if not 0.0 <= self.tta_threshold <= 1.0:
            problems.append(f"tta_threshold {self.tta_threshold} must be in [0, 1]")
        if isinstance(self.tta_views, bool) or self.tta_views not in TTA_VIEWS:
            problems.append(f"tta_views {self.tta_views!r} must be one of {TTA_VIEWS}")
        if not self.class_names or not all(isinstance(n, str) for n in self.class_names):
            problems.append("class_names must be a non-empty list of strings")
        if not _SHA256.match(self.onnx_sha256):
            problems.append("onnx_sha256 must be 64 lower-case hex digits")
        if self.schema != MANIFEST_SCHEMA:
            problems.append(
                f"schema {self.schema} is not {MANIFEST_SCHEMA} (written by newer code?)"
            )
        if problems:
            raise ValueError("invalid model manifest: " + "; ".join(problems))

    def to_json(self) -> str:
        """The manifest as ``model.json`` text (sorted keys, so equal manifests are equal text)."""
        data = {
            "schema": self.schema,
            "version": self.version,
            "kind": self.kind,
            "n_sup": self.n_sup,
            "state_shape": list(self.state_shape) if self.state_shape is not None else None,
            "halt_threshold": self.halt_threshold,
            "temperature": self.temperature,
            "review_threshold": self.review_threshold,
            "class_names": list(self.class_names),
            "onnx_sha256": self.onnx_sha256,
            "extra": dict(self.extra),
        }
        # Older manifests stay byte-for-byte what they were.
        if not self.input.is_tokens:
            data["input"] = self.input.to_json()
        if self.tta_threshold:
            data["tta_threshold"] = self.tta_threshold
        if self.tta_views != DEFAULT_TTA_VIEWS:
            data["tta_views"] = self.tta_views
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelManifest:
        """Parse ``model.json`` text.

        Raises:
            ValueError: not JSON, unknown or missing keys, or values out of range.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"model manifest is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("model manifest must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"model manifest has unknown keys {unknown}")
        missing = sorted({"version", "kind", "n_sup", "onnx_sha256"} - set(data))
        if missing:
            raise ValueError(f"model manifest lacks {missing}")
        if data.get("state_shape") is not None:
            data["state_shape"] = tuple(data["state_shape"])
        if "class_names" in data:
            data["class_names"] = tuple(data["class_names"])
        for key in ("halt_threshold", "temperature", "review_threshold", "tta_threshold"):
            if key in data:
                data[key] = float(data[key])
        data["input"] = InputSpec.from_json(data.get("input"))
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"invalid model manifest: {exc}") from None


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class RuntimeResult:
    """Classification of a batch of B wafers; every field is an array over the batch.

    Attributes:
        probabilities: (B, classes) float32, softmax(logits / temperature) at the step each
            wafer stopped.
        prediction: (B,) int64 class ids (argmax of ``probabilities``).
        confidence: (B,) float32, the probability of the predicted class.
        steps: (B,) int64 supervision steps taken, 1..n_sup (1 for a cnn).
        halt: (B,) float32 halt probability at the last step (1.0 for a cnn).
        flagged: (B,) bool, confidence below the manifest's review threshold.
        features: (B, D) float32 penultimate features, when the graph exposes them.
    """

    probabilities: npt.NDArray[np.float32]
    prediction: npt.NDArray[np.int64]
    confidence: npt.NDArray[np.float32]
    steps: npt.NDArray[np.int64]
    halt: npt.NDArray[np.float32]
    flagged: npt.NDArray[np.bool_]
    features: npt.NDArray[np.float32] | None = None


class ModelRuntime:
    """One loaded model: an ONNX Runtime session plus its manifest. Build with `load`."""

    def __init__(
        self,
        session: Any,
        manifest: ModelManifest,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        novelty: NoveltyRuntime | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self._session = session
        self._manifest = manifest
        self._chunk = chunk_size
        self.novelty = novelty
        """The novelty model shipped beside the classifier (`wafercore.novelty`), if any."""
        outputs = [o.name for o in session.get_outputs()]
        self._cnn_out = [*_CNN_OUT, FEATURES] if FEATURES in outputs else list(_CNN_OUT)

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> ModelRuntime:
        """Load a model directory, verify it, and warm the session up once.

        Args:
            model_dir: folder with ``model.onnx`` and ``model.json``.
            threads: ONNX Runtime intra-op threads; 1 by default (lowest latency for one
                wafer at a time, and leaves the other cores to the rest of the node).
            providers: ONNX Runtime execution providers; CPU by default.
            chunk_size: most wafers per ONNX Runtime call.

        Raises:
            ModelLoadError: a file is missing, the manifest is invalid, the graph's SHA-256
                differs from the manifest's, or the graph does not fit the manifest; or the
                directory's novelty model (`wafercore.novelty`) cannot be loaded.
        """
        model_dir = Path(model_dir)
        onnx_path, manifest_path = model_dir / MODEL_FILE, model_dir / MANIFEST_FILE
        for path in (onnx_path, manifest_path):
            if not path.is_file():
                raise ModelLoadError(f"{path} is missing: not a model directory")
        try:
            manifest = ModelManifest.from_json(manifest_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ModelLoadError(f"{manifest_path}: {exc}") from None
        if manifest.class_names != CLASS_NAMES:
            raise ModelLoadError(
                f"model {manifest.version} was trained for classes {list(manifest.class_names)}, "
                f"this platform has {list(CLASS_NAMES)}"
            )
        # Hash and load the same bytes, so what runs is what was verified.
        graph = onnx_path.read_bytes()
        digest = hashlib.sha256(graph).hexdigest()
        if digest != manifest.onnx_sha256:
            raise ModelLoadError(
                f"{onnx_path} sha256 {digest} differs from the manifest's "
                f"{manifest.onnx_sha256}: the file is corrupt or was changed"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1 if threads is None else threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(
                graph, sess_options=options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as exc:  # ONNX Runtime raises its own untyped errors
            raise ModelLoadError(f"{onnx_path} cannot be loaded by ONNX Runtime: {exc}") from exc
        _check_interface(session, manifest)
        try:
            novelty = NoveltyRuntime.load_beside(model_dir, threads=threads, providers=providers)
        except NoveltyLoadError as exc:
            raise ModelLoadError(str(exc)) from None
        runtime = cls(session, manifest, chunk_size=chunk_size, novelty=novelty)
        runtime.predict(runtime.prepare([np.full((26, 26), OUT, dtype=np.uint8)]))  # warm-up
        return runtime

    def prepare(self, maps: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[Any]:
        """This model's input for canonical (rows, cols) maps of any sizes (see `predict`)."""
        return build_input(maps, self._manifest.input)

    @property
    def output_names(self) -> tuple[str, ...]:
        """The graph's outputs (``features`` last when it exposes them)."""
        return tuple(self._cnn_out) if self._manifest.kind == "cnn" else _TRM_OUT

    @property
    def manifest(self) -> ModelManifest:
        """The model's manifest."""
        return self._manifest

    @property
    def version(self) -> str:
        """Model version (``trm-v1.0.0``)."""
        return self._manifest.version

    @property
    def n_sup(self) -> int:
        """Most supervision steps a wafer can take."""
        return self._manifest.n_sup

    def predict(
        self,
        inputs: npt.ArrayLike,
        *,
        halt_threshold: float | None = None,
        max_steps: int | None = None,
    ) -> RuntimeResult:
        """Classify wafers, each stopping at the first step whose halt probability is high.

        Args:
            inputs: what `prepare` builds: (B, 676) canonical die values (0 pass, 1 fail,
                2 out of wafer, any integer dtype) for a token model, (B, C, S, S) fractions
                in [0, 1] for an area model.
            halt_threshold: overrides the manifest's; 0 stops every wafer after one step, a
                value above 1 runs every wafer to ``max_steps``.
            max_steps: at most this many steps (1..n_sup); n_sup by default.

        Raises:
            ValueError: bad shape or values, or ``max_steps`` out of range.
        """
        batch = self._as_input(inputs)
        threshold = self._manifest.halt_threshold if halt_threshold is None else halt_threshold
        limit = self.n_sup if max_steps is None else max_steps
        if not 1 <= limit <= self.n_sup:
            raise ValueError(f"max_steps {max_steps} must be in 1..{self.n_sup}")
        size = batch.shape[0]
        logits = np.empty((size, NUM_CLASSES), dtype=np.float32)
        steps = np.empty(size, dtype=np.int64)
        halt = np.empty(size, dtype=np.float32)
        features: list[npt.NDArray[np.float32]] = []
        for start in range(0, size, self._chunk):
            part = slice(start, start + self._chunk)
            if self._manifest.kind == "cnn":
                logits[part], chunk_features = self._run_cnn(batch[part])
                features += [] if chunk_features is None else [chunk_features]
                steps[part], halt[part] = 1, 1.0
            else:
                logits[part], steps[part], halt[part] = self._run_halting(
                    batch[part], threshold, limit
                )
        probabilities = self._softmax(logits)
        prediction = probabilities.argmax(axis=1).astype(np.int64)
        confidence = probabilities[np.arange(size), prediction]
        return RuntimeResult(
            probabilities=probabilities,
            prediction=prediction,
            confidence=confidence,
            steps=steps,
            halt=halt,
            flagged=needs_review(confidence, self._manifest.review_threshold),
            features=np.concatenate(features) if features else None,
        )

    def predict_all_steps(
        self, inputs: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Every supervision step for every wafer, no halting (per-step evaluation, sweeps).

        Returns:
            probabilities (S, B, classes) float32 and halt probabilities (S, B) float32, with
            S = n_sup (1 for a cnn, whose halt probability is 1.0).
        """
        batch = self._as_input(inputs)
        size, n_steps = batch.shape[0], self.n_sup
        logits = np.empty((n_steps, size, NUM_CLASSES), dtype=np.float32)
        halt = np.ones((n_steps, size), dtype=np.float32)
        for start in range(0, size, self._chunk):
            part = slice(start, start + self._chunk)
            chunk = batch[part]
            if self._manifest.kind == "cnn":
                logits[0, part] = self._run_cnn(chunk)[0]
                continue
            y, z = self._initial_state(chunk.shape[0])
            for step in range(n_steps):
                y, z, logits[step, part], halt[step, part] = self._run_step(chunk, y, z)
        return self._softmax(logits), halt

    def _as_input(self, inputs: npt.ArrayLike) -> npt.NDArray[Any]:
        spec = self._manifest.input
        return as_tokens(inputs) if spec.is_tokens else as_area(inputs, spec)

    def _run_halting(
        self, batch: npt.NDArray[Any], threshold: float, limit: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        size = batch.shape[0]
        logits = np.empty((size, NUM_CLASSES), dtype=np.float32)
        steps = np.empty(size, dtype=np.int64)
        halt = np.empty(size, dtype=np.float32)
        active = np.arange(size)  # rows of `batch` still running
        tokens = batch
        y, z = self._initial_state(size)
        for step in range(1, limit + 1):
            y, z, step_logits, step_halt = self._run_step(tokens, y, z)
            stop = np.ones(active.shape[0], dtype=bool) if step == limit else step_halt >= threshold
            done = active[stop]
            logits[done], steps[done], halt[done] = step_logits[stop], step, step_halt[stop]
            if stop.all():
                break
            # Compact: finished wafers cost nothing in later steps.
            keep = ~stop
            active, tokens, y, z = active[keep], tokens[keep], y[keep], z[keep]
        return logits, steps, halt

    def _run_step(
        self,
        tokens: npt.NDArray[Any],
        y: npt.NDArray[np.float32],
        z: npt.NDArray[np.float32],
    ) -> tuple[
        npt.NDArray[np.float32],
        npt.NDArray[np.float32],
        npt.NDArray[np.float32],
        npt.NDArray[np.float32],
    ]:
        y_next, z_next, logits, halt = self._session.run(
            list(_TRM_OUT), {self._manifest.input_name: tokens, "y": y, "z": z}
        )
        return y_next, z_next, logits, halt

    def _run_cnn(
        self, tokens: npt.NDArray[Any]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        """Logits, and the penultimate features when the graph exposes them."""
        outs = self._session.run(self._cnn_out, {self._manifest.input_name: tokens})
        features = np.asarray(outs[1], dtype=np.float32) if len(outs) > 1 else None
        return np.asarray(outs[0], dtype=np.float32), features

    def _initial_state(self, size: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        assert self._manifest.state_shape is not None  # guaranteed for a trm by the manifest
        shape = (size, *self._manifest.state_shape)
        return np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32)

    def _softmax(self, logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        scaled = logits / np.float32(self._manifest.temperature)
        scaled = scaled - scaled.max(axis=-1, keepdims=True)
        exp: npt.NDArray[np.float32] = np.exp(scaled).astype(np.float32)
        probabilities: npt.NDArray[np.float32] = exp / exp.sum(axis=-1, keepdims=True)
        return probabilities


def _check_interface(session: Any, manifest: ModelManifest) -> None:
    inputs = tuple(i.name for i in session.get_inputs())
    outputs = tuple(o.name for o in session.get_outputs())
    first = (manifest.input_name,)
    expected = ((*first, "y", "z"), _TRM_OUT) if manifest.kind == "trm" else (first, _CNN_OUT)
    if manifest.kind == "cnn" and outputs == (*_CNN_OUT, FEATURES):
        outputs = _CNN_OUT  # with its penultimate features exposed (cloud.export)
    if (inputs, outputs) != expected:
        raise ModelLoadError(
            f"a {manifest.kind} graph must map {expected[0]} to {expected[1]}, "
            f"this one maps {inputs} to {outputs}"
        )
    classes = session.get_outputs()[outputs.index("logits")].shape[-1]
    if isinstance(classes, int) and classes != len(manifest.class_names):
        raise ModelLoadError(
            f"graph has {classes} logits, the manifest {len(manifest.class_names)} classes"
        )
    if manifest.kind == "trm":
        state = tuple(session.get_inputs()[1].shape[1:])
        if state != manifest.state_shape:
            raise ModelLoadError(
                f"graph state shape {list(state)} differs from the manifest's "
                f"{list(manifest.state_shape or ())}"
            )
