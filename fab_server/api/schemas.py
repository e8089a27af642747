"""JSON bodies of the HTTP API (pydantic) and their conversion from domain objects.

Reasons, states and outcomes travel as lower-case names (``low_confidence``); classes as ids
with their display names beside them (``4`` and ``Edge-Ring``), so the review UI never needs a
class table of its own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from fab_server import domain
from fab_server.services.review_rules import (
    MAX_COMMENT_CHARS,
    MAX_KEY_CHARS,
    MAX_SEQUENCE,
)
from wafercore.classes import CLASS_NAMES, NUM_CLASSES
from wafercore.validation import Identifier

# PostgreSQL refuses NUL in text: refuse it at the edge with a 422 rather than a server error.
NO_NUL = r"^[^\x00]*$"
Ident = Identifier  # one id rule for every tier: wafercore.validation
Comment = Annotated[str, StringConstraints(max_length=MAX_COMMENT_CHARS, pattern=NO_NUL)]
ClassId = Annotated[int, Field(ge=0, le=NUM_CLASSES - 1)]
ReasonName = Literal["low_confidence", "novelty", "manual", "canary_sample"]
StateName = Literal["open", "claimed", "resolved"]
OutcomeName = Literal["confirmed", "relabelled", "unusable"]


def reason_from_name(name: ReasonName) -> domain.ReviewReason:
    """The domain reason of an API name."""
    return domain.ReviewReason[name.upper()]


def _class_name(class_id: int | None) -> str | None:
    return CLASS_NAMES[class_id] if class_id is not None else None


class _Request(BaseModel):
    # A misspelt field is an error, not silently a default.
    model_config = ConfigDict(extra="forbid")


class ClaimRequest(_Request):
    """Which part of the queue to claim from (every field optional)."""

    reason: ReasonName | None = None
    node_id: Ident | None = None
    lot_id: Ident | None = None
    model_version: Ident | None = None


class ResolveRequest(_Request):
    """An engineer's verdict: ``true_label`` is required when relabelling, empty when unusable."""

    outcome: OutcomeName
    true_label: ClassId | None = None
    comment: Comment = ""

    def to_domain(self) -> domain.Resolution:
        """The verdict as the service takes it."""
        return domain.Resolution(
            outcome=domain.ReviewOutcome(self.outcome),
            true_label=self.true_label,
            comment=self.comment,
        )


class FlagRequest(_Request):
    """Put a classification on the queue; retries with the same key return the same item."""

    idempotency_key: Annotated[
        str, StringConstraints(min_length=1, max_length=MAX_KEY_CHARS, pattern=NO_NUL)
    ]
    node_id: Ident
    sequence: Annotated[int, Field(ge=1, le=MAX_SEQUENCE)]
    wafer_id: Ident
    reason: ReasonName = "manual"
    comment: Comment = ""

    def to_domain(self, requested_by: str) -> domain.FlagRequest:
        """The flag as the service takes it, attributed to the caller."""
        return domain.FlagRequest(
            idempotency_key=self.idempotency_key,
            node_id=self.node_id,
            sequence=self.sequence,
            wafer_id=self.wafer_id,
            reason=reason_from_name(self.reason),
            comment=self.comment,
            requested_by=requested_by,
        )


class ReviewItemOut(BaseModel):
    """A review item as engineers see it (a lapsed claim shows as open)."""

    id: str
    idempotency_key: str
    node_id: str
    sequence: int
    wafer_id: str
    lot_id: str
    reason: str
    state: StateName
    priority: float
    predicted_class: int | None
    predicted_name: str | None
    confidence: float | None
    novelty: float | None
    model_version: str | None
    created_at: datetime
    claimed_by: str | None
    lease_expires_at: datetime | None
    resolved_at: datetime | None
    outcome: OutcomeName | None
    true_label: int | None
    true_label_name: str | None
    resolved_by: str | None
    comment: str
    requested_by: str

    @classmethod
    def from_domain(cls, item: domain.ReviewItem) -> ReviewItemOut:
        """Convert a domain item."""
        return cls(
            id=item.id,
            idempotency_key=item.idempotency_key,
            node_id=item.node_id,
            sequence=item.sequence,
            wafer_id=item.wafer_id,
            lot_id=item.lot_id,
            reason=item.reason.name.lower(),
            state=item.state.value,
            priority=item.priority,
            predicted_class=item.predicted_class,
            predicted_name=_class_name(item.predicted_class),
            confidence=item.confidence,
            novelty=item.novelty,
            model_version=item.model_version,
            created_at=item.created_at,
            claimed_by=item.claimed_by,
            lease_expires_at=item.lease_expires_at,
            resolved_at=item.resolved_at,
            outcome=item.outcome.value if item.outcome else None,
            true_label=item.true_label,
            true_label_name=_class_name(item.true_label),
            resolved_by=item.resolved_by,
            comment=item.comment,
            requested_by=item.requested_by,
        )


class WaferMapOut(BaseModel):
    """A raw wafer map, row by row: 0 pass, 1 fail, 2 out of wafer."""

    rows: int
    cols: int
    values: list[list[int]]


class ResultOut(BaseModel):
    """The classification under review."""

    model_version: str
    prediction: int
    prediction_name: str
    confidence: float
    novelty: float | None
    probabilities: dict[str, float] = Field(description="Probability per class display name.")
    steps: int
    latency_ms: float
    classified_at: datetime
    wafer_map: WaferMapOut | None

    @classmethod
    def from_domain(cls, result: domain.Result) -> ResultOut:
        """Convert a domain result, with its map when one is stored."""
        wafer_map = None
        if result.wafer_map is not None:
            m = result.wafer_map
            wafer_map = WaferMapOut(
                rows=m.rows,
                cols=m.cols,
                values=[list(m.values[r * m.cols : (r + 1) * m.cols]) for r in range(m.rows)],
            )
        return cls(
            model_version=result.model_version,
            prediction=result.prediction,
            prediction_name=CLASS_NAMES[result.prediction],
            confidence=result.confidence,
            novelty=result.novelty,
            probabilities=dict(zip(CLASS_NAMES, result.probabilities, strict=False)),
            steps=result.steps,
            latency_ms=result.latency_ms,
            classified_at=result.classified_at,
            wafer_map=wafer_map,
        )


class ReviewDetailOut(BaseModel):
    """A review item with its result (None while the result has not arrived)."""

    item: ReviewItemOut
    result: ResultOut | None


class ClassAccuracyOut(BaseModel):
    """Reviewed accuracy of one predicted class."""

    predicted_class: int
    predicted_name: str
    reviewed: int
    confirmed: int
    accuracy: float


class ReviewedAccuracyOut(BaseModel):
    """Reviewed accuracy of one model version (unusable wafers excluded)."""

    model_version: str
    reviewed: int
    confirmed: int
    accuracy: float
    per_class: list[ClassAccuracyOut]

    @classmethod
    def from_domain(cls, stats: domain.ReviewedAccuracy) -> ReviewedAccuracyOut:
        """Convert the domain figures."""
        return cls(
            model_version=stats.model_version,
            reviewed=stats.reviewed,
            confirmed=stats.confirmed,
            accuracy=stats.accuracy,
            per_class=[
                ClassAccuracyOut(
                    predicted_class=c.predicted_class,
                    predicted_name=CLASS_NAMES[c.predicted_class],
                    reviewed=c.reviewed,
                    confirmed=c.confirmed,
                    accuracy=c.accuracy,
                )
                for c in stats.per_class
            ],
        )


class LotSummaryOut(BaseModel):
    """Counts per class, yield and excursion state of one lot."""

    lot_id: str
    class_counts: dict[str, int] = Field(description="Wafers per class display name.")
    total_wafers: int
    die_yield: float | None
    flagged_count: int
    dominant_pattern: int
    dominant_pattern_name: str
    excursion: bool
    excursion_reason: str
    first_seen: datetime | None
    last_seen: datetime | None

    @classmethod
    def from_domain(cls, lot: domain.LotSummary) -> LotSummaryOut:
        """Convert a domain summary."""
        return cls(
            lot_id=lot.lot_id,
            class_counts=dict(zip(CLASS_NAMES, lot.class_counts, strict=False)),
            total_wafers=lot.total_wafers,
            die_yield=lot.die_yield,
            flagged_count=lot.flagged_count,
            dominant_pattern=lot.dominant_pattern,
            dominant_pattern_name=CLASS_NAMES[lot.dominant_pattern],
            excursion=lot.excursion,
            excursion_reason=lot.excursion_reason,
            first_seen=lot.first_seen,
            last_seen=lot.last_seen,
        )


class AlertOut(BaseModel):
    """A stored alert."""

    id: int
    kind: str
    severity: Literal["warning", "critical"]
    subject: str
    message: str
    value: float | None
    threshold: float | None
    state: Literal["active", "acknowledged", "resolved"]
    created_at: datetime
    updated_at: datetime
    acknowledged_by: str | None
    acknowledged_at: datetime | None

    @classmethod
    def from_domain(cls, alert: domain.Alert) -> AlertOut:
        """Convert a domain alert."""
        return cls(
            id=alert.id,
            kind=alert.kind,
            severity=alert.severity.value,
            subject=alert.subject,
            message=alert.message,
            value=alert.value,
            threshold=alert.threshold,
            state=alert.state.value,
            created_at=alert.created_at,
            updated_at=alert.updated_at,
            acknowledged_by=alert.acknowledged_by,
            acknowledged_at=alert.acknowledged_at,
        )
