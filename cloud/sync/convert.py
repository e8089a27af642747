"""CloudSync messages to and from the cloud's records; the one validator of what fabs upload.

Everything a fab sends is checked here. An identifier must look like the keyed hash the
contract asks for (64 lowercase hex characters): a raw wafer or lot id is refused, not stored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from cloud.services.sync import Plan
from cloud.storage.aggregates import DailyAggregate
from cloud.storage.labels import ReviewedLabel
from wafercore.classes import NUM_CLASSES, DefectClass
from wafercore.errors import InvalidInput
from wafercore.novelty import QUANTILE_LEVELS
from wafercore.validation import check_id, check_time_range, map_from_bytes
from waferplatform.v1 import cloud_pb2  # type: ignore[import-not-found]

MAX_ITEMS = 5000
"""Labels or aggregates in one upload (the contract says a few thousand)."""
MAX_KEY_CHARS = 256
MAX_VERSION_CHARS = 128
REVIEW_REASONS = 5  # ReviewReason numbers 0..4
_HASH = re.compile(r"^[0-9a-f]{64}$")
T = TypeVar("T")


def check_upload(fab_id: str, key: str, count: int, caller_fab: str) -> None:
    """Refuse an upload whose envelope is wrong (before any item is looked at).

    Raises:
        InvalidInput: a bad fab id, idempotency key or item count, naming the field.
        PermissionError: ``fab_id`` is not the caller's own fab.
    """
    check_id(fab_id, "fab_id")
    if fab_id != caller_fab:
        raise PermissionError(f"this token belongs to fab {caller_fab!r}, not {fab_id!r}")
    if not key or len(key) > MAX_KEY_CHARS:
        raise InvalidInput("idempotency_key", f"must have 1 to {MAX_KEY_CHARS} characters")
    if count > MAX_ITEMS:
        raise InvalidInput("labels/aggregates", f"has {count} items; at most {MAX_ITEMS}")


def convert_all(
    items: Sequence[Any], convert: Callable[[Any, str], T], field: str
) -> tuple[list[T], list[str]]:
    """Each item converted, and the reasons of those refused (``field[i].x: reason``)."""
    valid: list[T] = []
    refused: list[str] = []
    for index, item in enumerate(items):
        try:
            valid.append(convert(item, f"{field}[{index}]"))
        except InvalidInput as err:
            refused.append(f"{err.field}: {err.reason}")
    return valid, refused


def _key(value: str, field: str) -> str:
    if not _HASH.match(value):
        raise InvalidInput(field, "must be the keyed hash (64 lowercase hex), never a raw id")
    return value


def _class(value: int, field: str) -> DefectClass:
    if not 0 <= value < NUM_CLASSES:
        raise InvalidInput(field, f"{value} is not a DefectClass (0..{NUM_CLASSES - 1})")
    return DefectClass(value)


def _time(stamp: Timestamp, field: str, now: datetime) -> datetime:
    try:
        value = stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidInput(field, "is not a valid time") from None
    return check_time_range(value, field, now=now)


def _version(value: str, field: str) -> str:
    if len(value) > MAX_VERSION_CHARS:
        raise InvalidInput(field, f"has more than {MAX_VERSION_CHARS} characters")
    return value


def label_from_proto(message: Any, field: str, *, fab_id: str, now: datetime) -> ReviewedLabel:
    """A contract ReviewedLabel as the cloud keeps it.

    Raises:
        InvalidInput: naming the first bad field.
    """
    if not 0 <= message.confidence <= 1:
        raise InvalidInput(f"{field}.confidence", f"{message.confidence} is outside [0, 1]")
    if not 0 <= message.review_reason < REVIEW_REASONS:
        raise InvalidInput(f"{field}.review_reason", f"{message.review_reason} is unknown")
    rows = cols = map_bytes = None
    if message.HasField("wafer_map"):
        wafer_map = message.wafer_map
        grid = map_from_bytes(
            wafer_map.rows,
            wafer_map.cols,
            wafer_map.values,
            encoding=wafer_map.encoding,
            field=f"{field}.wafer_map",
        )
        rows, cols, map_bytes = grid.shape[0], grid.shape[1], grid.tobytes()
    return ReviewedLabel(
        fab_id=fab_id,
        wafer_key=_key(message.wafer_key, f"{field}.wafer_key"),
        lot_key=_key(message.lot_key, f"{field}.lot_key"),
        reviewer_key=_key(message.reviewer_key, f"{field}.reviewer_key"),
        label=_class(message.true_label, f"{field}.true_label").display_name,
        reviewed_at=_time(message.reviewed_at, f"{field}.reviewed_at", now),
        rows=rows,
        cols=cols,
        map_bytes=map_bytes,
        # No model version: the fab never got the result, so there is no prediction to score.
        predicted_label=(
            _class(message.predicted_label, f"{field}.predicted_label").display_name
            if message.model_version
            else None
        ),
        model_version=_version(message.model_version, f"{field}.model_version"),
        confidence=float(message.confidence),
        review_reason=int(message.review_reason),
    )


def aggregate_from_proto(message: Any, field: str, *, fab_id: str) -> DailyAggregate:
    """A contract DailyAggregate as the cloud keeps it.

    Raises:
        InvalidInput: naming the first bad field.
    """
    check_id(message.node_id, f"{field}.node_id")
    try:
        day = date.fromisoformat(message.date)
    except ValueError:
        raise InvalidInput(f"{field}.date", f"{message.date!r} is not YYYY-MM-DD") from None
    counts = tuple(int(c) for c in message.class_counts)
    if len(counts) != NUM_CLASSES:
        raise InvalidInput(f"{field}.class_counts", f"has {len(counts)} entries, not 9")
    if sum(counts) != message.wafers_classified:
        raise InvalidInput(f"{field}.wafers_classified", "is not the sum of class_counts")
    if message.flagged_count > message.wafers_classified:
        raise InvalidInput(f"{field}.flagged_count", "exceeds wafers_classified")
    if message.reviewed_correct_count > message.reviewed_count:
        raise InvalidInput(f"{field}.reviewed_correct_count", "exceeds reviewed_count")
    for name in ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "avg_recursion_steps"):
        value = getattr(message, name)
        if not 0 <= value < float("inf"):
            raise InvalidInput(f"{field}.{name}", f"{value} is not a finite value >= 0")
    quantiles = _novelty_quantiles(message, field)
    return DailyAggregate(
        fab_id=fab_id,
        node_id=message.node_id,
        day=day,
        model_version=_version(message.model_version, f"{field}.model_version"),
        class_counts=counts,
        wafers_classified=int(message.wafers_classified),
        flagged_count=int(message.flagged_count),
        reviewed_count=int(message.reviewed_count),
        reviewed_correct_count=int(message.reviewed_correct_count),
        latency_p50_ms=float(message.latency_p50_ms),
        latency_p90_ms=float(message.latency_p90_ms),
        latency_p99_ms=float(message.latency_p99_ms),
        avg_recursion_steps=float(message.avg_recursion_steps),
        novelty_quantiles=quantiles,
        novelty_scored=int(message.novelty_scored),
    )


def _novelty_quantiles(message: Any, field: str) -> tuple[float, ...]:
    """The aggregate's novelty quantiles: none, or one finite value per level, ascending."""
    values = tuple(float(v) for v in message.novelty_quantiles)
    if message.novelty_scored > message.wafers_classified:
        raise InvalidInput(f"{field}.novelty_scored", "exceeds wafers_classified")
    if not values and not message.novelty_scored:
        return ()
    if len(values) != len(QUANTILE_LEVELS) or not message.novelty_scored:
        raise InvalidInput(
            f"{field}.novelty_quantiles",
            f"must hold {len(QUANTILE_LEVELS)} values exactly when novelty_scored > 0, "
            f"got {len(values)} for {message.novelty_scored} scored wafers",
        )
    if not all(math.isfinite(v) for v in values) or list(values) != sorted(values):
        raise InvalidInput(f"{field}.novelty_quantiles", "must be finite and ascending")
    return values


def plan_to_proto(plan: Plan) -> Any:
    """The contract's GetDeploymentsResponse of a plan."""
    response = cloud_pb2.GetDeploymentsResponse(fab_id=plan.fab_id)
    response.generated_at.FromDatetime(plan.generated_at)
    for entry in plan.entries:
        response.deployments.add(
            node_id=entry.node_id,
            model_version=entry.model_version,
            stage=entry.stage,
            rollout_id=entry.rollout_id,
            sha256=entry.sha256,
            size_bytes=entry.size_bytes,
            signature=entry.signature,
            signing_key_id=entry.signing_key_id,
        )
    return response
