"""The protobuf contracts: class ids, wire round trips and the shape of both services."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from wafercore.classes import DefectClass
from waferplatform.v1 import cloud_pb2, cloud_pb2_grpc, common_pb2, fab_pb2, fab_pb2_grpc


def _classification(sequence: int, *, novelty: float | None = None) -> common_pb2.Classification:
    probabilities = [0.01] * 9
    probabilities[common_pb2.DEFECT_CLASS_EDGE_RING] = 0.92
    message = common_pb2.Classification(
        wafer_id=f"WF-2024-0831-{1000 + sequence}",
        lot_id="LOT-A7732",
        node_id="edge-03",
        sequence=sequence,
        class_probabilities=probabilities,
        prediction=common_pb2.DEFECT_CLASS_EDGE_RING,
        confidence=0.92,
        recursion_steps_used=2,
        inference_latency_ms=22.4,
        model_version="trm-v2.1.0",
        flagged_for_review=False,
        classified_at=Timestamp(seconds=1_756_636_935, nanos=123_000_000),
        wafer_map=common_pb2.WaferMap(rows=26, cols=26, values=bytes([0, 1, 2, 0]) * 169),
    )
    if novelty is not None:
        message.novelty_score = novelty
    return message


def test_defect_class_matches_wafercore() -> None:
    proto = [
        (value.name.removeprefix("DEFECT_CLASS_"), value.number)
        for value in common_pb2.DefectClass.DESCRIPTOR.values
    ]
    assert proto == [(c.name, c.value) for c in DefectClass]


def test_defect_class_zero_is_the_real_class_none() -> None:
    # proto3 reads an unset enum as 0: an unset prediction must mean class None.
    assert common_pb2.Classification().prediction == DefectClass.NONE.value


def test_classification_field_numbers_are_stable() -> None:
    # Renumbering a field silently corrupts every stored and in-flight message.
    fields = {f.name: f.number for f in common_pb2.Classification.DESCRIPTOR.fields}
    assert fields == {
        "wafer_id": 1,
        "lot_id": 2,
        "node_id": 3,
        "sequence": 4,
        "class_probabilities": 5,
        "prediction": 6,
        "confidence": 7,
        "recursion_steps_used": 8,
        "inference_latency_ms": 9,
        "model_version": 10,
        "flagged_for_review": 11,
        "novelty_score": 12,
        "classified_at": 13,
        "wafer_map": 14,
        "review_reason": 15,
        "tested_at": 16,
        "embedding": 17,
    }


def test_classification_round_trip() -> None:
    original = _classification(41, novelty=0.37)

    decoded = common_pb2.Classification.FromString(original.SerializeToString())

    assert decoded == original
    assert decoded.sequence == 41
    assert len(decoded.class_probabilities) == len(DefectClass)
    assert decoded.prediction == DefectClass.EDGE_RING.value
    assert decoded.novelty_score == pytest.approx(0.37)
    assert decoded.wafer_map.values == original.wafer_map.values
    assert decoded.wafer_map.encoding == common_pb2.DIE_ENCODING_CANONICAL
    assert decoded.classified_at.ToNanoseconds() == 1_756_636_935_123_000_000


def test_novelty_score_absent_differs_from_zero() -> None:
    absent = common_pb2.Classification.FromString(_classification(1).SerializeToString())
    zero = common_pb2.Classification.FromString(_classification(1, novelty=0.0).SerializeToString())

    assert not absent.HasField("novelty_score")
    assert zero.HasField("novelty_score")
    assert zero.novelty_score == 0.0


def test_result_batch_round_trip() -> None:
    batch = fab_pb2.ResultBatch(
        node_id="edge-03",
        batch_id="b-0001",
        results=[_classification(s) for s in (7, 8, 9)],
        sent_at=Timestamp(seconds=1_756_636_940),
    )

    decoded = fab_pb2.ResultBatch.FromString(batch.SerializeToString())

    assert decoded == batch
    assert [r.sequence for r in decoded.results] == [7, 8, 9]
    assert {r.node_id for r in decoded.results} == {"edge-03"}


@pytest.mark.parametrize(
    ("module", "service", "method", "client_streaming", "server_streaming"),
    [
        (fab_pb2, "FabService", "StreamResults", True, True),
        (fab_pb2, "FabService", "ClassifyBatch", False, False),
        (fab_pb2, "FabService", "GetLotSummary", False, False),
        (fab_pb2, "FabService", "FlagForReview", False, False),
        (fab_pb2, "FabService", "PushMetrics", False, False),
        (fab_pb2, "FabService", "GetModelAssignment", False, False),
        (fab_pb2, "FabService", "DownloadModel", False, True),
        (cloud_pb2, "CloudSync", "UploadLabels", False, False),
        (cloud_pb2, "CloudSync", "UploadAggregates", False, False),
        (cloud_pb2, "CloudSync", "GetDeployments", False, False),
    ],
)
def test_rpc_streaming_kinds(
    module: object, service: str, method: str, client_streaming: bool, server_streaming: bool
) -> None:
    descriptor = module.DESCRIPTOR.services_by_name[service].methods_by_name[method]  # type: ignore[attr-defined]
    assert descriptor.client_streaming is client_streaming
    assert descriptor.server_streaming is server_streaming


@pytest.mark.parametrize(
    ("module", "grpc_module", "service", "methods"),
    [
        (
            fab_pb2,
            fab_pb2_grpc,
            "FabService",
            {
                "StreamResults",
                "ClassifyBatch",
                "GetLotSummary",
                "FlagForReview",
                "PushMetrics",
                "GetModelAssignment",
                "DownloadModel",
            },
        ),
        (
            cloud_pb2,
            cloud_pb2_grpc,
            "CloudSync",
            {"UploadLabels", "UploadAggregates", "GetDeployments"},
        ),
    ],
)
def test_services_expose_exactly_their_rpcs(
    module: object, grpc_module: object, service: str, methods: set[str]
) -> None:
    descriptor = module.DESCRIPTOR.services_by_name[service]  # type: ignore[attr-defined]
    assert set(descriptor.methods_by_name) == methods
    servicer = getattr(grpc_module, f"{service}Servicer")
    assert methods <= set(vars(servicer))
    assert callable(getattr(grpc_module, f"add_{service}Servicer_to_server"))
    assert callable(getattr(grpc_module, f"{service}Stub"))


def test_model_assignment_defaults_to_keep() -> None:
    # An empty answer (older server, missing field) must never make a node install anything.
    assert fab_pb2.ModelAssignment().action == fab_pb2.MODEL_ACTION_KEEP == 0


def test_reviewed_label_carries_a_map_only_when_set() -> None:
    # Fab policy decides whether maps leave the premises: "no map" must survive the wire.
    label = cloud_pb2.ReviewedLabel(
        wafer_key="a3" * 32,
        lot_key="5c" * 32,
        true_label=common_pb2.DEFECT_CLASS_SCRATCH,
        predicted_label=common_pb2.DEFECT_CLASS_LOC,
        model_version="trm-v2.1.0",
        confidence=0.55,
    )
    request = cloud_pb2.UploadLabelsRequest(fab_id="fab-1", idempotency_key="k-1", labels=[label])

    decoded = cloud_pb2.UploadLabelsRequest.FromString(request.SerializeToString())

    assert decoded == request
    assert not decoded.labels[0].HasField("wafer_map")
    label.wafer_map.CopyFrom(common_pb2.WaferMap(rows=1, cols=2, values=b"\x00\x01"))
    assert cloud_pb2.ReviewedLabel.FromString(label.SerializeToString()).HasField("wafer_map")
