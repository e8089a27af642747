"""Per-class thresholds tuned on validation, and the test metrics at them."""

from __future__ import annotations

import numpy as np

from cloud.heads.evaluate import apply_thresholds, score, tune_thresholds
from wafercore.classes import CLASS_NAMES, NUM_CLASSES


def test_a_threshold_is_the_grid_value_with_the_best_one_vs_rest_f1() -> None:
    probs = np.zeros((4, NUM_CLASSES), dtype=np.float32)
    probs[:, 0] = [0.9, 0.4, 0.3, 0.1]
    y = np.array([0, 0, 1, 1])
    thresholds = tune_thresholds(probs, y)
    # Class 0: positives score 0.9 and 0.4, negatives 0.3 and 0.1: a threshold in (0.3, 0.4]
    # separates them (F1 1.0); the grid's first such value is 0.35 (0.3 lets a negative in).
    assert thresholds[0] == 0.35
    # A class without positives keeps 0.5.
    assert thresholds[5] == 0.5


def test_applying_thresholds_picks_the_class_highest_over_its_threshold() -> None:
    probs = np.array([[0.5, 0.4] + [0.0] * 7], dtype=np.float32)
    thresholds = np.full(NUM_CLASSES, 0.5)
    assert apply_thresholds(probs, thresholds).tolist() == [0]
    thresholds[1] = 0.2  # 0.4 / 0.2 = 2 beats 0.5 / 0.5 = 1
    assert apply_thresholds(probs, thresholds).tolist() == [1]


def test_the_score_holds_every_report_metric() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(NUM_CLASSES), 20)
    logits = rng.normal(size=(len(y), NUM_CLASSES))
    logits[np.arange(len(y)), y] += 3.0
    probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    result = score(probs, y, np.full(NUM_CLASSES, 0.5))
    for key in (
        "macro_f1",
        "macro_f1_ci",
        "macro_roc_auc",
        "macro_roc_auc_ci",
        "macro_pr_auc",
        "brier",
        "ece",
        "per_class",
        "confusion_matrix",
        "reliability",
        "thresholds",
    ):
        assert key in result, key
    low, high = result["macro_roc_auc_ci"]
    assert low <= result["macro_roc_auc"] <= high
    assert set(result["per_class"]) == set(CLASS_NAMES)
    assert np.asarray(result["confusion_matrix"]).sum() == len(y)
