"""What the sync agent reads from the fab's database and computes from it (never ORM rows)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from fab_server import domain


@dataclass(frozen=True)
class LabelRecord:
    """An engineer's verdict with what the cloud's training needs (raw ids: stays in the fab).

    Attributes:
        label_id: the ``labels`` row id (the upload watermark).
        wafer_id, lot_id: the wafer and its lot (hashed before anything leaves).
        node_id, sequence: the result the verdict is about.
        outcome: confirmed or relabelled (unusable verdicts are never collected).
        true_label: the class the engineer assigned.
        predicted_class: the model's class; None when the result never arrived.
        model_version: the model that predicted it; "" when unknown.
        confidence: the prediction's confidence; None when unknown.
        reason: why the wafer was reviewed.
        resolved_by: the engineer (hashed before anything leaves).
        resolved_at: when they resolved it (UTC).
        wafer_map: the canonical map, read only when the policy lets maps leave.
    """

    label_id: int
    wafer_id: str
    lot_id: str
    node_id: str
    sequence: int
    outcome: domain.ReviewOutcome
    true_label: int
    predicted_class: int | None
    model_version: str
    confidence: float | None
    reason: domain.ReviewReason
    resolved_by: str
    resolved_at: datetime
    wafer_map: domain.StoredMap | None = None


@dataclass(frozen=True)
class ResultFigures:
    """The columns of one stored result that the daily aggregates use."""

    sequence: int
    model_version: str
    prediction: int
    latency_ms: float
    steps: int
    # The model's own signals (`review_rules.model_flags`): what "flagged" counts.
    flagged: bool = False
    confidence: float = 1.0
    novelty: float | None = None


@dataclass(frozen=True)
class ReviewMark:
    """A review item of a result, with the verdict on it when resolved."""

    sequence: int
    reason: domain.ReviewReason
    outcome: domain.ReviewOutcome | None


@dataclass(frozen=True)
class DailyFigures:
    """One node's UTC day for one model version: the contract's DailyAggregate, in the fab."""

    node_id: str
    day: date
    model_version: str
    class_counts: tuple[int, ...]
    wafers_classified: int
    flagged_count: int
    reviewed_count: int
    reviewed_correct_count: int
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    avg_recursion_steps: float
    novelty_quantiles: tuple[float, ...] = ()  # at wafercore.novelty.QUANTILE_LEVELS
    novelty_scored: int = 0


@dataclass(frozen=True)
class KnownNode:
    """An edge node the fab knows, with the version it last reported running."""

    node_id: str
    installed_version: str


@dataclass(frozen=True)
class StateEntry:
    """A named value of ``sync_state``."""

    name: str
    value: dict[str, object]
    updated_at: datetime
