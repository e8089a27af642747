"""Protobuf <-> domain conversion for FabService: the only place that touches ``pb2`` objects.

``*_from_proto`` raise `InvalidArgument` (naming the request field) for what the domain types
cannot hold (an unknown enum number, a missing timestamp, an undecodable map); everything
else is validated by the services.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp  # type: ignore[import-untyped]

from fab_server import domain
from fab_server.errors import InvalidArgument
from fab_server.services.ingest import canonical_map
from waferplatform.v1 import common_pb2, fab_pb2  # type: ignore[import-not-found]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TICKET_STATES = {
    domain.ReviewState.OPEN: fab_pb2.REVIEW_STATE_OPEN,
    domain.ReviewState.CLAIMED: fab_pb2.REVIEW_STATE_CLAIMED,
    domain.ReviewState.RESOLVED: fab_pb2.REVIEW_STATE_RESOLVED,
}


def to_datetime(stamp: Any, field: str) -> datetime:
    """An aware UTC datetime from a Timestamp (to the microsecond).

    Raises:
        InvalidArgument: nanos outside 0..999,999,999 or a time outside the years 1..9999.
    """
    # Arithmetic on the epoch: Timestamp.ToDatetime is several times slower, and this runs
    # once per streamed result.
    if not 0 <= stamp.nanos < 1_000_000_000:
        raise InvalidArgument(field, f"nanos {stamp.nanos} is outside 0..999,999,999")
    try:
        return _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)
    except OverflowError:
        raise InvalidArgument(field, f"{stamp.seconds} s is outside the years 1..9999") from None


def to_timestamp(value: datetime) -> Any:
    """A Timestamp from an aware datetime."""
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _review_reason(value: int, field: str) -> domain.ReviewReason:
    try:
        return domain.ReviewReason(value)
    except ValueError:
        raise InvalidArgument(field, f"{value} is not a ReviewReason") from None


def raw_map_from_proto(message: Any) -> domain.RawWaferMap:
    """A contract WaferMap as the sender encoded it (an unknown encoding is refused later)."""
    return domain.RawWaferMap(
        rows=message.rows, cols=message.cols, values=message.values, encoding=message.encoding
    )


def result_from_proto(message: Any, *, field: str) -> domain.Result:
    """A domain Result from a contract Classification (its map made canonical).

    Raises:
        InvalidArgument: no ``classified_at``, an unknown review reason or a bad map.
    """
    if not message.HasField("classified_at"):
        raise InvalidArgument(f"{field}.classified_at", "is required")
    wafer_map = None
    if message.HasField("wafer_map"):
        wafer_map = canonical_map(raw_map_from_proto(message.wafer_map), field=f"{field}.wafer_map")
    return domain.Result(
        node_id=message.node_id,
        sequence=message.sequence,
        wafer_id=message.wafer_id,
        lot_id=message.lot_id,
        model_version=message.model_version,
        prediction=message.prediction,
        probabilities=tuple(message.class_probabilities),
        confidence=message.confidence,
        steps=message.recursion_steps_used,
        latency_ms=message.inference_latency_ms,
        flagged=message.flagged_for_review,
        classified_at=to_datetime(message.classified_at, f"{field}.classified_at"),
        review_reason=_review_reason(message.review_reason, f"{field}.review_reason"),
        novelty=message.novelty_score if message.HasField("novelty_score") else None,
        embedding=tuple(message.embedding) or None,
        wafer_map=wafer_map,
        tested_at=(
            to_datetime(message.tested_at, f"{field}.tested_at")
            if message.HasField("tested_at")
            else None
        ),
    )


def batch_from_proto(batch: Any) -> list[domain.Result]:
    """The results of a ResultBatch, fields named ``results[i]...`` in errors."""
    return [
        result_from_proto(message, field=f"results[{i}]") for i, message in enumerate(batch.results)
    ]


def ack_to_proto(outcome: domain.IngestOutcome, *, batch_id: str) -> Any:
    """The StreamAck of a stored batch."""
    return fab_pb2.StreamAck(
        node_id=outcome.node_id,
        batch_id=batch_id,
        acked_sequence=outcome.acked_sequence,
        accepted=outcome.accepted,
        duplicates=outcome.duplicates,
        rejected=outcome.rejected,
    )


def result_to_proto(result: domain.Result) -> Any:
    """A contract Classification (without its map)."""
    message = common_pb2.Classification(
        wafer_id=result.wafer_id,
        lot_id=result.lot_id,
        node_id=result.node_id,
        sequence=result.sequence,
        class_probabilities=result.probabilities,
        prediction=result.prediction,
        confidence=result.confidence,
        recursion_steps_used=result.steps,
        inference_latency_ms=result.latency_ms,
        model_version=result.model_version,
        flagged_for_review=result.flagged,
        classified_at=to_timestamp(result.classified_at),
        review_reason=int(result.review_reason),
        embedding=result.embedding or (),
    )
    if result.novelty is not None:
        message.novelty_score = result.novelty
    if result.tested_at is not None:
        message.tested_at.CopyFrom(to_timestamp(result.tested_at))
    return message


def wafers_from_proto(request: Any) -> list[domain.WaferInput]:
    """The wafers of a ClassifyBatchRequest (maps still raw: each is checked on its own)."""
    return [
        domain.WaferInput(
            wafer_id=wafer.wafer_id,
            lot_id=wafer.lot_id,
            wafer_map=raw_map_from_proto(wafer.wafer_map) if wafer.HasField("wafer_map") else None,
        )
        for wafer in request.wafers
    ]


def classify_response_to_proto(outcomes: Sequence[domain.ClassifyOutcome]) -> Any:
    """ClassifyBatchResponse: a classification or an error per wafer, in request order."""
    response = fab_pb2.ClassifyBatchResponse()
    for outcome in outcomes:
        if outcome.result is not None:
            response.results.add(
                wafer_id=outcome.wafer_id, classification=result_to_proto(outcome.result)
            )
        else:
            response.results.add(wafer_id=outcome.wafer_id, error=outcome.error)
    return response


def lot_summary_to_proto(summary: domain.LotSummary) -> Any:
    """The contract LotSummary."""
    message = fab_pb2.LotSummary(
        lot_id=summary.lot_id,
        class_counts=summary.class_counts,
        total_wafers=summary.total_wafers,
        flagged_count=summary.flagged_count,
        dominant_pattern=summary.dominant_pattern,
        excursion=summary.excursion,
        excursion_reason=summary.excursion_reason,
    )
    if summary.die_yield is not None:
        message.die_yield = summary.die_yield
    if summary.first_seen is not None:
        message.first_seen.CopyFrom(to_timestamp(summary.first_seen))
    if summary.last_seen is not None:
        message.last_seen.CopyFrom(to_timestamp(summary.last_seen))
    return message


def flag_request_from_proto(request: Any, *, requested_by: str) -> domain.FlagRequest:
    """A domain FlagRequest from FlagForReviewRequest, asked by the authenticated caller.

    The message's own ``requested_by`` is ignored (the contract keeps it for compatibility):
    anyone could write any name there.
    """
    return domain.FlagRequest(
        idempotency_key=request.idempotency_key,
        node_id=request.node_id,
        sequence=request.sequence,
        wafer_id=request.wafer_id,
        reason=_review_reason(request.reason, "reason"),
        comment=request.comment,
        requested_by=requested_by,
    )


def ticket_to_proto(item: domain.ReviewItem) -> Any:
    """The ReviewTicket of a review item (``true_label`` only once resolved)."""
    ticket = fab_pb2.ReviewTicket(
        ticket_id=item.id,
        idempotency_key=item.idempotency_key,
        node_id=item.node_id,
        sequence=item.sequence,
        wafer_id=item.wafer_id,
        reason=int(item.reason),
        state=_TICKET_STATES[item.state],
        created_at=to_timestamp(item.created_at),
    )
    if item.state is domain.ReviewState.RESOLVED and item.true_label is not None:
        ticket.true_label = item.true_label
    return ticket


def metrics_from_proto(message: Any) -> domain.EdgeMetricsRecord:
    """A domain EdgeMetricsRecord from EdgeMetrics (GPU readings are not kept).

    Raises:
        InvalidArgument: a window time is missing.
    """
    for name in ("window_start", "window_end"):
        if not message.HasField(name):
            raise InvalidArgument(name, "is required")
    histogram = message.confidence_histogram
    return domain.EdgeMetricsRecord(
        node_id=message.node_id,
        window_start=to_datetime(message.window_start, "window_start"),
        window_end=to_datetime(message.window_end, "window_end"),
        wafers_classified=message.wafers_classified,
        throughput_per_minute=message.throughput_per_minute,
        latency_p50_ms=message.latency_p50_ms,
        latency_p90_ms=message.latency_p90_ms,
        latency_p99_ms=message.latency_p99_ms,
        avg_recursion_steps=message.avg_recursion_steps,
        review_rate=message.review_rate,
        model_version=message.model_version,
        outbox_depth=message.outbox_depth,
        confidence_edges=tuple(histogram.bucket_edges),
        confidence_counts=tuple(histogram.counts),
        class_counts=tuple(message.class_counts),
    )


def assignment_to_proto(
    *,
    node_id: str,
    installed_version: str,
    action: domain.ModelAction,
    artifact: domain.ModelArtifact | None,
    assignment: domain.Assignment | None,
) -> Any:
    """The ModelAssignment answer; ``desired_version`` is the installed one for KEEP."""
    message = fab_pb2.ModelAssignment(
        node_id=node_id,
        action=int(action),
        desired_version=(
            installed_version
            if action is domain.ModelAction.KEEP or assignment is None
            else assignment.version
        ),
    )
    if assignment is not None:
        message.rollout_id = assignment.rollout_id
        message.stage = assignment.stage
    if artifact is not None and artifact.version == message.desired_version:
        message.sha256 = artifact.sha256
        message.size_bytes = artifact.size_bytes
        message.signature = artifact.signature
        message.signing_key_id = artifact.signing_key_id
    return message


def chunk_to_proto(artifact: domain.ModelArtifact, *, offset: int, data: bytes, first: bool) -> Any:
    """One ModelChunk; the first of a stream carries the digest and signature."""
    chunk = fab_pb2.ModelChunk(offset=offset, data=data, total_size=artifact.size_bytes)
    if first:
        chunk.sha256 = artifact.sha256
        chunk.signature = artifact.signature
    return chunk
