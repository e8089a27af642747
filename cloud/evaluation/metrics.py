"""Classification, calibration and halting metrics for wafer defect models, in NumPy.

Conventions shared by every function:
    * Labels are class ids in ``[0, k)`` (k = 9 by default), probabilities are (N, k) rows.
    * A ratio over nothing (precision of a class never predicted, recall of a class absent from
      the data) is 0, never NaN, and raises no warning.
    * Macro averages run over the classes present in ``y_true`` (support > 0): a class absent
      from an evaluation set says nothing about the model, and counting it as F1 = 0 would
      penalise small or filtered sets (a lot, a size bucket) for what they do not contain. This
      equals scikit-learn's ``f1_score(average="macro", labels=<classes in y_true>)``.
    * One-vs-rest AUCs skip classes with no positives (and ROC-AUC also classes with no
      negatives): the curve is undefined there. With no class left they are NaN.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from wafercore.classes import CLASS_NAMES, NUM_CLASSES

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

SIZE_BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("<30", 0, 30),
    ("30-39", 30, 40),
    ("40-49", 40, 50),
    ("50-69", 50, 70),
    (">=70", 70, None),
)
"""Map-size buckets (label, lowest, highest + 1) by max(rows, cols) of the raw map."""

DEFAULT_HALT_THRESHOLDS: tuple[float, ...] = (
    *(round(0.5 + 0.01 * i, 2) for i in range(50)),
    1.01,
)
"""Halting thresholds swept by `tune_halt_threshold`: 0.50 to 0.99, and 1.01 (never halt)."""


def _labels(y: npt.ArrayLike, k: int, name: str = "labels") -> Ints:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer class ids, got {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= k):
        raise ValueError(f"{name} must lie in [0, {k})")
    return arr


def _pair(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, k: int) -> tuple[Ints, Ints]:
    t, p = _labels(y_true, k, "y_true"), _labels(y_pred, k, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in length")
    return t, p


def _probs(probs: npt.ArrayLike, y_true: npt.ArrayLike) -> tuple[Floats, Ints]:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be (N, k), got shape {p.shape}")
    y = _labels(y_true, p.shape[1], "y_true")
    if len(y) != len(p):
        raise ValueError(f"probs has {len(p)} rows, y_true {len(y)}")
    return p, y


def _ratio(num: npt.ArrayLike, den: npt.ArrayLike) -> Floats:
    n, d = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(n, d, out=np.zeros(np.broadcast_shapes(n.shape, d.shape)), where=d > 0)


def confusion_matrix(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, k: int = NUM_CLASSES) -> Ints:
    """(k, k) counts, rows the true class and columns the predicted one."""
    t, p = _pair(y_true, y_pred, k)
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def _prf(cm: npt.NDArray[Any]) -> tuple[Floats, Floats, Floats, Floats]:
    """Precision, recall, F1 and support per class of (..., k, k) confusion matrices."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    support = cm.sum(axis=-1).astype(np.float64)  # true counts
    predicted = cm.sum(axis=-2).astype(np.float64)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * tp, support + predicted)  # = 2PR / (P + R), 0 when tp = 0
    return precision, recall, f1, support


def _macro_f1_from_cm(cm: npt.NDArray[Any]) -> Floats:
    _, _, f1, support = _prf(cm)
    present = support > 0
    return _ratio((f1 * present).sum(axis=-1), present.sum(axis=-1))


def per_class(
    y_true: npt.ArrayLike,
    y_pred: npt.ArrayLike,
    names: tuple[str, ...] = CLASS_NAMES,
) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of every class, keyed by class name.

    Args:
        y_true: (N,) true class ids.
        y_pred: (N,) predicted class ids.
        names: class names indexed by id; their number is k.

    Returns:
        ``{name: {"precision", "recall", "f1", "support"}}`` for all k classes, support as an
        int and undefined ratios as 0.
    """
    cm = confusion_matrix(y_true, y_pred, len(names))
    precision, recall, f1, support = _prf(cm)
    return {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }


def macro_f1(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, k: int = NUM_CLASSES) -> float:
    """Mean F1 over the classes present in ``y_true`` (see the module notes); 0 for no rows."""
    return float(_macro_f1_from_cm(confusion_matrix(y_true, y_pred, k)))


def accuracy(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, k: int = NUM_CLASSES) -> float:
    """Share of rows predicted right; 0 for no rows."""
    t, p = _pair(y_true, y_pred, k)
    return float(np.mean(t == p)) if len(t) else 0.0


def reliability_bins(
    probs: npt.ArrayLike, y_true: npt.ArrayLike, bins: int = 15
) -> list[dict[str, Any]]:
    """Top-label reliability diagram: per equal-width confidence bin, its count, mean confidence
    and accuracy (bins ``(i/bins, (i+1)/bins]``, the first one closed at 0)."""
    p, y = _probs(probs, y_true)
    conf, correct = p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    mean_conf = _ratio(np.bincount(idx, conf, bins), count)
    acc = _ratio(np.bincount(idx, correct, bins), count)
    return [
        {
            "lower": i / bins,
            "upper": (i + 1) / bins,
            "count": int(count[i]),
            "confidence": float(mean_conf[i]),
            "accuracy": float(acc[i]),
        }
        for i in range(bins)
    ]


def ece(probs: npt.ArrayLike, y_true: npt.ArrayLike, bins: int = 15) -> float:
    """Top-label expected calibration error: sum over bins of |accuracy - confidence| weighted
    by the share of rows in the bin; 0 for no rows."""
    table = reliability_bins(probs, y_true, bins)
    n = sum(b["count"] for b in table)
    if n == 0:
        return 0.0
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in table) / n)


def brier(probs: npt.ArrayLike, y_true: npt.ArrayLike) -> float:
    """Multi-class Brier score: mean over rows of the summed squared error to the one-hot label
    (0 perfect, 2 worst)."""
    p, y = _probs(probs, y_true)
    if len(y) == 0:
        return 0.0
    sq = (p**2).sum(axis=1) - 2 * p[np.arange(len(y)), y] + 1.0
    return float(sq.mean())


def macro_roc_auc(probs: npt.ArrayLike, y_true: npt.ArrayLike) -> float:
    """Mean one-vs-rest ROC-AUC over classes with positives and negatives; NaN if none has."""
    from sklearn.metrics import roc_auc_score

    p, y = _probs(probs, y_true)
    scores = [
        roc_auc_score(y == c, p[:, c])
        for c in range(p.shape[1])
        if 0 < np.count_nonzero(y == c) < len(y)
    ]
    return float(np.mean(scores)) if scores else math.nan


def macro_pr_auc(probs: npt.ArrayLike, y_true: npt.ArrayLike) -> float:
    """Mean one-vs-rest average precision (PR-AUC) over classes with positives; NaN if none."""
    from sklearn.metrics import average_precision_score

    p, y = _probs(probs, y_true)
    scores = [
        average_precision_score(y == c, p[:, c])
        for c in range(p.shape[1])
        if np.count_nonzero(y == c) > 0
    ]
    return float(np.mean(scores)) if scores else math.nan


def bootstrap_ci(
    y_true: npt.ArrayLike,
    y_pred: npt.ArrayLike,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    k: int = NUM_CLASSES,
) -> dict[str, list[float]]:
    """Percentile bootstrap confidence intervals of accuracy and macro-F1.

    Resampling N rows with replacement and counting them into a confusion matrix is the same as
    drawing the matrix from a multinomial over its k*k cells with the observed cell shares, so
    each resample costs O(k^2), not O(N): 1000 resamples of 100k rows take milliseconds.

    Args:
        y_true: (N,) true class ids.
        y_pred: (N,) predicted class ids.
        n: number of resamples.
        seed: seed of the resampling.
        level: coverage of the interval.
        k: number of classes.

    Returns:
        ``{"accuracy": [lo, hi], "macro_f1": [lo, hi]}``; zeros for no rows.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    cm = confusion_matrix(y_true, y_pred, k)
    total = int(cm.sum())
    if total == 0:
        return {"accuracy": [0.0, 0.0], "macro_f1": [0.0, 0.0]}
    rng = np.random.default_rng(seed)
    cells = rng.multinomial(total, cm.ravel() / total, size=n).reshape(n, k, k)
    acc = np.trace(cells, axis1=1, axis2=2) / total  # (n,)
    f1 = _macro_f1_from_cm(cells)  # (n,)
    q = [(1.0 - level) / 2, 1.0 - (1.0 - level) / 2]
    return {
        "accuracy": [float(v) for v in np.quantile(acc, q)],
        "macro_f1": [float(v) for v in np.quantile(f1, q)],
    }


def _nll(logits: Floats, y: Ints, temperature: float) -> float:
    z = logits / temperature
    top = z.max(axis=1)
    lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(y)), y]))


def fit_temperature(
    logits: npt.ArrayLike,
    y_true: npt.ArrayLike,
    bounds: tuple[float, float] = (0.05, 20.0),
    tol: float = 1e-5,
) -> float:
    """Temperature T minimising the NLL of softmax(logits / T) (temperature scaling).

    The NLL is convex in 1/T, hence unimodal in log T: a golden-section search on log T over
    ``bounds`` finds the minimum (or the bound it lies beyond).

    Args:
        logits: (N, k) raw model outputs.
        y_true: (N,) true class ids.
        bounds: search interval of T.
        tol: stopping width of the interval, in log T.

    Returns:
        The fitted temperature; 1.0 for no rows.
    """
    z = np.asarray(logits, dtype=np.float64)
    z, y = _probs(z, y_true)
    if len(y) == 0:
        return 1.0
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll(z, y, math.exp(a)), _nll(z, y, math.exp(b))
    while hi - lo > tol:
        if fa <= fb:  # the minimum lies in [lo, b]
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _nll(z, y, math.exp(a))
        else:  # in [a, hi]
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll(z, y, math.exp(b))
    return math.exp((lo + hi) / 2)


def per_step_accuracy(probs_per_step: npt.ArrayLike, y_true: npt.ArrayLike) -> list[float]:
    """Accuracy of the answer after each supervision step, (S, N, k) probabilities → S values."""
    steps = np.asarray(probs_per_step, dtype=np.float64)
    y = _labels(y_true, steps.shape[-1], "y_true")
    return [accuracy(y, s.argmax(axis=1), steps.shape[-1]) for s in steps]


def halted_predictions(
    probs_per_step: npt.ArrayLike, halt: npt.ArrayLike, threshold: float
) -> tuple[Floats, Ints]:
    """Apply the halting rule: each wafer stops at the first step whose halt probability is at
    least ``threshold``, or at the last step.

    Args:
        probs_per_step: (S, N, k) class probabilities after each step.
        halt: (S, N) halting probabilities after each step.
        threshold: halting threshold (0 stops every wafer after one step, > 1 never halts).

    Returns:
        (N, k) probabilities at the step each wafer stopped, and (N,) steps used (1..S).
    """
    p = np.asarray(probs_per_step, dtype=np.float64)
    h = np.asarray(halt, dtype=np.float64)
    if p.ndim != 3 or h.shape != p.shape[:2] or p.shape[0] == 0:
        raise ValueError(f"need probs (S, N, k) and halt (S, N), got {p.shape} and {h.shape}")
    stop = h >= threshold  # (S, N)
    stop[-1] = True
    first = stop.argmax(axis=0)  # (N,) index of the first True
    return p[first, np.arange(p.shape[1])], first.astype(np.int64) + 1


def tune_halt_threshold(
    probs_per_step: npt.ArrayLike,
    halt: npt.ArrayLike,
    y_true: npt.ArrayLike,
    max_f1_drop: float = 0.005,
    thresholds: tuple[float, ...] = DEFAULT_HALT_THRESHOLDS,
) -> tuple[float, list[dict[str, float]]]:
    """Cheapest halting threshold that keeps macro-F1 within ``max_f1_drop`` of never halting.

    Args:
        probs_per_step: (S, N, k) class probabilities after each step.
        halt: (S, N) halting probabilities after each step.
        y_true: (N,) true class ids.
        max_f1_drop: largest macro-F1 loss accepted against running every step.
        thresholds: candidates to sweep.

    Returns:
        The chosen threshold (fewest average steps among those within the drop; ties go to the
        higher macro-F1, then the higher threshold), and the sweep: one
        ``{threshold, avg_steps, accuracy, macro_f1}`` per candidate, in the given order.
    """
    p = np.asarray(probs_per_step, dtype=np.float64)
    y = _labels(y_true, p.shape[-1], "y_true")
    k = p.shape[-1]
    reference = macro_f1(y, p[-1].argmax(axis=1), k)
    sweep = []
    for t in thresholds:
        probs, steps = halted_predictions(p, halt, t)
        pred = probs.argmax(axis=1)
        sweep.append(
            {
                "threshold": float(t),
                "avg_steps": float(steps.mean()) if len(steps) else 0.0,
                "accuracy": accuracy(y, pred, k),
                "macro_f1": macro_f1(y, pred, k),
            }
        )
    # The tolerance absorbs float noise in "exactly max_f1_drop below".
    ok = [r for r in sweep if r["macro_f1"] >= reference - max_f1_drop - 1e-12]
    if not ok:  # only when no candidate reaches the last step; fall back to the best F1
        ok = [max(sweep, key=lambda r: r["macro_f1"])]
    best = min(ok, key=lambda r: (r["avg_steps"], -r["macro_f1"], -r["threshold"]))
    return best["threshold"], sweep


def size_bucket_accuracy(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike, shapes: npt.ArrayLike, k: int = NUM_CLASSES
) -> list[dict[str, Any]]:
    """Accuracy and macro-F1 per map-size bucket (`SIZE_BUCKETS`), the size-invariance check.

    Args:
        y_true: (N,) true class ids.
        y_pred: (N,) predicted class ids.
        shapes: (N, 2) raw (rows, cols) of each map, before resizing to the grid.
        k: number of classes.

    Returns:
        One ``{bucket, n, accuracy, macro_f1}`` per bucket in order; the metrics are None for
        an empty bucket.
    """
    t, p = _pair(y_true, y_pred, k)
    s = np.asarray(shapes).reshape(-1, 2)
    if len(s) != len(t):
        raise ValueError(f"shapes has {len(s)} rows, y_true {len(t)}")
    side = s.max(axis=1) if len(s) else np.zeros(0, np.int64)
    out = []
    for label, low, high in SIZE_BUCKETS:
        mask = (side >= low) & (side < high if high is not None else True)
        n = int(mask.sum())
        out.append(
            {
                "bucket": label,
                "n": n,
                "accuracy": accuracy(t[mask], p[mask], k) if n else None,
                "macro_f1": macro_f1(t[mask], p[mask], k) if n else None,
            }
        )
    return out


def confusion_pairs(cm: npt.ArrayLike, top: int = 5) -> list[dict[str, Any]]:
    """The ``top`` most frequent mistakes of a confusion matrix, by decreasing count:
    ``{true, predicted, count, share_of_true}`` (class ids; share of the true class's rows)."""
    c = np.asarray(cm, dtype=np.int64)
    off = c * (1 - np.eye(len(c), dtype=np.int64))
    rows = c.sum(axis=1)
    out = []
    for flat in np.argsort(-off, axis=None, kind="stable")[:top]:
        i, j = divmod(int(flat), c.shape[1])
        if off[i, j]:
            out.append(
                {
                    "true": i,
                    "predicted": j,
                    "count": int(off[i, j]),
                    "share_of_true": float(off[i, j] / rows[i]),
                }
            )
    return out


def top_errors(probs: npt.ArrayLike, y_true: npt.ArrayLike, top: int = 12) -> list[dict[str, Any]]:
    """The ``top`` most confident mistakes, by decreasing confidence:
    ``{index, true, predicted, confidence, true_prob}`` (class ids)."""
    p, y = _probs(probs, y_true)
    pred, conf = p.argmax(axis=1), p.max(axis=1)
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-conf[wrong], kind="stable")][:top]
    return [
        {
            "index": int(i),
            "true": int(y[i]),
            "predicted": int(pred[i]),
            "confidence": float(conf[i]),
            "true_prob": float(p[i, y[i]]),
        }
        for i in wrong
    ]
