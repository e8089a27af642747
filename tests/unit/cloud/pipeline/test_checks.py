"""The brief's data checks: agreement of two reviews, samples per class, freshness."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cloud.pipeline.checks import (
    Review,
    agreement_check,
    class_count_check,
    failure_reason,
    freshness_check,
    run_checks,
)
from cloud.settings import DataChecks

NOW = datetime(2026, 11, 30, tzinfo=UTC)


def _review(wafer: str, reviewer: str, label: str, days_ago: float = 1, fab: str = "f") -> Review:
    return Review(fab, wafer, reviewer, label, NOW - timedelta(days=days_ago))


def test_agreement_is_the_share_of_agreeing_pairs_over_wafers_reviewed_twice() -> None:
    reviews = [
        _review("w1", "a", "Scratch"),
        _review("w1", "b", "Scratch"),
        _review("w2", "a", "Loc"),
        _review("w2", "b", "Center"),
        _review("w3", "a", "Donut"),  # reviewed once: not compared
        _review("w1", "a", "Scratch", fab="other"),  # another fab's wafer w1
    ]
    result = agreement_check(reviews, 0.4)
    assert result.passed and "agreement 0.500 over 2 pairs" in result.detail
    failed = agreement_check(reviews, 0.5)  # strictly above the bar
    assert not failed.passed and "not above 0.5" in failed.detail


def test_a_reviewer_counts_once_with_their_latest_label() -> None:
    reviews = [
        _review("w1", "a", "Loc", days_ago=5),
        _review("w1", "a", "Scratch", days_ago=1),  # a changed their mind
        _review("w1", "b", "Scratch"),
    ]
    result = agreement_check(reviews, 0.85)
    assert result.passed and "1 pairs" in result.detail


def test_agreement_passes_when_no_wafer_was_reviewed_twice() -> None:
    result = agreement_check([_review("w1", "a", "Loc"), _review("w1", "a", "Loc")], 0.85)
    assert result.passed and result.detail == "no wafer was reviewed by two engineers"


def test_class_counts_name_every_class_below_the_minimum() -> None:
    result = class_count_check({"None": 500, "Donut": 80, "Near-Full": 54}, 100)
    assert not result.passed
    assert result.detail == (
        "Donut has 80, Near-Full has 54 (at least 100 samples per class needed)"
    )
    ok = class_count_check({"None": 500, "Donut": 100}, 100)
    assert ok.passed and "fewest: Donut, 100" in ok.detail


def test_freshness_fails_on_any_review_older_than_the_window() -> None:
    reviews = [_review("w1", "a", "Loc", days_ago=91), _review("w2", "a", "Loc", days_ago=10)]
    result = freshness_check(reviews, now=NOW, max_age_days=90)
    assert not result.passed
    assert "1 of 2 reviewed labels are older than 90 days" in result.detail
    assert "91 days ago" in result.detail
    assert freshness_check(reviews[1:], now=NOW, max_age_days=90).passed
    assert freshness_check([], now=NOW, max_age_days=90).detail == "no reviewed labels"


def test_the_failure_reason_names_each_failed_check_and_why() -> None:
    checks = DataChecks(min_agreement=0.85, min_per_class=100, max_review_age_days=90)
    reviews = [_review("w1", "a", "Loc", days_ago=200), _review("w1", "b", "Scratch")]
    results = run_checks(reviews, {"None": 10}, checks, now=NOW)
    assert [(r.name, r.passed) for r in results] == [
        ("agreement", False),
        ("class_counts", False),
        ("freshness", False),
    ]
    reason = failure_reason(results)
    assert reason is not None and reason.startswith("data check failed: agreement: agreement 0.000")
    assert "; class_counts: None has 10" in reason and "; freshness: 1 of 2" in reason
    assert failure_reason(run_checks([], {"None": 100}, checks, now=NOW)) is None


def test_a_review_survives_its_json_form() -> None:
    review = _review("w1", "a", "Loc")
    assert Review.from_dict(review.to_dict()) == review
