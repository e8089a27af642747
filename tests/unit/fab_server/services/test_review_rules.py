"""The review queue's pure rules: priority, what needs review, which verdicts are valid."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest

from fab_server import domain
from fab_server.errors import Conflict
from fab_server.services import review_rules as rules
from fab_server.settings import FabSettings
from wafercore.errors import InvalidInput

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = FabSettings(review_confidence_threshold=0.6, review_novelty_threshold=0.5)


def _result(**changes: object) -> domain.Result:
    base = domain.Result(
        node_id="edge-1",
        sequence=7,
        wafer_id="W7",
        lot_id="LOT-1",
        model_version="trm-v1.0.0",
        prediction=4,
        probabilities=(0.0,) * 4 + (0.9,) + (0.1 / 4,) * 4,
        confidence=0.9,
        steps=2,
        latency_ms=12.0,
        flagged=False,
        classified_at=NOW,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _item(**changes: object) -> domain.ReviewItem:
    item = rules.new_item(
        key="k",
        node_id="edge-1",
        sequence=7,
        wafer_id="W7",
        reason=domain.ReviewReason.LOW_CONFIDENCE,
        result=_result(confidence=0.4),
        now=NOW,
    )
    return dataclasses.replace(item, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("confidence", "novelty", "expected"),
    [
        (0.42, None, 0.42),  # low confidence: the confidence itself
        (0.95, 0.9, pytest.approx(0.1)),  # novel but confident: 1 - novelty
        (0.3, 0.2, 0.3),  # both: whichever is more urgent
        (0.9, 7.5, 0.0),  # novelty scores above 1 are clamped
        (0.9, -1.0, 0.9),
        (None, None, 0.0),  # no prediction yet (manual flag): first in line
    ],
)
def test_priority_puts_the_most_uncertain_first(
    confidence: float | None, novelty: float | None, expected: float
) -> None:
    assert rules.review_priority(confidence, novelty) == expected


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, None),
        ({"confidence": 0.59}, domain.ReviewReason.LOW_CONFIDENCE),
        ({"confidence": 0.6}, None),  # the threshold itself is confident enough
        ({"novelty": 0.5}, domain.ReviewReason.NOVELTY),
        ({"novelty": 0.49}, None),
        ({"confidence": 0.3, "novelty": 0.8}, domain.ReviewReason.NOVELTY),
        ({"review_reason": domain.ReviewReason.CANARY_SAMPLE}, domain.ReviewReason.CANARY_SAMPLE),
        ({"flagged": True}, domain.ReviewReason.MANUAL),
        ({"flagged": True, "confidence": 0.5}, domain.ReviewReason.LOW_CONFIDENCE),
        (
            {"flagged": True, "review_reason": domain.ReviewReason.NOVELTY},
            domain.ReviewReason.NOVELTY,
        ),
        # A reason without the flag or a threshold crossed is not a review request.
        ({"review_reason": domain.ReviewReason.MANUAL}, None),
    ],
)
def test_auto_reason(changes: dict[str, object], expected: domain.ReviewReason | None) -> None:
    assert rules.auto_reason(_result(**changes), SETTINGS) is expected


def test_a_lapsed_claim_reads_as_open() -> None:
    claimed = _item(
        state=domain.ReviewState.CLAIMED, claimed_by="ana", lease_expires_at=NOW + timedelta(1)
    )
    assert rules.effective(claimed, NOW) is claimed
    later = rules.effective(claimed, NOW + timedelta(days=2))
    assert (later.state, later.claimed_by, later.lease_expires_at) == (
        domain.ReviewState.OPEN,
        None,
        None,
    )


def test_times_are_normalised_to_utc() -> None:
    cet = datetime(2026, 3, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    assert rules.now_utc(cet) == NOW and rules.now_utc(cet).tzinfo is UTC
    assert rules.now_utc(datetime(2026, 3, 1, 12, 0)) == NOW
    assert rules.now_utc(None).tzinfo is UTC


def _flag(**changes: object) -> domain.FlagRequest:
    base = domain.FlagRequest(
        idempotency_key="key-1",
        node_id="edge-1",
        sequence=7,
        wafer_id="W7",
        reason=domain.ReviewReason.MANUAL,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"idempotency_key": "auto:edge-1:7"}, "idempotency_key"),
        ({"idempotency_key": "k" * 257}, "idempotency_key"),
        ({"node_id": ""}, "node_id"),
        ({"node_id": "n" * 129}, "node_id"),
        ({"wafer_id": ""}, "wafer_id"),
        ({"wafer_id": "W\x007"}, "wafer_id"),
        ({"sequence": 0}, "sequence"),
        ({"sequence": 2**63}, "sequence"),
        ({"comment": "c" * 4001}, "comment"),
        ({"requested_by": "r" * 129}, "requested_by"),
    ],
)
def test_flag_validation_names_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        rules.validate_flag(_flag(**changes))
    assert raised.value.field == field


def test_a_reused_key_for_another_wafer_is_a_conflict() -> None:
    item = _item(idempotency_key="key-1")
    assert rules.same_wafer(item, _flag()) is item
    with pytest.raises(Conflict, match="already used"):
        rules.same_wafer(item, _flag(sequence=8))


def test_confirming_records_the_prediction_as_the_label() -> None:
    checked = rules.checked_resolution(domain.Resolution(domain.ReviewOutcome.CONFIRMED), _item())
    assert checked.true_label == 4


@pytest.mark.parametrize(
    ("resolution", "item_changes", "field"),
    [
        (domain.Resolution(domain.ReviewOutcome.CONFIRMED, true_label=2), {}, "true_label"),
        (domain.Resolution(domain.ReviewOutcome.CONFIRMED), {"predicted_class": None}, "outcome"),
        (domain.Resolution(domain.ReviewOutcome.RELABELLED), {}, "true_label"),
        (domain.Resolution(domain.ReviewOutcome.RELABELLED, true_label=4), {}, "true_label"),
        (domain.Resolution(domain.ReviewOutcome.RELABELLED, true_label=9), {}, "true_label"),
        (domain.Resolution(domain.ReviewOutcome.RELABELLED, true_label=-1), {}, "true_label"),
        (domain.Resolution(domain.ReviewOutcome.UNUSABLE, true_label=1), {}, "true_label"),
        (
            domain.Resolution(domain.ReviewOutcome.UNUSABLE, comment="x" * 4001),
            {},
            "comment",
        ),
    ],
)
def test_invalid_verdicts_name_the_field(
    resolution: domain.Resolution, item_changes: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        rules.checked_resolution(resolution, _item(**item_changes))
    assert raised.value.field == field


def test_relabelling_an_item_without_prediction_is_allowed() -> None:
    item = _item(predicted_class=None)
    resolution = domain.Resolution(domain.ReviewOutcome.RELABELLED, true_label=8)
    assert rules.checked_resolution(resolution, item) == resolution


def test_by_default_the_model_s_own_novelty_flag_decides() -> None:
    default = FabSettings(review_confidence_threshold=0.6)
    assert default.review_novelty_threshold is None
    # A score on the novelty model's own scale is no reason by itself: its node flags it.
    assert rules.auto_reason(_result(novelty=5.0), default) is None
    novel = _result(novelty=5.0, flagged=True, review_reason=domain.ReviewReason.NOVELTY)
    assert rules.auto_reason(novel, default) is domain.ReviewReason.NOVELTY
