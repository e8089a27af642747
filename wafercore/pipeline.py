"""The one classify pipeline: canonical maps -> the model's input -> prediction -> review flag.

The edge node (``/classify``) and the fab server (``ClassifyBatch``) both call `classify_maps`,
so a map gets the same answer, and the same review flag for the same threshold, on either tier.
Maps come in already validated (`wafercore.preprocessing.validate_map` for JSON rows,
`wafercore.validation.map_from_bytes` for the contract's bytes).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from wafercore.model_input import InputSpec
from wafercore.novelty import NoveltyResult, NoveltyRuntime
from wafercore.review import DEFAULT_REVIEW_THRESHOLD, needs_review
from wafercore.runtime import ModelRuntime
from wafercore.second_look import second_look


@dataclass(frozen=True)
class Prediction:
    """One wafer's classification.

    Attributes:
        prediction: class id.
        confidence: probability of the prediction.
        probabilities: per class id (9 entries summing to 1).
        steps: supervision steps taken before halting (1 for a single-pass model).
        latency_ms: the call's preprocessing and inference time, shared equally by its wafers.
        model_version: the model that produced it.
        flagged: confidence below the review threshold (`wafercore.review.needs_review`),
            or the novelty model found the map unlike anything it learned.
        novelty: the novelty model's score (`wafercore.novelty`); None without one.
        novel: the score is above the novelty model's calibrated threshold.
        embedding: where the wafer sits for similar-wafer search (`_embeddings`); None when
            the model exposes no features and has no novelty model.
    """

    prediction: int
    confidence: float
    probabilities: tuple[float, ...]
    steps: int
    latency_ms: float
    model_version: str
    flagged: bool
    novelty: float | None = None
    novel: bool = False
    embedding: tuple[float, ...] | None = None

    @property
    def reason(self) -> str | None:
        """Why it is flagged: ``novelty`` (which says more) before ``low_confidence``."""
        if self.novel:
            return "novelty"
        return "low_confidence" if self.flagged else None


def classify_maps(
    runtime: ModelRuntime,
    maps: Sequence[npt.NDArray[np.uint8]],
    *,
    review_threshold: float = DEFAULT_REVIEW_THRESHOLD,
) -> list[Prediction]:
    """Classify canonical maps with one model; each wafer halts on its own.

    Args:
        runtime: the loaded model.
        maps: 1 or more canonical (rows, cols) uint8 maps (0 pass, 1 fail, 2 out of wafer).
        review_threshold: results with a lower confidence are flagged for review.

    Returns:
        One prediction per map, in order.

    Raises:
        ValueError: no maps.
    """
    if not maps:
        raise ValueError("classify_maps needs at least one map")
    started = time.perf_counter()
    inputs = runtime.prepare(maps)  # the input the model declares
    # Doubtful wafers get their rotations (and flips) averaged, when the model says so.
    first = runtime.predict(inputs)
    predicted = second_look(runtime, inputs, first).result
    novelty = _novelty(runtime.novelty, maps, inputs, runtime.manifest.input)
    embeddings = _embeddings(first.features, novelty)
    latency_ms = (time.perf_counter() - started) * 1000 / len(maps)
    flagged = needs_review(predicted.confidence, review_threshold)
    if novelty is not None:
        flagged = flagged | novelty.novel
    return [
        Prediction(
            prediction=int(predicted.prediction[row]),
            confidence=float(predicted.confidence[row]),
            probabilities=tuple(float(p) for p in predicted.probabilities[row]),
            steps=int(predicted.steps[row]),
            latency_ms=latency_ms,
            model_version=runtime.version,
            flagged=bool(flagged[row]),
            novelty=None if novelty is None else float(novelty.score[row]),
            novel=False if novelty is None else bool(novelty.novel[row]),
            embedding=None if embeddings is None else tuple(embeddings[row].tolist()),
        )
        for row in range(len(maps))
    ]


def _embeddings(
    features: npt.NDArray[np.float32] | None, novelty: NoveltyResult | None
) -> npt.NDArray[np.float32] | None:
    """Where each wafer sits for similar-wafer search: the classifier's penultimate features,
    scaled to unit length (so Euclidean distance ranks as cosine), where the graph exposes them
    (they retrieve same-class wafers far better: docs/novelty.md); else the novelty model's
    latent mean; else nothing."""
    if features is not None:
        flat = features.reshape(len(features), -1)
        norms = np.linalg.norm(flat, axis=1, keepdims=True)
        unit: npt.NDArray[np.float32] = (flat / np.maximum(norms, 1e-12)).astype(np.float32)
        return unit
    return None if novelty is None else novelty.embedding


def _novelty(
    model: NoveltyRuntime | None,
    maps: Sequence[npt.NDArray[np.uint8]],
    inputs: npt.NDArray[Any],
    spec: InputSpec,
) -> NoveltyResult | None:
    """The novelty model's result, from the classifier's input when the two read the same."""
    if model is None:
        return None
    same = spec == model.manifest.input
    return model.score(inputs if same else model.prepare(maps))
