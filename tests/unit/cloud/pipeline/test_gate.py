"""The promotion gate: champion + gain, accuracy, every class F1, p99 latency."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.pipeline.gate import GateCheck, Scores, Verdict, latency_check, metric_checks
from cloud.settings import GateSettings

GATE = GateSettings(min_macro_f1_gain=0.005, min_accuracy=0.93, min_class_f1=0.70, max_p99_ms=50)


def _scores(macro_f1: float, accuracy: float = 0.95, **class_f1: float) -> Scores:
    return Scores(macro_f1, accuracy, class_f1 or {"None": 0.99, "Scratch": 0.8})


def test_a_candidate_must_beat_the_champion_by_the_gain() -> None:
    versus = metric_checks(_scores(0.804), _scores(0.800), GATE, champion_version="cnn-v2.0.0")[0]
    assert versus.name == "macro_f1_vs_champion" and not versus.passed
    assert versus.threshold == pytest.approx(0.805)
    assert versus.detail == "macro-F1 0.8040 < 0.8050 (champion cnn-v2.0.0 0.8000 + 0.005)"
    assert metric_checks(_scores(0.805), _scores(0.800), GATE)[0].passed


def test_without_a_champion_the_comparison_passes_with_a_note() -> None:
    versus = metric_checks(_scores(0.1), None, GATE)[0]
    assert versus.passed and versus.detail == "no champion is registered: nothing to beat"


def test_accuracy_and_every_class_f1_have_their_bars() -> None:
    checks = metric_checks(
        _scores(0.9, 0.92, **{"None": 0.99, "Loc": 0.6, "Donut": 0.5}), None, GATE
    )
    assert [(c.name, c.passed) for c in checks] == [
        ("macro_f1_vs_champion", True),
        ("accuracy", False),
        ("class_f1", False),
    ]
    assert checks[1].detail == "accuracy 0.9200 < 0.93"
    assert checks[2].detail == "class F1 below 0.7: Loc 0.600, Donut 0.500"
    assert checks[2].value == 0.5


def test_latency_must_stay_below_the_budget() -> None:
    assert latency_check(49.9, GATE).passed
    slow = latency_check(50.0, GATE)
    assert not slow.passed and slow.detail == "batch-1 p99 50.00 ms >= 50.0 ms"


def test_the_verdict_passes_only_when_every_check_does_and_names_the_failures() -> None:
    checks = [*metric_checks(_scores(0.9, 0.5), None, GATE), latency_check(3.0, GATE)]
    verdict = Verdict.of(checks)
    assert not verdict.passed and verdict.failed == ["accuracy"]
    assert verdict.summary() == "gate failed: accuracy: accuracy 0.5000 < 0.93"
    as_dict = verdict.to_dict()
    assert as_dict["failed"] == ["accuracy"] and len(as_dict["checks"]) == 4
    assert [GateCheck.from_dict(c) for c in as_dict["checks"]] == checks
    assert Verdict.of(checks[:1]).passed


def test_scores_leave_out_classes_absent_from_the_data() -> None:
    y_true = np.array([0, 0, 1, 1])
    scores = Scores.of(y_true, np.array([0, 1, 1, 1]))
    assert scores.accuracy == 0.75 and set(scores.class_f1) == {"None", "Center"}
    report = {
        "macro_f1": 0.7,
        "accuracy": 0.9,
        "per_class": {"None": {"f1": 0.9, "support": 3}, "Donut": {"f1": 0.0, "support": 0}},
    }
    assert Scores.from_report(report) == Scores(0.7, 0.9, {"None": 0.9})
