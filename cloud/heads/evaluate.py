"""Scoring a trained head as the report does: per-class thresholds tuned on validation, applied
to test; threshold-free metrics on test probabilities; bootstrap 95% intervals."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.evaluation import metrics
from wafercore.classes import CLASS_NAMES

THRESHOLD_GRID = np.round(np.linspace(0.05, 0.95, 19), 2)
"""Decision thresholds swept per class on validation."""
AUC_RESAMPLES = 200
"""Bootstrap resamples of the macro ROC-AUC interval (each scores every class)."""


def tune_thresholds(
    probs: npt.NDArray[np.float32], y: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """Per class, the grid threshold that maximises its one-vs-rest F1 on ``probs`` (0.5 for
    a class without positives)."""
    out = np.full(probs.shape[1], 0.5)
    for c in range(probs.shape[1]):
        positive = y == c
        if not positive.any():
            continue
        best = -1.0
        for t in THRESHOLD_GRID:
            predicted = probs[:, c] >= t
            tp = np.count_nonzero(predicted & positive)
            f1 = 2 * tp / max(np.count_nonzero(predicted) + np.count_nonzero(positive), 1)
            if f1 > best:
                best, out[c] = f1, float(t)
    return out


def apply_thresholds(
    probs: npt.NDArray[np.float32], thresholds: npt.NDArray[np.float64]
) -> npt.NDArray[np.int64]:
    """One class per wafer: the highest probability relative to its class's threshold."""
    return np.asarray((probs / thresholds).argmax(axis=1), dtype=np.int64)


def roc_auc_interval(
    probs: npt.NDArray[np.float32], y: npt.NDArray[np.int64], *, seed: int = 0
) -> list[float]:
    """Percentile 95% bootstrap interval of the macro ROC-AUC (rows resampled)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(AUC_RESAMPLES):
        rows = rng.integers(0, len(y), len(y))
        value = metrics.macro_roc_auc(probs[rows], y[rows])
        if not math.isnan(value):
            values.append(value)
    if not values:
        return [math.nan, math.nan]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def score(
    probs: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    thresholds: npt.NDArray[np.float64],
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """The report's test metrics at the tuned thresholds (and at argmax, for reference)."""
    predicted = apply_thresholds(probs, thresholds)
    classes = len(CLASS_NAMES)
    return {
        "n": len(y),
        "macro_f1": metrics.macro_f1(y, predicted, k=classes),
        "macro_f1_ci": metrics.bootstrap_ci(y, predicted, seed=seed, k=classes)["macro_f1"],
        "macro_f1_argmax": metrics.macro_f1(y, probs.argmax(axis=1), k=classes),
        "accuracy": metrics.accuracy(y, predicted, k=classes),
        "macro_roc_auc": metrics.macro_roc_auc(probs, y),
        "macro_roc_auc_ci": roc_auc_interval(probs, y, seed=seed),
        "macro_pr_auc": metrics.macro_pr_auc(probs, y),
        "brier": metrics.brier(probs, y),
        "ece": metrics.ece(probs, y),
        "per_class": metrics.per_class(y, predicted),
        "confusion_matrix": metrics.confusion_matrix(y, predicted, classes).tolist(),
        "reliability": metrics.reliability_bins(probs, y),
        "thresholds": {name: float(t) for name, t in zip(CLASS_NAMES, thresholds, strict=True)},
    }
