"""Protobuf <-> domain conversion of FabService (no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from fab_server import domain
from fab_server.rpc import convert
from wafercore.errors import InvalidInput
from waferplatform.v1 import common_pb2, fab_pb2

NOW = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)
PROBABILITIES = (0.125, 0.125, 0.125, 0.125, 0.25, 0.0625, 0.0625, 0.0625, 0.0625)


def _classification(**fields: object) -> common_pb2.Classification:
    message = common_pb2.Classification(
        wafer_id="W1",
        lot_id="LOT-1",
        node_id="edge-1",
        sequence=42,
        class_probabilities=PROBABILITIES,
        prediction=common_pb2.DEFECT_CLASS_EDGE_RING,
        confidence=0.25,
        recursion_steps_used=3,
        inference_latency_ms=7.5,
        model_version="trm-v1.0.0",
        flagged_for_review=True,
        review_reason=common_pb2.REVIEW_REASON_LOW_CONFIDENCE,
        classified_at=convert.to_timestamp(NOW),
    )
    for name, value in fields.items():
        setattr(message, name, value)
    return message


def test_a_classification_round_trips() -> None:
    message = _classification()
    message.novelty_score = 0.5
    result = convert.result_from_proto(message, field="results[0]")
    assert result == domain.Result(
        node_id="edge-1",
        sequence=42,
        wafer_id="W1",
        lot_id="LOT-1",
        model_version="trm-v1.0.0",
        prediction=4,
        probabilities=PROBABILITIES,
        confidence=0.25,
        steps=3,
        latency_ms=7.5,
        flagged=True,
        classified_at=NOW,
        review_reason=domain.ReviewReason.LOW_CONFIDENCE,
        novelty=0.5,
    )
    assert convert.result_to_proto(result) == message


def test_absent_novelty_is_none_not_zero() -> None:
    assert convert.result_from_proto(_classification(), field="r").novelty is None


def test_maps_are_made_canonical_and_bad_ones_named() -> None:
    message = _classification()
    message.wafer_map.CopyFrom(
        common_pb2.WaferMap(
            rows=1, cols=3, values=b"\x00\x01\x02", encoding=common_pb2.DIE_ENCODING_WM811K
        )
    )
    result = convert.result_from_proto(message, field="results[2]")
    assert result.wafer_map == domain.StoredMap(rows=1, cols=3, values=b"\x02\x00\x01")
    message.wafer_map.values = b"\x00\x01"
    with pytest.raises(InvalidInput) as caught:
        convert.result_from_proto(message, field="results[2]")
    assert caught.value.field == "results[2].wafer_map.values"
    message.wafer_map.values = b"\x00\x01\x02"
    message.wafer_map.encoding = 99  # proto3 enums are open: an unknown number arrives as is
    with pytest.raises(InvalidInput) as encoding:
        convert.result_from_proto(message, field="results[2]")
    assert encoding.value.field == "results[2].wafer_map.encoding"


def test_the_station_time_travels_and_is_absent_when_unset() -> None:
    message = _classification()
    assert convert.result_from_proto(message, field="r").tested_at is None
    message.tested_at.CopyFrom(convert.to_timestamp(NOW - timedelta(seconds=30)))
    result = convert.result_from_proto(message, field="r")
    assert result.tested_at == NOW - timedelta(seconds=30)
    assert convert.result_to_proto(result).tested_at == message.tested_at


def test_missing_time_and_unknown_enums_are_invalid() -> None:
    message = _classification()
    message.ClearField("classified_at")
    with pytest.raises(InvalidInput) as no_time:
        convert.result_from_proto(message, field="results[1]")
    assert no_time.value.field == "results[1].classified_at"
    with pytest.raises(InvalidInput) as reason:
        convert.result_from_proto(_classification(review_reason=99), field="results[1]")
    assert reason.value.field == "results[1].review_reason"
    with pytest.raises(InvalidInput) as flag_reason:
        convert.flag_request_from_proto(fab_pb2.FlagForReviewRequest(reason=12), requested_by="a")
    assert flag_reason.value.field == "reason"


def test_a_flag_request_records_the_caller_not_the_message() -> None:
    message = fab_pb2.FlagForReviewRequest(node_id="edge-1", requested_by="somebody-else")
    flag = convert.flag_request_from_proto(message, requested_by="edge-1")
    assert flag.requested_by == "edge-1"


def test_batch_fields_are_indexed() -> None:
    batch = fab_pb2.ResultBatch(node_id="edge-1", results=[_classification(), _classification()])
    batch.results[1].ClearField("classified_at")
    with pytest.raises(InvalidInput, match=r"^results\[1\]\.classified_at"):
        convert.batch_from_proto(batch)


def test_lot_summary_yield_is_absent_when_unknown() -> None:
    summary = domain.LotSummary(
        lot_id="LOT-1",
        class_counts=(3, 0, 0, 0, 1, 0, 0, 0, 0),
        total_wafers=4,
        die_yield=None,
        flagged_count=1,
        dominant_pattern=4,
        excursion=True,
        excursion_reason="Edge-Ring on 25%",
        first_seen=NOW,
        last_seen=NOW,
    )
    message = convert.lot_summary_to_proto(summary)
    assert not message.HasField("die_yield")
    assert list(message.class_counts) == [3, 0, 0, 0, 1, 0, 0, 0, 0]
    assert message.dominant_pattern == common_pb2.DEFECT_CLASS_EDGE_RING
    assert message.first_seen.ToDatetime(tzinfo=UTC) == NOW
    with_yield = convert.lot_summary_to_proto(
        domain.LotSummary(**{**summary.__dict__, "die_yield": 0.0})
    )
    assert with_yield.HasField("die_yield") and with_yield.die_yield == 0.0


def test_ticket_has_a_true_label_only_when_resolved() -> None:
    item = domain.ReviewItem(
        id="t-1",
        idempotency_key="k",
        node_id="edge-1",
        sequence=7,
        wafer_id="W7",
        lot_id="LOT-1",
        reason=domain.ReviewReason.MANUAL,
        state=domain.ReviewState.CLAIMED,
        priority=0.5,
        predicted_class=3,
        confidence=0.5,
        novelty=None,
        model_version="trm-v1.0.0",
        created_at=NOW,
        true_label=5,
    )
    ticket = convert.ticket_to_proto(item)
    assert ticket.state == fab_pb2.REVIEW_STATE_CLAIMED and not ticket.HasField("true_label")
    resolved = convert.ticket_to_proto(
        domain.ReviewItem(**{**item.__dict__, "state": domain.ReviewState.RESOLVED})
    )
    assert resolved.HasField("true_label") and resolved.true_label == 5


def test_metrics_need_both_window_times() -> None:
    message = fab_pb2.EdgeMetrics(node_id="edge-1", window_start=convert.to_timestamp(NOW))
    with pytest.raises(InvalidInput) as caught:
        convert.metrics_from_proto(message)
    assert caught.value.field == "window_end"


def test_keep_answers_the_installed_version_and_chunks_carry_the_digest_first() -> None:
    artifact = domain.ModelArtifact(
        version="trm-v2.0.0",
        artifact_format="onnx",
        sha256="ab" * 32,
        size_bytes=10,
        signature=b"s" * 64,
        signing_key_id="k1",
        path="/x",
        created_at=NOW,
    )
    assignment = domain.Assignment(node_id="*", version="trm-v2.0.0", rollout_id="r", stage=2)
    install = convert.assignment_to_proto(
        node_id="edge-1",
        installed_version="trm-v1.0.0",
        action=domain.ModelAction.INSTALL,
        artifact=artifact,
        assignment=assignment,
    )
    assert (install.desired_version, install.action) == ("trm-v2.0.0", fab_pb2.MODEL_ACTION_INSTALL)
    assert (install.sha256, install.size_bytes, install.signing_key_id) == ("ab" * 32, 10, "k1")
    assert install.stage == common_pb2.ROLLOUT_STAGE_PRODUCTION
    keep = convert.assignment_to_proto(
        node_id="edge-1",
        installed_version="trm-v1.0.0",
        action=domain.ModelAction.KEEP,
        artifact=None,
        assignment=None,
    )
    assert (keep.desired_version, keep.action, keep.sha256) == ("trm-v1.0.0", 0, "")
    first = convert.chunk_to_proto(artifact, offset=0, data=b"abc", first=True)
    later = convert.chunk_to_proto(artifact, offset=3, data=b"def", first=False)
    assert (first.sha256, first.signature, first.total_size) == ("ab" * 32, b"s" * 64, 10)
    assert (later.sha256, later.signature, later.offset) == ("", b"", 3)


def test_timestamps_convert_exactly_and_bad_ones_are_invalid() -> None:
    for value in (NOW, datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, tzinfo=UTC)):
        assert convert.to_datetime(convert.to_timestamp(value), "t") == value
    with pytest.raises(InvalidInput) as nanos:
        convert.to_datetime(Timestamp(seconds=0, nanos=-1), "results[0].classified_at")
    assert nanos.value.field == "results[0].classified_at"
    with pytest.raises(InvalidInput):
        convert.to_datetime(Timestamp(seconds=10**12), "t")
