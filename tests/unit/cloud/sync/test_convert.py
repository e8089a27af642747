"""The one validator of what fabs upload: every refusal names its field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cloud.sync.convert import (
    MAX_ITEMS,
    aggregate_from_proto,
    check_upload,
    convert_all,
    label_from_proto,
)
from wafercore.errors import InvalidInput
from waferplatform.v1 import cloud_pb2, common_pb2  # type: ignore[import-not-found]

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
KEY = "ab" * 32


def label(**changes: Any) -> Any:
    message = cloud_pb2.ReviewedLabel(
        wafer_key=KEY,
        lot_key=KEY,
        reviewer_key=KEY,
        true_label=8,
        predicted_label=0,
        model_version="cnn-v2.0.0",
        confidence=0.4,
        review_reason=1,
    )
    message.reviewed_at.FromDatetime(NOW - timedelta(hours=1))
    for name, value in changes.items():
        setattr(message, name, value)
    return message


def aggregate(**changes: Any) -> Any:
    values: dict[str, Any] = {
        "node_id": "node-a",
        "date": "2026-11-30",
        "model_version": "cnn-v2.0.0",
        "class_counts": [5, 1, 0, 0, 0, 0, 0, 0, 4],
        "wafers_classified": 10,
        "flagged_count": 2,
        "reviewed_count": 2,
        "reviewed_correct_count": 1,
        "latency_p99_ms": 12.5,
    }
    values.update(changes)
    return cloud_pb2.DailyAggregate(**values)


def test_a_valid_label_keeps_its_prediction_and_reason_and_a_wm811k_map_becomes_canonical() -> None:
    message = label()
    message.wafer_map.CopyFrom(
        common_pb2.WaferMap(
            rows=1, cols=3, values=bytes([0, 1, 2]), encoding=common_pb2.DIE_ENCODING_WM811K
        )
    )
    stored = label_from_proto(message, "labels[0]", fab_id="fab-1", now=NOW)
    assert (stored.label, stored.predicted_label, stored.review_reason) == ("Scratch", "None", 1)
    assert (stored.rows, stored.cols, stored.map_bytes) == (1, 3, bytes([2, 0, 1]))
    assert stored.fab_id == "fab-1" and stored.confidence == pytest.approx(0.4)
    assert not label_from_proto(label(), "x", fab_id="fab-1", now=NOW).has_map
    unknown = label_from_proto(label(model_version=""), "x", fab_id="fab-1", now=NOW)
    assert unknown.predicted_label is None  # the fab never had the result: nothing to score


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"wafer_key": "WF-2024-0831-1042"}, "labels[0].wafer_key"),
        ({"lot_key": "AB" * 32}, "labels[0].lot_key"),
        ({"reviewer_key": ""}, "labels[0].reviewer_key"),
        ({"true_label": 9}, "labels[0].true_label"),
        ({"predicted_label": 12}, "labels[0].predicted_label"),
        ({"confidence": 1.5}, "labels[0].confidence"),
        ({"review_reason": 7}, "labels[0].review_reason"),
        ({"model_version": "v" * 200}, "labels[0].model_version"),
    ],
)
def test_a_bad_label_is_refused_naming_its_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        label_from_proto(label(**changes), "labels[0]", fab_id="fab-1", now=NOW)
    assert refused.value.field == field


def test_a_label_from_the_future_or_with_a_broken_map_is_refused() -> None:
    future = label()
    future.reviewed_at.FromDatetime(NOW + timedelta(days=3))
    with pytest.raises(InvalidInput) as late:
        label_from_proto(future, "l", fab_id="f", now=NOW)
    assert late.value.field == "l.reviewed_at"
    broken = label()
    broken.wafer_map.CopyFrom(common_pb2.WaferMap(rows=2, cols=2, values=b"\x00"))
    with pytest.raises(InvalidInput) as short:
        label_from_proto(broken, "l", fab_id="f", now=NOW)
    assert short.value.field == "l.wafer_map.values"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"node_id": ""}, "a.node_id"),
        ({"date": "30/11/2026"}, "a.date"),
        ({"class_counts": [1, 2]}, "a.class_counts"),
        ({"wafers_classified": 11}, "a.wafers_classified"),
        ({"flagged_count": 11, "wafers_classified": 10}, "a.flagged_count"),
        ({"reviewed_correct_count": 3}, "a.reviewed_correct_count"),
        ({"latency_p99_ms": float("nan")}, "a.latency_p99_ms"),
        ({"avg_recursion_steps": -1.0}, "a.avg_recursion_steps"),
        ({"novelty_scored": 11}, "a.novelty_scored"),
        ({"novelty_scored": 3, "novelty_quantiles": [0.1] * 5}, "a.novelty_quantiles"),
        ({"novelty_quantiles": [0.1] * 19}, "a.novelty_quantiles"),  # none scored
        (
            {"novelty_scored": 3, "novelty_quantiles": [0.2, 0.1] + [0.3] * 17},
            "a.novelty_quantiles",
        ),
        ({"novelty_scored": 3, "novelty_quantiles": [float("nan")] * 19}, "a.novelty_quantiles"),
    ],
)
def test_a_bad_aggregate_is_refused_naming_its_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        aggregate_from_proto(aggregate(**changes), "a", fab_id="fab-1")
    assert refused.value.field == field


def test_novelty_quantiles_travel_when_wafers_were_scored() -> None:
    levels = [0.01 * i for i in range(19)]
    kept = aggregate_from_proto(
        aggregate(novelty_scored=7, novelty_quantiles=levels), "a", fab_id="fab-1"
    )
    assert kept.novelty_scored == 7 and kept.novelty_quantiles == pytest.approx(tuple(levels))
    none = aggregate_from_proto(aggregate(), "a", fab_id="fab-1")
    assert (none.novelty_scored, none.novelty_quantiles) == (0, ())


def test_convert_all_keeps_the_valid_items_and_says_why_the_others_were_refused() -> None:
    valid, refused = convert_all(
        [aggregate(), aggregate(date="x"), aggregate(node_id="node-b")],
        lambda m, f: aggregate_from_proto(m, f, fab_id="fab-1"),
        "aggregates",
    )
    assert [a.node_id for a in valid] == ["node-a", "node-b"]
    assert refused == ["aggregates[1].date: 'x' is not YYYY-MM-DD"]


def test_the_envelope_names_the_fab_the_key_and_the_size() -> None:
    check_upload("fab-1", "k", MAX_ITEMS, "fab-1")
    with pytest.raises(PermissionError, match="fab-2"):
        check_upload("fab-2", "k", 1, "fab-1")
    for args, field in [
        (("", "k", 1, "fab-1"), "fab_id"),
        (("fab-1", "", 1, "fab-1"), "idempotency_key"),
        (("fab-1", "k" * 257, 1, "fab-1"), "idempotency_key"),
        (("fab-1", "k", MAX_ITEMS + 1, "fab-1"), "labels/aggregates"),
    ]:
        with pytest.raises(InvalidInput) as refused:
            check_upload(*args)
        assert refused.value.field == field
