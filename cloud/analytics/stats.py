"""Statistics of drift detection and of the canary's A/B test, as pure functions.

The libraries do the statistics (scipy: KS, linear regression, bootstrap; statsmodels: the
two-proportion z-test and Wilson intervals; scikit-learn: F1); this module validates inputs,
fixes the conventions and turns degenerate cases into defined answers.

Conventions:
    * Class ids are ``0 .. NUM_CLASSES - 1`` (`wafercore.classes`); reviewed samples are
      ``(true, predicted)`` pairs of class ids.
    * Macro-F1 here averages over the classes present in the true OR the predicted labels
      (scikit-learn's default label set): a class the model predicts but that never occurs
      counts as F1 0 against it, and a class absent from both says nothing and is skipped.
      (`cloud.evaluation.metrics.macro_f1` averages over true classes only; for comparing two
      arms, punishing spurious predictions matters.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from cloud.settings import DriftSettings
from wafercore.classes import CLASS_NAMES, NUM_CLASSES

PSI_FLOOR = 1e-4
"""Smallest class probability in `psi`: an empty class gets this share before the vector is
renormalised, so ln(p_cur / p_ref) stays finite."""

Band = Literal["stable", "investigate", "retrain"]
Alternative = Literal["two-sided", "larger", "smaller"]
Pairs = Sequence[tuple[int, int]]


# ------------------------------------------------------------------------------ drift: PSI, KS


def class_shares(counts: npt.ArrayLike, name: str = "counts") -> npt.NDArray[np.float64]:
    """The 9 class proportions of ``counts`` as `psi` uses them: each at least `PSI_FLOOR`,
    renormalised to sum 1.

    Raises:
        ValueError: wrong length, a negative or non-finite entry, or all zero (naming ``name``).
    """
    arr = np.asarray(counts, dtype=np.float64)
    if arr.shape != (NUM_CLASSES,):
        raise ValueError(f"{name} must hold {NUM_CLASSES} class counts, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    if np.any(arr < 0):
        raise ValueError(f"{name} must not be negative")
    total = arr.sum()
    if total <= 0:
        raise ValueError(f"{name} must not be all zero")
    p: npt.NDArray[np.float64] = np.maximum(arr / total, PSI_FLOOR)
    normalised: npt.NDArray[np.float64] = p / p.sum()
    return normalised


def psi(reference_counts: npt.ArrayLike, current_counts: npt.ArrayLike) -> float:
    """Population Stability Index of the predicted-class mix (brief §4).

    ``PSI = sum_i (p_cur_i - p_ref_i) * ln(p_cur_i / p_ref_i)`` over the 9 classes, on
    proportions. Each proportion is first raised to at least `PSI_FLOOR` (1e-4) and the vector
    renormalised to sum 1, so an empty class gives a finite PSI. Identical mixes give 0.

    Args:
        reference_counts: 9 counts (or shares) of the reference distribution.
        current_counts: 9 counts of the current window.

    Raises:
        ValueError: an argument has the wrong length, a negative or non-finite entry, or sums
            to zero (the message names the argument).
    """
    ref = class_shares(reference_counts, "reference_counts")
    cur = class_shares(current_counts, "current_counts")
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def psi_band(value: float, settings: DriftSettings) -> Band:
    """The brief's reading of a PSI: below ``psi_investigate`` stable, above ``psi_retrain``
    retrain, in between (both ends included) investigate."""
    if value < settings.psi_investigate:
        return "stable"
    if value > settings.psi_retrain:
        return "retrain"
    return "investigate"


def ks_test(reference: npt.ArrayLike, current: npt.ArrayLike) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test (scipy ``ks_2samp``, two-sided) of score samples.

    Returns:
        (statistic, p_value).

    Raises:
        ValueError: a sample is empty, not 1-D or not finite.
    """
    from scipy.stats import ks_2samp

    samples = []
    for name, values in (("reference", reference), ("current", current)):
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"{name} must be a non-empty 1-D sample, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite")
        samples.append(arr)
    result = ks_2samp(samples[0], samples[1])
    return float(result.statistic), float(result.pvalue)


# ----------------------------------------------------------------------------- halting trend


@dataclass(frozen=True)
class Trend:
    """Linear trend of the daily average halting steps.

    Attributes:
        slope_per_day: steps per wafer gained per day.
        p_value: of the slope (scipy ``linregress``, two-sided; 1.0 when the steps are flat).
        rising: slope > 0 and p_value < alpha: the brief's early warning.
        days: distinct days with wafers that the line was fitted to.
    """

    slope_per_day: float
    p_value: float
    rising: bool
    days: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def halting_trend(
    days: Sequence[date],
    avg_steps: Sequence[float],
    weights: Sequence[float],
    settings: DriftSettings,
) -> Trend | None:
    """Trend of average halting steps over days (scipy ``linregress`` on daily means).

    Rows may repeat a day (one per node): each day's value is the ``weights``-weighted mean of
    its rows (weights = wafers classified), and rows of weight 0 are ignored.

    Args:
        days: the UTC day of each row.
        avg_steps: the row's average supervision steps per wafer.
        weights: the row's wafers.
        settings: ``halting_min_days`` and ``alpha``.

    Returns:
        The trend, or None with fewer than ``halting_min_days`` days that have wafers.

    Raises:
        ValueError: the sequences differ in length, or a weight is negative.
    """
    from scipy.stats import linregress

    if not len(days) == len(avg_steps) == len(weights):
        raise ValueError(
            f"days ({len(days)}), avg_steps ({len(avg_steps)}) and weights ({len(weights)}) "
            "must have the same length"
        )
    if any(w < 0 for w in weights):
        raise ValueError("weights must not be negative")
    totals: dict[date, list[float]] = {}
    for day, steps, weight in zip(days, avg_steps, weights, strict=True):
        if weight > 0:
            acc = totals.setdefault(day, [0.0, 0.0])
            acc[0] += float(steps) * weight
            acc[1] += weight
    if len(totals) < settings.halting_min_days:
        return None
    first = min(totals)
    x = [float((d - first).days) for d in sorted(totals)]
    y = [totals[d][0] / totals[d][1] for d in sorted(totals)]
    fit = linregress(x, y)
    slope = float(fit.slope)
    p_value = float(fit.pvalue) if math.isfinite(fit.pvalue) else 1.0  # flat steps: nan
    return Trend(
        slope_per_day=slope,
        p_value=p_value,
        rising=slope > 0 and p_value < settings.alpha,
        days=len(totals),
    )


# ------------------------------------------------------------------------- reviewed accuracy


@dataclass(frozen=True)
class ClassAccuracy:
    """Reviewed accuracy of one true class, with its Wilson interval."""

    n: int
    correct: int
    accuracy: float
    low: float
    high: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def wilson(correct: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of ``correct / n`` (statsmodels ``proportion_confint``)."""
    from statsmodels.stats.proportion import proportion_confint

    if n <= 0 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n and n > 0, got correct={correct}, n={n}")
    low, high = proportion_confint(correct, n, alpha=alpha, method="wilson")
    return float(low), float(high)


def _pairs_array(pairs: Pairs, name: str) -> npt.NDArray[np.int64]:
    arr = np.asarray(list(pairs), dtype=np.int64).reshape(-1, 2)
    if arr.size and (arr.min() < 0 or arr.max() >= NUM_CLASSES):
        raise ValueError(f"{name} must hold class ids in [0, {NUM_CLASSES})")
    return arr


def class_accuracy(pairs: Pairs, alpha: float = 0.05) -> dict[str, ClassAccuracy]:
    """Reviewed accuracy per true class with a Wilson interval at level ``1 - alpha``.

    Args:
        pairs: reviewed samples as (true class id, predicted class id).
        alpha: 1 - the interval's coverage.

    Returns:
        ``{class display name: ClassAccuracy}`` for the true classes present, in class order.
    """
    arr = _pairs_array(pairs, "pairs")
    out: dict[str, ClassAccuracy] = {}
    for c in range(NUM_CLASSES):
        rows = arr[arr[:, 0] == c]
        n = len(rows)
        if n:
            correct = int(np.count_nonzero(rows[:, 1] == c))
            low, high = wilson(correct, n, alpha)
            out[CLASS_NAMES[c]] = ClassAccuracy(n, correct, correct / n, low, high)
    return out


# ------------------------------------------------------------------------ macro-F1, bootstrap


def macro_f1(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    """Macro-F1 over the classes present in ``y_true`` or ``y_pred`` (scikit-learn's default
    label set, ``zero_division=0``); 0.0 for no rows."""
    from sklearn.metrics import f1_score

    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} must be equal-length 1-D")
    if t.size == 0:
        return 0.0
    return float(f1_score(t, p, average="macro", zero_division=0))


def _batched_macro_f1(
    true: npt.NDArray[np.int64], pred: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """`macro_f1` of every row of (B, n) label arrays at once, via B confusion matrices (one
    call per resample through scikit-learn would cost seconds per decision)."""
    k = NUM_CLASSES
    batch = true.shape[0]
    codes = true * k + pred + (np.arange(batch) * k * k)[:, None]
    cm = np.bincount(codes.ravel(), minlength=batch * k * k).reshape(batch, k, k)
    tp = np.diagonal(cm, axis1=1, axis2=2).astype(np.float64)
    seen = (cm.sum(axis=2) + cm.sum(axis=1)).astype(np.float64)  # support + predicted
    f1 = np.divide(2 * tp, seen, out=np.zeros_like(tp), where=seen > 0)
    present = seen > 0
    macro: npt.NDArray[np.float64] = f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    return macro


def bootstrap_f1_difference(
    canary: Pairs,
    control: Pairs,
    resamples: int,
    confidence: float,
    seed: int,
) -> tuple[float, float, float]:
    """Macro-F1(canary) - macro-F1(control) with a percentile bootstrap interval.

    scipy ``bootstrap`` resamples the two arms independently (``paired=False``); each sample
    is the indices of that arm's (true, predicted) pairs, so one resample is a resample of
    reviewed wafers. The percentile method is used (as in `cloud.evaluation.metrics`): it is
    defined for every input, including arms whose every resample scores the same.

    Args:
        canary: reviewed samples of the canary arm, (true, predicted) class ids.
        control: the same for the control arm.
        resamples: bootstrap resamples.
        confidence: two-sided coverage of the interval (0.95).
        seed: seed of the resampling (a decision must be reproducible).

    Returns:
        (difference on the observed samples, interval low, interval high).

    Raises:
        ValueError: an arm is empty (callers check sample sizes first) or holds bad class ids.
    """
    from scipy.stats import bootstrap

    arms = [_pairs_array(canary, "canary"), _pairs_array(control, "control")]
    for name, arm in zip(("canary", "control"), arms, strict=True):
        if len(arm) == 0:
            raise ValueError(f"{name} has no reviewed samples")
    (ct, cp), (kt, kp) = (arm.T for arm in arms)

    def statistic(
        ic: npt.NDArray[Any], ik: npt.NDArray[Any], axis: int = -1
    ) -> npt.NDArray[np.float64]:
        ic = np.atleast_2d(np.asarray(ic, dtype=np.int64))
        ik = np.atleast_2d(np.asarray(ik, dtype=np.int64))
        return _batched_macro_f1(ct[ic], cp[ic]) - _batched_macro_f1(kt[ik], kp[ik])

    diff = macro_f1(ct, cp) - macro_f1(kt, kp)
    result = bootstrap(
        (np.arange(len(ct)), np.arange(len(kt))),
        statistic,
        n_resamples=resamples,
        batch=min(resamples, 500),
        vectorized=True,
        paired=False,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return float(diff), float(low), float(high)


# ----------------------------------------------------------------------- two proportions


def _check_count(count: int, n: int, name: str) -> None:
    if n <= 0:
        raise ValueError(f"n_{name} must be positive, got {n}")
    if not 0 <= count <= n:
        raise ValueError(f"count_{name} must lie in [0, n_{name}={n}], got {count}")


def two_proportion(
    count_a: int,
    n_a: int,
    count_b: int,
    n_b: int,
    alternative: Alternative = "two-sided",
    *,
    value: float = 0.0,
) -> tuple[float, float]:
    """Pooled two-proportion z-test (statsmodels ``proportions_ztest``) of p_a - p_b - value.

    ``alternative="larger"`` tests H1: p_a - p_b > value. With zero pooled variance (both
    proportions 0, or both 1) the answer is defined rather than NaN: z = 0 and p = 1.0 when the
    tested difference is 0, else z = ±inf and p = 0.0 or 1.0 as the alternative reads.

    Returns:
        (z, p_value).

    Raises:
        ValueError: a total is not positive or a count lies outside [0, total].
    """
    from statsmodels.stats.proportion import proportions_ztest

    _check_count(count_a, n_a, "a")
    _check_count(count_b, n_b, "b")
    pooled = (count_a + count_b) / (n_a + n_b)
    if pooled in (0.0, 1.0):
        diff = count_a / n_a - count_b / n_b - value
        if diff == 0:
            return 0.0, 1.0
        z = math.copysign(math.inf, diff)
        wins = {"two-sided": True, "larger": diff > 0, "smaller": diff < 0}[alternative]
        return z, 0.0 if wins else 1.0
    z, p = proportions_ztest(
        np.array([count_a, count_b]),
        np.array([n_a, n_b]),
        value=value,
        alternative=alternative,
    )
    return float(z), float(p)
