"""The review queue's rules as pure functions: priority, what needs review, valid verdicts.

Kept apart from :mod:`fab_server.services.review` (which applies them inside transactions) so
they can be read and tested without a database.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from datetime import UTC, datetime

from fab_server import domain
from fab_server.errors import Conflict, InvalidArgument
from fab_server.settings import FabSettings
from wafercore.classes import NUM_CLASSES
from wafercore.validation import MAX_ID_CHARS, check_id

MAX_KEY_CHARS = 256
MAX_COMMENT_CHARS = 4000
MAX_LIST_LIMIT = 500
MAX_SEQUENCE = 2**63 - 1  # BIGINT; the contract's uint64 can carry more
AUTO_KEY_PREFIX = "auto:"


def review_priority(confidence: float | None, novelty: float | None) -> float:
    """Queue priority of a prediction (lower is reviewed first); 0 without a prediction."""
    if confidence is None:
        return 0.0
    if novelty is None:
        return confidence
    return min(confidence, 1.0 - min(max(novelty, 0.0), 1.0))


def effective(item: domain.ReviewItem, now: datetime) -> domain.ReviewItem:
    """The item as engineers see it at ``now``: a lapsed claim reads as open."""
    lapsed = item.lease_expires_at is not None and item.lease_expires_at < now
    if item.state is domain.ReviewState.CLAIMED and lapsed:
        return dataclasses.replace(
            item, state=domain.ReviewState.OPEN, claimed_by=None, lease_expires_at=None
        )
    return item


def now_utc(now: datetime | None) -> datetime:
    """``now`` in UTC, or the current time when None (tests inject ``now``)."""
    # Stored times are UTC: SQLite keeps them as text, so one zone keeps comparisons right.
    return datetime.now(UTC) if now is None else as_utc(now)


def as_utc(value: datetime) -> datetime:
    """Aware UTC; a naive value is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def check_text(field: str, value: str, *, max_chars: int, required: bool = True) -> None:
    """Raise InvalidArgument naming ``field`` unless ``value`` fits the columns it goes into.

    NUL characters are refused here because PostgreSQL would refuse them with a server error.
    """
    if required and not value:
        raise InvalidArgument(field, "must not be empty")
    if len(value) > max_chars:
        raise InvalidArgument(field, f"must be at most {max_chars} characters, got {len(value)}")
    if "\x00" in value:
        raise InvalidArgument(field, "must not contain NUL characters")


def check_limit(limit: int) -> None:
    """Raise InvalidArgument unless ``limit`` is in 1..MAX_LIST_LIMIT."""
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidArgument("limit", f"must be in 1..{MAX_LIST_LIMIT}, got {limit}")


def model_flags(
    *, flagged: bool, confidence: float, novelty: float | None, settings: FabSettings
) -> bool:
    """Whether the model's own signals send a result to review (flagged by the edge, unsure, or
    novel): the review rate the A/B guardrail compares, canary samples aside."""
    return (
        flagged
        or _over_threshold(novelty, settings)
        or confidence < settings.review_confidence_threshold
    )


def _over_threshold(novelty: float | None, settings: FabSettings) -> bool:
    """The fab's own novelty threshold (when one is set) says the result needs review."""
    threshold = settings.review_novelty_threshold
    return novelty is not None and threshold is not None and novelty >= threshold


def auto_reason(result: domain.Result, settings: FabSettings) -> domain.ReviewReason | None:
    """Why ``result`` needs review, or None; the edge's own reason wins when it gave one."""
    novel = _over_threshold(result.novelty, settings)
    unsure = result.confidence < settings.review_confidence_threshold
    canary = result.review_reason is domain.ReviewReason.CANARY_SAMPLE
    if not (result.flagged or novel or unsure or canary):
        return None
    if result.review_reason is not domain.ReviewReason.UNSPECIFIED:
        return result.review_reason
    if novel:
        return domain.ReviewReason.NOVELTY
    # Flagged by the edge for no stated reason it could tell us: a station's manual request.
    return domain.ReviewReason.LOW_CONFIDENCE if unsure else domain.ReviewReason.MANUAL


def sample_uniform(node_id: str, sequence: int) -> float:
    """A number in [0, 1) fixed by (node_id, sequence): the same result always draws the same."""
    digest = hashlib.sha256(f"{node_id}\x00{sequence}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def with_canary_sample(
    result: domain.Result, assignment: domain.Assignment | None, settings: FabSettings
) -> domain.Result:
    """``result`` as the review queue sees it during a rollout: maybe an unbiased sample.

    A node in a rollout (its assignment has a rollout id) that ran the assigned version has
    ``settings.canary_sample_rate`` of its results queued as CANARY_SAMPLE, by
    `sample_uniform`, on canary and control nodes alike, so both arms are sampled the same way
    and a re-sent result samples as it did the first time. The draw ignores whether the result
    needs review anyway: a sample that left out the unsure wafers would flatter the model that
    flags more of its mistakes. The stored result is not changed.
    """
    in_rollout = assignment is not None and assignment.rollout_id != ""
    if not in_rollout or assignment is None or result.model_version != assignment.version:
        return result
    if sample_uniform(result.node_id, result.sequence) >= settings.canary_sample_rate:
        return result
    return dataclasses.replace(result, review_reason=domain.ReviewReason.CANARY_SAMPLE)


def new_item(
    *,
    key: str,
    node_id: str,
    sequence: int,
    wafer_id: str,
    reason: domain.ReviewReason,
    result: domain.Result | None,
    now: datetime,
    comment: str = "",
    requested_by: str = "",
) -> domain.ReviewItem:
    """A new open item; its prediction, lot and priority come from ``result`` when stored."""
    return domain.ReviewItem(
        id=str(uuid.uuid4()),
        idempotency_key=key,
        node_id=node_id,
        sequence=sequence,
        wafer_id=wafer_id,
        lot_id=result.lot_id if result else "",
        reason=reason,
        state=domain.ReviewState.OPEN,
        priority=review_priority(result.confidence, result.novelty) if result else 0.0,
        predicted_class=result.prediction if result else None,
        confidence=result.confidence if result else None,
        novelty=result.novelty if result else None,
        model_version=result.model_version if result else None,
        created_at=now,
        comment=comment,
        requested_by=requested_by,
    )


def validate_flag(request: domain.FlagRequest) -> None:
    """Raise InvalidArgument naming the first bad field of a flag request."""
    check_text("idempotency_key", request.idempotency_key, max_chars=MAX_KEY_CHARS)
    if request.idempotency_key.startswith(AUTO_KEY_PREFIX):
        raise InvalidArgument("idempotency_key", f"the prefix {AUTO_KEY_PREFIX!r} is reserved")
    check_id(request.node_id, "node_id")
    check_id(request.wafer_id, "wafer_id")
    if not 1 <= request.sequence <= MAX_SEQUENCE:
        raise InvalidArgument("sequence", f"must be in 1..{MAX_SEQUENCE}, got {request.sequence}")
    check_text("comment", request.comment, max_chars=MAX_COMMENT_CHARS, required=False)
    check_text("requested_by", request.requested_by, max_chars=MAX_ID_CHARS, required=False)


def same_wafer(item: domain.ReviewItem, request: domain.FlagRequest) -> domain.ReviewItem:
    """``item`` if it was created for the wafer ``request`` names; Conflict if the key is reused."""
    if (item.node_id, item.sequence, item.wafer_id) != (
        request.node_id,
        request.sequence,
        request.wafer_id,
    ):
        raise Conflict(
            f"idempotency_key {request.idempotency_key!r} was already used for wafer "
            f"{item.wafer_id!r} ({item.node_id}, sequence {item.sequence})"
        )
    return item


def checked_resolution(resolution: domain.Resolution, item: domain.ReviewItem) -> domain.Resolution:
    """The resolution with its label made explicit (a confirmation carries the prediction).

    Raises:
        InvalidArgument: the label does not fit the outcome: relabelled needs a class other
            than the prediction, confirmed needs a prediction, unusable takes no label.
    """
    check_text("comment", resolution.comment, max_chars=MAX_COMMENT_CHARS, required=False)
    label = resolution.true_label
    if label is not None and not 0 <= label < NUM_CLASSES:
        raise InvalidArgument("true_label", f"must be a class id in 0..{NUM_CLASSES - 1}")
    predicted = item.predicted_class
    if resolution.outcome is domain.ReviewOutcome.CONFIRMED:
        if predicted is None:
            raise InvalidArgument("outcome", "the item has no prediction to confirm; relabel it")
        if label is not None and label != predicted:
            raise InvalidArgument(
                "true_label", f"must be empty or the prediction ({predicted}) when confirming"
            )
        return dataclasses.replace(resolution, true_label=predicted)
    if resolution.outcome is domain.ReviewOutcome.RELABELLED:
        if label is None:
            raise InvalidArgument("true_label", "is required when relabelling")
        if label == predicted:
            raise InvalidArgument("true_label", "equals the prediction; confirm it instead")
        return resolution
    if label is not None:
        raise InvalidArgument("true_label", "must be empty when the wafer is unusable")
    return resolution
