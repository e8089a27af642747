"""The drift report over hand-made aggregates and labels."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, timedelta

import pytest

from cloud.analytics.drift import KS_NOT_AVAILABLE, build_drift_report, daily_series
from cloud.analytics.reviews import reviewed_pairs
from cloud.settings import DriftSettings
from cloud.storage.aggregates import DailyAggregate
from cloud.storage.labels import ReviewedLabel

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
TODAY = NOW.date()
SETTINGS = DriftSettings(min_wafers=100, halting_min_days=3, window_days=7)
REFERENCE = (40, 10, 10, 10, 10, 5, 5, 5, 5)
SHIFTED = (10, 40, 10, 10, 10, 5, 5, 5, 5)  # classes 0 and 1 swapped: PSI = 0.6 ln 4
PSI_SHIFTED = 0.6 * math.log(4.0)  # (0.1-0.4) ln(0.25) + (0.4-0.1) ln 4 = 0.8317766


def _agg(
    fab: str,
    node: str,
    day: date,
    counts: tuple[int, ...] = SHIFTED,
    *,
    steps: float = 1.5,
    version: str = "v1",
    reviewed: tuple[int, int] = (0, 0),
) -> DailyAggregate:
    return DailyAggregate(
        fab_id=fab,
        node_id=node,
        day=day,
        model_version=version,
        class_counts=counts,
        wafers_classified=sum(counts),
        flagged_count=0,
        reviewed_count=reviewed[0],
        reviewed_correct_count=reviewed[1],
        latency_p50_ms=5.0,
        latency_p90_ms=8.0,
        latency_p99_ms=12.0,
        avg_recursion_steps=steps,
    )


def _label(
    fab: str,
    true: str,
    predicted: str | None,
    at: datetime,
    *,
    version: str = "v1",
    reason: int = 1,
) -> ReviewedLabel:
    return ReviewedLabel(
        fab_id=fab,
        wafer_key="w",
        lot_key="l",
        reviewer_key="r",
        label=true,
        reviewed_at=at,
        predicted_label=predicted,
        model_version=version,
        review_reason=reason,
    )


def _fab1() -> list[DailyAggregate]:
    """Two nodes, three days each, shifted mix; node steps 1.2/1.3/1.4 and 1.4/1.5/1.6 (equal
    wafers), so the fab's daily means are 1.3, 1.4, 1.5: +0.1 a day."""
    days = [TODAY - timedelta(days=i) for i in (2, 1, 0)]
    return [_agg("fab-1", "n1", d, steps=s) for d, s in zip(days, (1.2, 1.3, 1.4), strict=True)] + [
        _agg("fab-1", "n2", d, steps=s) for d, s in zip(days, (1.4, 1.5, 1.6), strict=True)
    ]


def test_report_psi_bands_and_retrain() -> None:
    small = _agg("fab-2", "m1", TODAY, (10, 5, 5, 5, 5, 5, 5, 5, 5))  # 50 wafers < 100
    report = build_drift_report([*_fab1(), small], [], REFERENCE, "v1", SETTINGS, now=NOW)
    fab1, fab2 = report.fabs
    assert (fab1.fab_id, fab1.node_id, fab1.wafers) == ("fab-1", None, 600)
    assert fab1.psi == pytest.approx(PSI_SHIFTED)
    assert fab1.band == "retrain"
    assert fab1.avg_steps == pytest.approx(1.4)
    assert fab2.psi is None and fab2.band is None
    assert fab2.reason == "50 wafers in the window, fewer than min_wafers=100"
    [(fab, value)] = report.retrain
    assert fab == "fab-1"
    assert value == pytest.approx(PSI_SHIFTED)
    assert [(g.fab_id, g.node_id) for g in report.nodes] == [
        ("fab-1", "n1"),
        ("fab-1", "n2"),
        ("fab-2", "m1"),
    ]
    assert report.nodes[0].psi == pytest.approx(PSI_SHIFTED)
    assert report.nodes[0].wafers == 300


def test_report_halting_trend_per_fab_and_node() -> None:
    report = build_drift_report(_fab1(), [], REFERENCE, "v1", SETTINGS, now=NOW)
    trend = report.fabs[0].halting
    assert trend is not None
    assert trend.slope_per_day == pytest.approx(0.1)
    assert trend.rising
    node_trend = report.nodes[1].halting
    assert node_trend is not None and node_trend.slope_per_day == pytest.approx(0.1)


def test_report_window_and_version_filter() -> None:
    old = _agg("fab-1", "n1", TODAY - timedelta(days=30), (900, 0, 0, 0, 0, 0, 0, 0, 0))
    other = _agg("fab-1", "n1", TODAY, (900, 0, 0, 0, 0, 0, 0, 0, 0), version="v2")
    report = build_drift_report([*_fab1(), old, other], [], REFERENCE, "v1", SETTINGS, now=NOW)
    assert report.window_start == date(2026, 11, 23)
    assert report.window_end == TODAY
    assert report.fabs[0].wafers == 600  # neither the old day nor the other version
    assert report.fabs[0].psi == pytest.approx(PSI_SHIFTED)
    # The old day still belongs to the history: four days in the node's series.
    assert len(report.series["fab-1"]) == 4
    every_version = build_drift_report([*_fab1(), other], [], REFERENCE, None, SETTINGS, now=NOW)
    assert every_version.fabs[0].wafers == 1500


def test_report_stable_fab_is_not_retrained() -> None:
    rows = [_agg("fab-3", "k", TODAY - timedelta(days=i), REFERENCE) for i in range(3)]
    report = build_drift_report(rows, [], REFERENCE, "v1", SETTINGS, now=NOW)
    assert report.fabs[0].psi == 0.0
    assert report.fabs[0].band == "stable"
    assert report.retrain == []


def test_report_ks_section() -> None:
    report = build_drift_report([], [], REFERENCE, "v1", SETTINGS, now=NOW)
    assert report.ks == {"status": KS_NOT_AVAILABLE}
    assert report.fabs == [] and report.nodes == [] and report.retrain == []
    reference = [i / 100 for i in range(100)]
    same = list(reference)
    scores = {"reference": reference, "fab-1": [x + 0.5 for x in reference], "fab-2": []}
    scores["fab-3"] = same
    with_scores = build_drift_report(
        [], [], REFERENCE, "v1", SETTINGS, now=NOW, novelty_scores=scores
    )
    fab1 = with_scores.ks["fabs"]["fab-1"]
    assert fab1["statistic"] == pytest.approx(0.5, abs=0.011)  # ties at 0.5 +- one step
    assert fab1["p_value"] < SETTINGS.ks_alpha
    assert fab1["drift"] is True
    fab3 = with_scores.ks["fabs"]["fab-3"]
    assert (fab3["statistic"], fab3["p_value"], fab3["drift"]) == (0.0, 1.0, False)
    assert with_scores.ks["fabs"]["fab-2"]["n"] == 0
    with pytest.raises(ValueError, match="novelty_scores must hold"):
        build_drift_report([], [], REFERENCE, "v1", SETTINGS, now=NOW, novelty_scores={"f": [1]})


def test_report_reviewed_accuracy_per_class_per_fab() -> None:
    recent = NOW - timedelta(days=1)
    labels = [_label("fab-1", "Edge-Ring", "Edge-Ring", recent)] * 3 + [
        _label("fab-1", "Edge-Ring", "Loc", recent),
        _label("fab-1", "Center", None, recent),  # prediction unknown: skipped
        _label("fab-1", "Center", "Donut", NOW - timedelta(days=8)),  # before the window
        _label("fab-1", "Center", "Donut", recent, version="v0"),  # another model
    ]
    report = build_drift_report([], labels, REFERENCE, "v1", SETTINGS, now=NOW)
    assert list(report.accuracy) == ["fab-1"]
    ring = report.accuracy["fab-1"]["Edge-Ring"]
    assert (ring.n, ring.correct, ring.accuracy) == (4, 3, 0.75)
    assert "Center" not in report.accuracy["fab-1"]


def test_report_to_dict_is_strict_json() -> None:
    labels = [_label("fab-1", "Edge-Ring", "Edge-Ring", NOW - timedelta(hours=1))]
    report = build_drift_report(_fab1(), labels, REFERENCE, "v1", SETTINGS, now=NOW)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["computed_at"] == NOW.isoformat()
    assert data["window"] == {"start": "2026-11-23", "end": "2026-11-30"}
    assert data["retrain"] == [{"fab_id": "fab-1", "psi": pytest.approx(PSI_SHIFTED)}]
    assert data["fabs"][0]["halting"]["rising"] is True
    assert data["ks"]["status"] == KS_NOT_AVAILABLE
    assert data["accuracy"]["fab-1"]["Edge-Ring"]["n"] == 1
    assert data["series"]["fab-1"][0]["day"] == "2026-11-28"


def test_report_rejects_bad_reference() -> None:
    with pytest.raises(ValueError, match="reference_counts must not be all zero"):
        build_drift_report(_fab1(), [], [0] * 9, "v1", SETTINGS, now=NOW)
    with pytest.raises(ValueError, match="reference_counts must hold 9"):
        build_drift_report([], [], [1] * 8, "v1", SETTINGS, now=NOW)  # even with no data


def test_daily_series() -> None:
    rows = [
        _agg("fab-1", "n1", TODAY, REFERENCE, steps=1.0, reviewed=(4, 3)),
        _agg("fab-1", "n2", TODAY, REFERENCE, steps=2.0, reviewed=(6, 3)),
        _agg("fab-1", "n1", TODAY - timedelta(days=1), SHIFTED),
        _agg("fab-1", "n1", TODAY - timedelta(days=2), (0,) * 9),
    ]
    series = daily_series(rows, REFERENCE)
    empty, shifted, today = series["fab-1"]
    assert (empty.wafers, empty.psi, empty.avg_steps, empty.accuracy) == (0, None, None, None)
    assert shifted.psi == pytest.approx(PSI_SHIFTED)
    assert today.day == TODAY
    assert today.wafers == 200
    assert today.psi == 0.0
    assert today.avg_steps == pytest.approx(1.5)
    assert today.accuracy == pytest.approx(6 / 10)
    assert daily_series([], REFERENCE) == {}


def test_daily_series_rejects_bad_class_counts() -> None:
    with pytest.raises(ValueError, match=r"class_counts of fab-1/n1 on 2026-11-30 must hold 9"):
        daily_series([_agg("fab-1", "n1", TODAY, (1, 2, 3))], REFERENCE)


def test_reviewed_pairs_filters() -> None:
    at = NOW
    labels = [
        _label("f", "Edge-Ring", "Loc", at, reason=4),
        _label("f", "Center", "Center", at, reason=1),
        _label("f", "Center", None, at, reason=4),
        _label("f", "Bogus", "Center", at, reason=4),
        _label("f", "Scratch", "Scratch", at, reason=4, version="v2"),
    ]
    assert reviewed_pairs(labels) == [(4, 5), (1, 1), (8, 8)]
    assert reviewed_pairs(labels, canary_only=True) == [(4, 5), (8, 8)]
    assert reviewed_pairs(labels, model_version="v2", canary_only=True) == [(8, 8)]
