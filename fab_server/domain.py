"""The fab server's domain types: what services and transports see (never ORM or pb2 objects)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class ReviewReason(enum.IntEnum):
    """Why a wafer is in the review queue (values equal the contract's ReviewReason)."""

    UNSPECIFIED = 0
    LOW_CONFIDENCE = 1
    NOVELTY = 2
    MANUAL = 3
    CANARY_SAMPLE = 4


class ReviewState(enum.StrEnum):
    """open -> claimed (lease) -> resolved; a lapsed lease goes back to open."""

    OPEN = "open"
    CLAIMED = "claimed"
    RESOLVED = "resolved"


class ReviewOutcome(enum.StrEnum):
    """How an engineer resolved a review item."""

    CONFIRMED = "confirmed"
    RELABELLED = "relabelled"
    UNUSABLE = "unusable"


class AlertSeverity(enum.StrEnum):
    """How urgent an alert is."""

    WARNING = "warning"
    CRITICAL = "critical"


class AlertState(enum.StrEnum):
    """active -> acknowledged; either -> resolved when the condition clears."""

    ACTIVE = "active"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class StoredMap:
    """A raw wafer map in the canonical encoding (0 pass, 1 fail, 2 out of wafer)."""

    rows: int
    cols: int
    values: bytes  # rows * cols bytes, row-major


@dataclass(frozen=True)
class Result:
    """One classification as an edge node (or ClassifyBatch) produced it."""

    node_id: str
    sequence: int
    wafer_id: str
    lot_id: str
    model_version: str
    prediction: int
    probabilities: tuple[float, ...]
    confidence: float
    steps: int
    latency_ms: float
    flagged: bool
    classified_at: datetime
    review_reason: ReviewReason = ReviewReason.UNSPECIFIED
    novelty: float | None = None
    wafer_map: StoredMap | None = None
    received_at: datetime | None = None
    tested_at: datetime | None = None  # the station's time of the test, when it said
    embedding: tuple[float, ...] | None = None  # the novelty model's latent mean, if it ran


@dataclass(frozen=True)
class IngestOutcome:
    """What storing one batch did: the ack an edge node gets back."""

    node_id: str
    acked_sequence: int
    accepted: int
    duplicates: int
    rejected: int = 0  # conflicts: same (node, sequence) stored with other content, set aside


@dataclass(frozen=True)
class LotSummary:
    """Counts per class, yield and excursion state of one lot."""

    lot_id: str
    class_counts: tuple[int, ...]
    total_wafers: int
    die_yield: float | None
    flagged_count: int
    dominant_pattern: int
    excursion: bool
    excursion_reason: str
    first_seen: datetime | None
    last_seen: datetime | None


@dataclass(frozen=True)
class ReviewItem:
    """One wafer in the review queue."""

    id: str
    idempotency_key: str
    node_id: str
    sequence: int
    wafer_id: str
    lot_id: str
    reason: ReviewReason
    state: ReviewState
    priority: float  # lower is reviewed first: confidence, or 1 - novelty
    predicted_class: int | None
    confidence: float | None
    novelty: float | None
    model_version: str | None
    created_at: datetime
    claimed_by: str | None = None
    lease_expires_at: datetime | None = None
    resolved_at: datetime | None = None
    outcome: ReviewOutcome | None = None
    true_label: int | None = None
    resolved_by: str | None = None
    comment: str = ""
    requested_by: str = ""


@dataclass(frozen=True)
class EdgeMetricsRecord:
    """One metrics window pushed by an edge node."""

    node_id: str
    window_start: datetime
    window_end: datetime
    wafers_classified: int
    throughput_per_minute: float
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    avg_recursion_steps: float
    review_rate: float
    model_version: str
    outbox_depth: int
    confidence_edges: tuple[float, ...] = ()
    confidence_counts: tuple[int, ...] = ()
    class_counts: tuple[int, ...] = ()


@dataclass(frozen=True)
class Alert:
    """A stored alert."""

    id: int
    kind: str
    severity: AlertSeverity
    subject: str
    message: str
    value: float | None
    threshold: float | None
    state: AlertState
    created_at: datetime
    updated_at: datetime
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None


@dataclass(frozen=True)
class ModelArtifact:
    """A signed model artifact the fab can hand to edge nodes."""

    version: str
    artifact_format: str
    sha256: str
    size_bytes: int
    signature: bytes
    signing_key_id: str
    path: str
    created_at: datetime


@dataclass(frozen=True)
class Assignment:
    """Which model version a node (or every node: ``*``) should run."""

    node_id: str
    version: str
    rollout_id: str = ""
    stage: int = 0  # the contract's RolloutStage
    rollback: bool = False
    updated_at: datetime | None = None


@dataclass(frozen=True)
class EdgeNode:
    """An edge node as the fab knows it."""

    node_id: str
    first_seen: datetime
    last_seen: datetime
    acked_sequence: int
    installed_version: str = ""
    previous_version: str = ""


@dataclass(frozen=True)
class FlagRequest:
    """A request to put one stored result into the review queue (idempotent on the key)."""

    idempotency_key: str
    node_id: str
    sequence: int
    wafer_id: str
    reason: ReviewReason
    comment: str = ""
    requested_by: str = ""


@dataclass(frozen=True)
class Resolution:
    """An engineer's verdict on a claimed review item."""

    outcome: ReviewOutcome
    true_label: int | None = None  # required when relabelled; the prediction when confirmed
    comment: str = ""


@dataclass(frozen=True)
class ClassAccuracy:
    """Reviewed accuracy of one predicted class: how often engineers agreed with the model."""

    predicted_class: int
    reviewed: int  # resolved as confirmed or relabelled (unusable excluded)
    confirmed: int  # the engineer's label equals the prediction
    accuracy: float  # confirmed / reviewed


@dataclass(frozen=True)
class ReviewedAccuracy:
    """Reviewed accuracy of one model version, overall and per predicted class."""

    model_version: str
    reviewed: int
    confirmed: int
    accuracy: float
    per_class: tuple[ClassAccuracy, ...]


@dataclass(frozen=True)
class ReviewFilter:
    """Narrows the review queue (listing and claiming); None matches everything."""

    reason: ReviewReason | None = None
    node_id: str | None = None
    lot_id: str | None = None
    model_version: str | None = None
    claimed_by: str | None = None
    predicted_class: int | None = None


class ModelAction(enum.IntEnum):
    """What a node should do about its model (values equal the contract's ModelAction)."""

    KEEP = 0
    INSTALL = 1
    ROLLBACK = 2


@dataclass(frozen=True)
class RawWaferMap:
    """A wafer map as its sender encoded it, not yet validated."""

    rows: int
    cols: int
    values: bytes
    encoding: int = 0  # the contract's DieEncoding: 0 canonical, 1 WM-811K; others are refused


@dataclass(frozen=True)
class WaferInput:
    """One wafer to classify on the fab server (ClassifyBatch)."""

    wafer_id: str
    lot_id: str
    wafer_map: RawWaferMap | None


@dataclass(frozen=True)
class ClassifyOutcome:
    """The result for one wafer of a ClassifyBatch, or why it could not be classified."""

    wafer_id: str
    result: Result | None = None
    error: str = ""


@dataclass(frozen=True)
class ResultConflict:
    """A result refused because its (node_id, sequence) is stored with other content."""

    id: int
    node_id: str
    sequence: int
    wafer_id: str
    stored_wafer_id: str
    differences: tuple[str, ...]  # the fields that differ (wafer_id, prediction, ...)
    incoming: dict[str, object]  # the refused result, as JSON
    received_at: datetime


class CredentialKind(enum.StrEnum):
    """How an edge node proves who it is."""

    TOKEN = "token"
    CERTIFICATE = "certificate"


@dataclass(frozen=True)
class NodeCredential:
    """A credential issued to an edge node (its secret is never stored)."""

    id: int
    node_id: str
    kind: CredentialKind
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class User:
    """A person who signs in to the review UI (their password is stored only as a hash)."""

    user: str
    role: str  # "engineer" or "admin" (fab_server.settings.Role)
    created_at: datetime
    disabled_at: datetime | None = None
