"""The novelty score's figures against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cloud.evaluation.novelty import calibrate_threshold, misclassification_auroc, novelty_metrics


def test_the_threshold_flags_at_most_the_false_alarm_rate_of_known_wafers() -> None:
    known = np.arange(1, 101, dtype=float)  # 1..100
    threshold = calibrate_threshold(known, 0.01)
    assert threshold == 100.0 and np.mean(known > threshold) <= 0.01
    assert calibrate_threshold(known, 0.10) == 91.0  # 9 of 100 above it
    with pytest.raises(ValueError, match="empty"):
        calibrate_threshold([], 0.01)
    with pytest.raises(ValueError, match="false_alarm_rate"):
        calibrate_threshold(known, 1.0)


def test_separated_groups_score_perfectly_and_overlapping_ones_by_hand() -> None:
    perfect = novelty_metrics(np.arange(100.0), np.arange(200.0, 210.0))
    assert perfect["auroc"] == 1.0 and perfect["auprc"] == pytest.approx(1.0)
    assert perfect["fnr_at_5pct_fpr"] == 0.0 and perfect["fpr"] <= 0.05
    # Known 0, 1, 2, 3; novel 1.5, 4: of the 8 (novel, known) pairs the novel one is higher
    # in 6 (1.5 beats 0 and 1; 4 beats all four).
    by_hand = novelty_metrics([0.0, 1.0, 2.0, 3.0], [1.5, 4.0])
    assert by_hand["auroc"] == pytest.approx(6 / 8)
    # At the 95% quantile of the known (3.0), 1.5 is missed and 4.0 caught: FNR 1/2.
    assert by_hand["threshold_at_5pct_fpr"] == 3.0 and by_hand["fnr_at_5pct_fpr"] == 0.5
    with pytest.raises(ValueError):
        novelty_metrics([], [1.0])


def test_the_novelty_score_can_add_to_the_classifiers_doubt() -> None:
    wrong = np.array([0, 0, 0, 0, 1, 1], dtype=bool)
    confident_errors = np.array([0.6, 0.7, 0.8, 0.9, 0.95, 0.65])  # doubt ranks them badly
    novelty = np.array([0.1, 0.2, 0.1, 0.3, 0.9, 0.8])  # novelty ranks them first
    result = misclassification_auroc(confident_errors, novelty, wrong)
    assert result["doubt"] == pytest.approx(3 / 8)
    assert result["doubt_and_novelty"] > result["doubt"]
    none_wrong = misclassification_auroc(confident_errors, novelty, np.zeros(6, dtype=bool))
    assert math.isnan(none_wrong["doubt"])
