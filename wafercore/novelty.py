"""Serve a novelty model (issue 14) beside the classifier: maps in, novelty score, flag, embedding.

A model directory may hold, beside ``model.onnx`` and ``model.json``, the graph of a VAE of the
known patterns (``novelty.onnx``) and its manifest (``novelty.json``, a `NoveltyManifest`).
`wafercore.runtime.ModelRuntime.load` loads them when they are there, so one signed artifact
carries both and a node always scores novelty with the VAE that was shipped with its classifier.

The graph maps the VAE's own input ``x`` (B, 2, S, S) (`wafercore.model_input`, area fail and
die fractions) to ``score`` (B,), the mean cross-entropy per die of its reconstruction
(`cloud.models.vae.novelty`), ``heatmap`` (B, S, S), the cross-entropy per cell, and
``embedding`` (B, Z), the latent mean (the fab's similar-wafer search uses the classifier's
penultimate features instead where the classifier exposes them: they retrieve better). A
wafer whose score is above the manifest's ``threshold`` (calibrated on validation lots to
``false_alarm_rate`` of known-pattern wafers) is novel.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped]

from wafercore.encoding import OUT
from wafercore.model_input import InputSpec, build_input

NOVELTY_FILE = "novelty.onnx"
"""Name of the novelty graph inside a model directory."""
NOVELTY_MANIFEST_FILE = "novelty.json"
"""Name of its manifest."""
OUTPUTS = ("score", "heatmap", "embedding")
"""The graph's outputs, in this order (the one input is ``x``)."""
QUANTILE_LEVELS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""The levels at which daily aggregates carry the novelty scores' quantiles (0.05 to 0.95)."""
_VERSION = re.compile(r"^vae-v\d+\.\d+\.\d+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class NoveltyLoadError(RuntimeError):
    """A novelty model that cannot be served: bad manifest, tampered or mismatched graph."""


@dataclass(frozen=True)
class NoveltyManifest:
    """What ``novelty.json`` says about ``novelty.onnx``.

    Attributes:
        version: ``vae-v{major}.{minor}.{patch}``.
        onnx_sha256: hex SHA-256 of ``novelty.onnx``; checked on load.
        input: the area input the VAE reads (fail and die channels).
        latent: size Z of the embedding.
        threshold: scores above it are novel.
        false_alarm_rate: share of known-pattern validation wafers above ``threshold``.
        extra: training metadata and evaluation.
    """

    version: str
    onnx_sha256: str
    input: InputSpec
    latent: int
    threshold: float
    false_alarm_rate: float
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not _VERSION.match(self.version):
            problems.append(f"version {self.version!r} is not like 'vae-v1.0.0'")
        if not _SHA256.match(self.onnx_sha256):
            problems.append("onnx_sha256 must be 64 lower-case hex digits")
        if self.input.is_tokens or self.input.channels != ("fail", "die"):
            problems.append("input must be an area input with channels [fail, die]")
        if isinstance(self.latent, bool) or not isinstance(self.latent, int) or self.latent < 1:
            problems.append(f"latent {self.latent!r} must be an integer >= 1")
        if not np.isfinite(self.threshold):
            problems.append(f"threshold {self.threshold} must be a finite number")
        if not 0.0 < self.false_alarm_rate < 1.0:
            problems.append(f"false_alarm_rate {self.false_alarm_rate} must be in (0, 1)")
        if problems:
            raise ValueError("invalid novelty manifest: " + "; ".join(problems))

    def to_json(self) -> str:
        """The manifest as ``novelty.json`` text (sorted keys)."""
        data = {
            "version": self.version,
            "onnx_sha256": self.onnx_sha256,
            "input": self.input.to_json(),
            "latent": self.latent,
            "threshold": self.threshold,
            "false_alarm_rate": self.false_alarm_rate,
            "extra": dict(self.extra),
        }
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> NoveltyManifest:
        """Parse ``novelty.json`` text.

        Raises:
            ValueError: not a JSON object, unknown or missing keys, or values out of range.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"novelty manifest is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("novelty manifest must be a JSON object")
        fields = set(cls.__dataclass_fields__)
        unknown, missing = sorted(set(data) - fields), sorted(fields - {"extra"} - set(data))
        if unknown or missing:
            raise ValueError(f"novelty manifest: unknown keys {unknown}, missing keys {missing}")
        data["input"] = InputSpec.from_json(data["input"])
        data["threshold"] = float(data["threshold"])
        data["false_alarm_rate"] = float(data["false_alarm_rate"])
        return cls(**data)


@dataclass(frozen=True)
class NoveltyResult:
    """Novelty of a batch of B wafers.

    Attributes:
        score: (B,) float32, mean reconstruction cross-entropy per die (higher: less known).
        novel: (B,) bool, ``score`` above the manifest's threshold.
        embedding: (B, Z) float32 latent means (similar wafers are near each other).
    """

    score: npt.NDArray[np.float32]
    novel: npt.NDArray[np.bool_]
    embedding: npt.NDArray[np.float32]


class NoveltyRuntime:
    """One loaded novelty model. Build with `load` (or `load_beside` for a model directory)."""

    def __init__(self, session: Any, manifest: NoveltyManifest) -> None:
        self._session = session
        self._manifest = manifest

    @classmethod
    def load_beside(
        cls, model_dir: Path, *, threads: int | None = None, providers: Sequence[str] | None = None
    ) -> NoveltyRuntime | None:
        """The novelty model of a classifier's directory, or None when it has none.

        Raises:
            NoveltyLoadError: one of its two files is there without the other, or `load` fails.
        """
        present = [(model_dir / n).is_file() for n in (NOVELTY_FILE, NOVELTY_MANIFEST_FILE)]
        if not any(present):
            return None
        if not all(present):
            raise NoveltyLoadError(
                f"{model_dir} has one of {NOVELTY_FILE} and {NOVELTY_MANIFEST_FILE} without the "
                "other"
            )
        return cls.load(model_dir, threads=threads, providers=providers)

    @classmethod
    def load(
        cls, model_dir: Path, *, threads: int | None = None, providers: Sequence[str] | None = None
    ) -> NoveltyRuntime:
        """Load ``novelty.onnx`` and ``novelty.json`` from ``model_dir`` and verify them.

        Raises:
            NoveltyLoadError: a file is missing, the manifest is invalid, the graph's SHA-256
                differs from the manifest's, or its interface does not fit the manifest.
        """
        onnx_path, manifest_path = model_dir / NOVELTY_FILE, model_dir / NOVELTY_MANIFEST_FILE
        try:
            manifest = NoveltyManifest.from_json(manifest_path.read_text(encoding="utf-8"))
            graph = onnx_path.read_bytes()
        except (OSError, ValueError) as exc:
            raise NoveltyLoadError(f"{model_dir}: no valid novelty model: {exc}") from None
        digest = hashlib.sha256(graph).hexdigest()
        if digest != manifest.onnx_sha256:
            raise NoveltyLoadError(
                f"{onnx_path} sha256 {digest} differs from the manifest's "
                f"{manifest.onnx_sha256}: the file is corrupt or was changed"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1 if threads is None else threads
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(
                graph, sess_options=options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as exc:  # ONNX Runtime raises its own untyped errors
            raise NoveltyLoadError(f"{onnx_path} cannot be loaded: {exc}") from exc
        _check_interface(session, manifest)
        return cls(session, manifest)

    @property
    def manifest(self) -> NoveltyManifest:
        """The novelty model's manifest."""
        return self._manifest

    def prepare(self, maps: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        """The VAE's input for canonical (rows, cols) maps of any sizes."""
        return np.asarray(build_input(maps, self._manifest.input), dtype=np.float32)

    def score(self, inputs: npt.NDArray[np.float32]) -> NoveltyResult:
        """Score, flag and embed a batch of prepared inputs (B, 2, S, S)."""
        score, embedding = self._session.run(["score", "embedding"], {"x": self._check(inputs)})
        return self._result(score, embedding)

    def score_with_heatmap(
        self, inputs: npt.NDArray[np.float32]
    ) -> tuple[NoveltyResult, npt.NDArray[np.float32]]:
        """`score`'s result and the per-cell reconstruction error (B, S, S), zero outside the
        wafer, from one run of the graph."""
        score, heatmap, embedding = self._session.run(list(OUTPUTS), {"x": self._check(inputs)})
        return self._result(score, embedding), np.asarray(heatmap, dtype=np.float32)

    def _result(self, score: Any, embedding: Any) -> NoveltyResult:
        scores = np.asarray(score, dtype=np.float32)
        return NoveltyResult(
            score=scores,
            novel=scores > np.float32(self._manifest.threshold),
            embedding=np.asarray(embedding, dtype=np.float32),
        )

    def _check(self, inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        shape = self._manifest.input.shape
        if inputs.ndim != 4 or inputs.shape[1:] != shape:
            raise ValueError(f"novelty inputs must have shape (B, {shape}), got {inputs.shape}")
        return np.ascontiguousarray(inputs, dtype=np.float32)


def score_quantiles(scores: npt.ArrayLike) -> tuple[float, ...]:
    """The scores at `QUANTILE_LEVELS` (empty when there are none), for daily aggregates."""
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        return ()
    return tuple(float(q) for q in np.quantile(values, QUANTILE_LEVELS))


def die_heatmap(
    wafer_map: npt.NDArray[np.uint8],
    cells: npt.NDArray[np.float32],
    die_fraction: npt.NDArray[np.float32],
) -> npt.NDArray[np.float64]:
    """The heatmap of one wafer per die: (rows, cols), NaN outside the wafer.

    ``cells`` is the graph's per-cell error (S, S), weighted by each cell's share of die
    (``die_fraction``, the input's die channel); each die gets the unweighted error of the cell
    under its centre.
    """
    rows, cols = wafer_map.shape
    size = cells.shape[0]
    per_die_cell = np.divide(
        cells, die_fraction, out=np.zeros(cells.shape, dtype=np.float64), where=die_fraction > 0
    )
    r = np.minimum(((np.arange(rows) + 0.5) * size / rows).astype(int), size - 1)
    c = np.minimum(((np.arange(cols) + 0.5) * size / cols).astype(int), size - 1)
    values = per_die_cell[np.ix_(r, c)]
    values[wafer_map == OUT] = np.nan
    return values


def _check_interface(session: Any, manifest: NoveltyManifest) -> None:
    inputs = tuple(i.name for i in session.get_inputs())
    outputs = tuple(o.name for o in session.get_outputs())
    if inputs != ("x",) or outputs != OUTPUTS:
        raise NoveltyLoadError(
            f"a novelty graph must map ('x',) to {OUTPUTS}, this one maps {inputs} to {outputs}"
        )
    latent = session.get_outputs()[2].shape[-1]
    if isinstance(latent, int) and latent != manifest.latent:
        raise NoveltyLoadError(
            f"graph embeds in {latent} dimensions, the manifest says {manifest.latent}"
        )
