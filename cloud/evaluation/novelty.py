"""The novelty score's figures (issue 14; the VAE brief's metrics), as pure functions.

Higher scores are more novel. A threshold is calibrated on known patterns to a false-alarm
rate; against wafers of a class the model never saw, the score is judged by AUROC, AUPRC and
the miss rate at 5% false alarms; and against the classifier's own doubt (``1 - max softmax``)
by whether adding it catches more misclassified wafers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

FALSE_ALARM_RATE = 0.01
"""Default share of known-pattern wafers flagged as novel."""
REPORT_FPR = 0.05
"""False-positive rate at which the miss rate (FNR) is reported."""


def calibrate_threshold(
    known_scores: npt.ArrayLike, false_alarm_rate: float = FALSE_ALARM_RATE
) -> float:
    """The score above which at most ``false_alarm_rate`` of known-pattern wafers lie.

    Raises:
        ValueError: no scores, or a rate outside (0, 1).
    """
    scores = np.asarray(known_scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("known_scores is empty: nothing to calibrate on")
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
    return float(np.quantile(scores, 1.0 - false_alarm_rate, method="higher"))


def novelty_metrics(known_scores: npt.ArrayLike, novel_scores: npt.ArrayLike) -> dict[str, Any]:
    """AUROC and AUPRC of novel (positive) against known wafers, and the miss rate of the
    novel ones at the threshold that flags `REPORT_FPR` of the known.

    Raises:
        ValueError: either group is empty.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    known = np.asarray(known_scores, dtype=np.float64)
    novel = np.asarray(novel_scores, dtype=np.float64)
    if known.size == 0 or novel.size == 0:
        raise ValueError("novelty_metrics needs known and novel scores")
    y = np.concatenate([np.zeros(known.size), np.ones(novel.size)])
    scores = np.concatenate([known, novel])
    threshold = calibrate_threshold(known, REPORT_FPR)
    return {
        "auroc": float(roc_auc_score(y, scores)),
        "auprc": float(average_precision_score(y, scores)),
        "threshold_at_5pct_fpr": threshold,
        "fpr": float(np.mean(known > threshold)),
        "fnr_at_5pct_fpr": float(np.mean(novel <= threshold)),
        "known": int(known.size),
        "novel": int(novel.size),
    }


def misclassification_auroc(
    max_softmax: npt.ArrayLike, novelty: npt.ArrayLike, misclassified: npt.ArrayLike
) -> dict[str, float]:
    """How well the classifier's doubt alone, and with the novelty score, ranks its errors.

    The combination averages the two signals' ranks (no scale to tune). NaN when every wafer
    is right or every one is wrong.
    """
    from sklearn.metrics import roc_auc_score

    wrong = np.asarray(misclassified, dtype=bool)
    doubt = 1.0 - np.asarray(max_softmax, dtype=np.float64)
    novel = np.asarray(novelty, dtype=np.float64)
    if wrong.all() or not wrong.any():
        return {"doubt": float("nan"), "doubt_and_novelty": float("nan")}
    combined = rankdata(doubt) + rankdata(novel)
    return {
        "doubt": float(roc_auc_score(wrong, doubt)),
        "doubt_and_novelty": float(roc_auc_score(wrong, combined)),
    }
