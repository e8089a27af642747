"""The alert rules are pure functions over aggregates: each threshold, window and minimum."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fab_server import domain
from fab_server.repository.alerts import ConfusionCell, LotActivity, NodeWindowStats, ReviewCounts
from fab_server.services.alerts import (
    MIN_BASELINE_LOTS,
    MIN_CLASS_SUPPORT,
    MIN_REVIEW_RATE_WAFERS,
    MIN_REVIEWED_VERDICTS,
    AlertKind,
    Finding,
    accuracy_findings,
    class_f1_findings,
    class_f1_scores,
    latency_findings,
    lot_excursions,
    plan_alerts,
    review_rate_findings,
)
from fab_server.settings import AlertThresholds
from wafercore.classes import NUM_CLASSES, DefectClass

T = AlertThresholds()
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
WARNING, CRITICAL = domain.AlertSeverity.WARNING, domain.AlertSeverity.CRITICAL


def _node(
    node_id: str, *, p99: float = 20.0, rate: float = 0.1, wafers: int = 100
) -> NodeWindowStats:
    return NodeWindowStats(
        node_id=node_id, windows=5, wafers=wafers, latency_p99_ms=p99, review_rate=rate
    )


def test_latency_warns_above_45_ms_and_is_critical_above_50_ms() -> None:
    stats = [
        _node("ok", p99=44.9),
        _node("edge", p99=45.0),
        _node("w", p99=47.5),
        _node("c", p99=50.1),
    ]
    found = {f.subject: f for f in latency_findings(stats, T)}
    assert set(found) == {"w", "c"}  # 45.0 is not above 45
    assert (found["w"].severity, found["w"].threshold, found["w"].value) == (WARNING, 45.0, 47.5)
    assert (found["c"].severity, found["c"].threshold) == (CRITICAL, 50.0)
    assert found["c"].kind is AlertKind.LATENCY_P99
    assert "50.1 ms" in found["c"].message and "15 min" in found["c"].message


def test_latency_thresholds_come_from_settings() -> None:
    strict = AlertThresholds(latency_p99_warning_ms=10, latency_p99_critical_ms=30)
    (finding,) = latency_findings([_node("n", p99=20.0)], strict)
    assert (finding.severity, finding.threshold) == (WARNING, 10)


def test_review_rate_warns_above_25_percent_with_enough_wafers() -> None:
    stats = [
        _node("busy", rate=0.30),
        _node("at-limit", rate=0.25),
        _node("quiet", rate=0.9, wafers=MIN_REVIEW_RATE_WAFERS - 1),
        _node("fine", rate=0.1),
    ]
    (finding,) = review_rate_findings(stats, T)
    assert (finding.kind, finding.subject, finding.severity) == (
        AlertKind.REVIEW_RATE,
        "busy",
        WARNING,
    )
    assert finding.value == pytest.approx(0.30)
    assert "30.0%" in finding.message


def test_reviewed_accuracy_below_90_percent_is_critical() -> None:
    counts = [
        ReviewCounts("trm-v1.0.0", confirmed=17, relabelled=3),  # 85 %
        ReviewCounts("trm-v1.1.0", confirmed=18, relabelled=2),  # exactly 90 %: fine
        ReviewCounts("trm-v2.0.0", confirmed=0, relabelled=MIN_REVIEWED_VERDICTS - 1),  # too few
    ]
    (finding,) = accuracy_findings(counts, T)
    assert (finding.kind, finding.subject, finding.severity) == (
        AlertKind.REVIEWED_ACCURACY,
        "trm-v1.0.0",
        CRITICAL,
    )
    assert finding.value == pytest.approx(0.85)
    assert finding.threshold == 0.90


def test_class_f1_scores_match_a_hand_computed_confusion_matrix() -> None:
    # Center: TP 8, FN 2 (true Center predicted Donut), FP 4 (true None predicted Center).
    cells = [
        ConfusionCell("v", predicted=1, true=1, count=8),
        ConfusionCell("v", predicted=2, true=1, count=2),
        ConfusionCell("v", predicted=1, true=0, count=4),
        ConfusionCell("v", predicted=0, true=0, count=30),
        ConfusionCell("w", predicted=1, true=1, count=5),
    ]
    scores = class_f1_scores(cells)
    assert scores["v", 1] == (pytest.approx(2 * 8 / (2 * 8 + 4 + 2)), 10)
    assert scores["v", 0] == (pytest.approx(2 * 30 / (2 * 30 + 4)), 34)
    assert scores["v", 2] == (0.0, 0)  # predicted but never true
    assert scores["w", 1] == (1.0, 5)  # versions are scored apart
    assert ("v", 3) not in scores


def test_class_f1_warns_only_for_classes_with_enough_support() -> None:
    n = MIN_CLASS_SUPPORT
    cells = [
        # Scratch: half of the true scratches are called Loc: F1 = 2*n/2 / (n/2 + n) = 0.667.
        ConfusionCell("trm-v1.0.0", DefectClass.SCRATCH, DefectClass.SCRATCH, n // 2),
        ConfusionCell("trm-v1.0.0", DefectClass.LOC, DefectClass.SCRATCH, n - n // 2),
        # Donut: all wrong, but fewer than the minimum support.
        ConfusionCell("trm-v1.0.0", DefectClass.CENTER, DefectClass.DONUT, n - 1),
    ]
    subjects = {f.subject: f for f in class_f1_findings(cells, T)}
    # Loc has F1 0 (never right) but no true Loc wafers: support 0, not judged.
    assert set(subjects) == {"trm-v1.0.0/Scratch"}
    finding = subjects["trm-v1.0.0/Scratch"]
    assert finding.value == pytest.approx(2 / 3)
    assert (finding.kind, finding.severity, finding.threshold) == (AlertKind.CLASS_F1, WARNING, 0.7)
    assert "7 days" in finding.message


def _lot(lot_id: str, minutes_ago: float, failing: int, wafers: int = 10) -> LotActivity:
    counts = [0] * NUM_CLASSES
    counts[DefectClass.NONE] = wafers - failing
    counts[DefectClass.EDGE_RING] = failing
    return LotActivity(
        lot_id=lot_id,
        last_seen=NOW - timedelta(minutes=minutes_ago),
        excursion=False,
        excursion_reason="",
        class_counts=tuple(counts),
    )


ACTIVE_SINCE = NOW - timedelta(hours=24)


def _history(n: int, failing: int = 1) -> list[LotActivity]:
    """``n`` old lots (baseline only), 10 wafers each, ``failing`` of them with a pattern."""
    return [_lot(f"OLD-{i}", 3000 - i, failing) for i in range(n)]


def test_a_lot_far_above_the_baseline_is_an_excursion() -> None:
    lots = [*_history(MIN_BASELINE_LOTS), _lot("HOT", 5, failing=5), _lot("NORMAL", 1, failing=3)]
    verdicts = {
        v.lot.lot_id: v.finding for v in lot_excursions(lots, active_since=ACTIVE_SINCE, t=T)
    }
    assert set(verdicts) == {"HOT", "NORMAL"}  # old lots are only baseline
    hot = verdicts["HOT"]
    assert hot is not None
    assert (hot.kind, hot.subject, hot.severity) == (AlertKind.LOT_EXCURSION, "HOT", WARNING)
    assert hot.value == pytest.approx(0.5)
    assert hot.threshold == pytest.approx(0.1 + T.excursion_margin)
    assert "Edge-Ring" in hot.message and "50%" in hot.message
    # NORMAL's baseline now includes HOT: (5 * 0.1 + 0.5) / 6 = 0.167; 0.3 is within the margin.
    assert verdicts["NORMAL"] is None


def test_the_baseline_is_the_previous_lots_only() -> None:
    t = AlertThresholds(excursion_baseline_lots=MIN_BASELINE_LOTS)
    # Long ago the failing share was high; the previous lots are clean.
    lots = [*_history(10, failing=8), *[_lot(f"C-{i}", 500 - i, 0) for i in range(5)]]
    lots.append(_lot("NOW", 1, failing=4))
    (verdict,) = [
        v
        for v in lot_excursions(lots, active_since=NOW - timedelta(hours=9), t=t)
        if v.lot.lot_id == "NOW"
    ]
    assert verdict.finding is not None
    assert verdict.finding.threshold == pytest.approx(0.0 + t.excursion_margin)


def test_small_lots_are_neither_judged_nor_baseline() -> None:
    lots = [
        *_history(MIN_BASELINE_LOTS),
        _lot("PARTIAL-HOT", 10, failing=3, wafers=3),  # 100 % but only 3 wafers
        _lot("LATER", 1, failing=1),
    ]
    verdicts = lot_excursions(lots, active_since=ACTIVE_SINCE, t=T)
    assert [v.finding for v in verdicts] == [None, None]
    # With PARTIAL-HOT in the baseline, LATER's threshold would be raised; it is not.
    hot_later = [*lots[:-1], _lot("LATER", 1, failing=5)]
    finding = lot_excursions(hot_later, active_since=ACTIVE_SINCE, t=T)[-1].finding
    assert finding is not None and finding.threshold == pytest.approx(0.1 + T.excursion_margin)


def test_no_excursion_without_enough_history() -> None:
    lots = [*_history(MIN_BASELINE_LOTS - 1, failing=0), _lot("FIRST", 1, failing=10)]
    assert [v.finding for v in lot_excursions(lots, active_since=ACTIVE_SINCE, t=T)] == [None]


def _alert(alert_id: int, kind: str, subject: str, state: domain.AlertState) -> domain.Alert:
    return domain.Alert(
        id=alert_id,
        kind=kind,
        severity=WARNING,
        subject=subject,
        message="",
        value=None,
        threshold=None,
        state=state,
        created_at=NOW,
        updated_at=NOW,
    )


def test_plan_raises_new_refreshes_existing_and_resolves_cleared() -> None:
    active, acked = domain.AlertState.ACTIVE, domain.AlertState.ACKNOWLEDGED
    unresolved = [
        _alert(1, "latency_p99", "edge-01", active),
        _alert(2, "review_rate", "edge-01", acked),
        _alert(3, "lot_excursion", "LOT-OLD", active),
        _alert(4, "latency_p99", "edge-01", active),  # a duplicate: resolved
    ]
    findings = [
        Finding(AlertKind.LATENCY_P99, "edge-01", 48.0, 45.0, "slow"),
        Finding(AlertKind.LATENCY_P99, "edge-02", 52.0, 50.0, "slower", CRITICAL),
    ]
    plan = plan_alerts(unresolved, findings, keep={("lot_excursion", "LOT-OLD")})
    assert [f.subject for f in plan.new] == ["edge-02"]
    assert [(a.id, f.value) for a, f in plan.refresh] == [(1, 48.0)]
    assert sorted(a.id for a in plan.resolve) == [2, 4]

    plan = plan_alerts(unresolved[:3], [])
    assert sorted(a.id for a in plan.resolve) == [1, 2, 3]
