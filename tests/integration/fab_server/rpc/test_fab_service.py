"""The unary and download RPCs of FabService over a real channel, on PostgreSQL.

``fab.stub`` calls as the node ``edge-1``, ``fab.engineer`` as a person (see the conftest).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from fab_server.rpc.convert import to_timestamp
from fab_server.services import distribution
from waferplatform.v1 import common_pb2, fab_pb2

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0
MODEL_FILE = Path("models/trm-v1.0.0/model.onnx")
SIGNATURE = bytes(range(64))
Sql = Callable[[str], list[tuple[Any, ...]]]
MakeResult = Callable[..., common_pb2.Classification]
WaitUntil = Callable[..., Awaitable[None]]


def _ring_map(size: int = 26, *, wm811k: bool = False) -> common_pb2.WaferMap:
    y, x = np.mgrid[:size, :size]
    radius = np.hypot(y - size / 2 + 0.5, x - size / 2 + 0.5)
    wafer = np.where(radius <= size / 2, 0, 2)
    wafer[(radius > size / 2 - 2) & (radius <= size / 2)] = 1
    if wm811k:  # 0 no die, 1 pass, 2 fail
        wafer = np.choose(wafer, [1, 2, 0])
    return common_pb2.WaferMap(
        rows=size,
        cols=size,
        values=wafer.astype(np.uint8).tobytes(),
        encoding=common_pb2.DIE_ENCODING_WM811K if wm811k else common_pb2.DIE_ENCODING_CANONICAL,
    )


async def _send(fab: Any, results: list[common_pb2.Classification]) -> fab_pb2.StreamAck:
    call = fab.stub.StreamResults(timeout=TIMEOUT_S)
    await call.write(fab_pb2.ResultBatch(node_id="edge-1", batch_id="b", results=results))
    ack = await call.read()
    await call.done_writing()
    return ack


async def _status(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details()


@pytest.mark.asyncio
async def test_classify_batch_runs_the_default_model(fab: Any) -> None:
    request = fab_pb2.ClassifyBatchRequest(
        wafers=[
            fab_pb2.WaferInput(wafer_id="W1", lot_id="LOT-9", wafer_map=_ring_map()),
            fab_pb2.WaferInput(wafer_id="W2", lot_id="LOT-9", wafer_map=_ring_map(wm811k=True)),
            fab_pb2.WaferInput(
                wafer_id="W3",
                lot_id="LOT-9",
                wafer_map=common_pb2.WaferMap(rows=26, cols=26, values=bytes(675)),
            ),
        ]
    )
    response = await fab.stub.ClassifyBatch(request, timeout=TIMEOUT_S)
    first, same_in_wm811k, bad = response.results
    assert [r.wafer_id for r in response.results] == ["W1", "W2", "W3"]
    assert first.WhichOneof("outcome") == "classification"
    result = first.classification
    assert result.model_version == fab.settings.model_dir.name and result.lot_id == "LOT-9"
    assert len(result.class_probabilities) == 9
    assert result.prediction == int(np.argmax(result.class_probabilities))
    assert result.recursion_steps_used >= 1 and result.HasField("classified_at")
    assert same_in_wm811k.classification.class_probabilities == result.class_probabilities
    assert bad.WhichOneof("outcome") == "error"
    assert bad.error == "wafer_map.values: has 675 bytes, expected 676 (26x26)"


@pytest.mark.asyncio
async def test_classify_batch_refuses_more_than_1024_wafers(fab: Any) -> None:
    wafer = fab_pb2.WaferInput(wafer_id="W", wafer_map=_ring_map())
    request = fab_pb2.ClassifyBatchRequest(wafers=[wafer] * 1025)
    code, details = await _status(fab.stub.ClassifyBatch(request, timeout=TIMEOUT_S))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("wafers: has 1025 wafers; at most 1024")


@pytest.mark.asyncio
async def test_lot_summary_over_the_stored_results(
    fab: Any, make_result: MakeResult, wait_until: WaitUntil
) -> None:
    t0, hour = datetime(2026, 3, 1, 8, 0, tzinfo=UTC), timedelta(hours=1)
    half = common_pb2.WaferMap(rows=1, cols=4, values=b"\x00\x01\x00\x01")
    results = [
        make_result("edge-1", 1, classified_at=to_timestamp(t0), wafer_map=half),
        make_result("edge-1", 2, flagged_for_review=True, classified_at=to_timestamp(t0 + hour)),
        make_result("edge-1", 3, prediction=0, classified_at=to_timestamp(t0 + 2 * hour)),
        make_result("edge-1", 4, lot_id="LOT-2"),
    ]
    await _send(fab, results)
    summary = await fab.engineer.GetLotSummary(fab_pb2.GetLotSummaryRequest(lot_id="LOT-1"))
    assert list(summary.class_counts) == [1, 0, 0, 0, 2, 0, 0, 0, 0]
    assert summary.total_wafers == 3 and summary.flagged_count == 1
    assert summary.HasField("die_yield") and summary.die_yield == pytest.approx(0.5)
    assert summary.dominant_pattern == common_pb2.DEFECT_CLASS_EDGE_RING
    assert not summary.excursion
    assert summary.first_seen.ToDatetime(tzinfo=UTC) == t0
    assert summary.last_seen.ToDatetime(tzinfo=UTC) == t0 + 2 * hour
    other = await fab.engineer.GetLotSummary(fab_pb2.GetLotSummaryRequest(lot_id="LOT-2"))
    assert not other.HasField("die_yield")
    not_found = {"method": "GetLotSummary", "code": "NOT_FOUND"}

    def not_found_count() -> float:
        return REGISTRY.get_sample_value("fab_grpc_handling_seconds_count", not_found) or 0

    before = not_found_count()
    code, details = await _status(
        fab.engineer.GetLotSummary(fab_pb2.GetLotSummaryRequest(lot_id="LOT-404"))
    )
    assert code == grpc.StatusCode.NOT_FOUND and "LOT-404" in details
    # The server records the call after the client has its status: wait for it, then check
    # it counted exactly once.
    await wait_until(lambda: not_found_count() >= before + 1, "the NOT_FOUND to be recorded")
    assert not_found_count() == before + 1


@pytest.mark.asyncio
async def test_flag_for_review_returns_the_same_ticket_for_the_same_key(
    fab: Any, make_result: MakeResult
) -> None:
    await _send(fab, [make_result("edge-1", 1)])
    request = fab_pb2.FlagForReviewRequest(
        idempotency_key="station-7:42",
        node_id="edge-1",
        sequence=1,
        wafer_id="edge-1-W1",
        reason=common_pb2.REVIEW_REASON_MANUAL,
        comment="looks like a scratch",
        requested_by="operator-3",
    )
    first = await fab.stub.FlagForReview(request, timeout=TIMEOUT_S)
    again = await fab.stub.FlagForReview(request, timeout=TIMEOUT_S)
    assert first == again
    assert first.ticket_id and first.state == fab_pb2.REVIEW_STATE_OPEN
    assert (first.node_id, first.sequence, first.wafer_id) == ("edge-1", 1, "edge-1-W1")
    assert first.reason == common_pb2.REVIEW_REASON_MANUAL and not first.HasField("true_label")


@pytest.mark.asyncio
async def test_push_metrics_stores_each_window_once(fab: Any, sql: Sql) -> None:
    start = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    window = fab_pb2.EdgeMetrics(
        node_id="edge-1",
        window_start=to_timestamp(start),
        window_end=to_timestamp(start + timedelta(minutes=1)),
        wafers_classified=90,
        throughput_per_minute=90.0,
        latency_p50_ms=9.0,
        latency_p90_ms=14.0,
        latency_p99_ms=38.0,
        avg_recursion_steps=2.2,
        confidence_histogram=fab_pb2.ConfidenceHistogram(
            bucket_edges=[0.0, 0.6, 1.0], counts=[9, 81]
        ),
        review_rate=0.1,
        model_version="trm-v1.0.0",
        outbox_depth=3,
        class_counts=[80, 1, 1, 2, 2, 1, 1, 1, 1],
        gpu_temperature_c=61.0,
    )
    await fab.stub.PushMetrics(window, timeout=TIMEOUT_S)
    await fab.stub.PushMetrics(window, timeout=TIMEOUT_S)  # redelivery
    assert sql(
        "SELECT node_id, wafers_classified, latency_p99_ms, confidence_counts::text, "
        "class_counts::text FROM edge_metrics"
    ) == [("edge-1", 90, 38.0, "[9, 81]", "[80, 1, 1, 2, 2, 1, 1, 1, 1]")]


@pytest.mark.asyncio
async def test_assignment_then_chunked_download_and_resume(fab: Any) -> None:
    data = MODEL_FILE.read_bytes()
    await distribution.register_artifact(
        fab.sessions,
        version="trm-v1.0.0",
        artifact_format="onnx",
        path=MODEL_FILE,
        signature=SIGNATURE,
        signing_key_id="registry-2026",
        settings=fab.settings,
    )
    await distribution.assign(fab.sessions, node_id="*", version="trm-v1.0.0", stage=2)

    assignment = await fab.stub.GetModelAssignment(
        fab_pb2.GetModelAssignmentRequest(node_id="edge-1", artifact_format="onnx"),
        timeout=TIMEOUT_S,
    )
    assert assignment.action == fab_pb2.MODEL_ACTION_INSTALL
    assert assignment.desired_version == "trm-v1.0.0"
    assert assignment.sha256 == hashlib.sha256(data).hexdigest()
    assert (assignment.size_bytes, assignment.signature) == (len(data), SIGNATURE)
    assert assignment.signing_key_id == "registry-2026"
    assert assignment.stage == common_pb2.ROLLOUT_STAGE_PRODUCTION

    request = fab_pb2.DownloadModelRequest(
        node_id="edge-1", model_version="trm-v1.0.0", artifact_format="onnx"
    )
    chunks = [c async for c in fab.stub.DownloadModel(request, timeout=TIMEOUT_S)]
    assert len(chunks) == -(-len(data) // fab.settings.download_chunk_bytes) > 1
    assert [c.offset for c in chunks] == [
        i * fab.settings.download_chunk_bytes for i in range(len(chunks))
    ]
    assembled = b"".join(c.data for c in chunks)
    assert assembled == data
    assert hashlib.sha256(assembled).hexdigest() == chunks[0].sha256 == assignment.sha256
    assert chunks[0].signature == SIGNATURE and chunks[0].total_size == len(data)

    request.offset = 300_000  # resume after a broken download
    resumed = [c async for c in fab.stub.DownloadModel(request, timeout=TIMEOUT_S)]
    assert resumed[0].offset == 300_000 and resumed[0].sha256 == assignment.sha256
    assert data[:300_000] + b"".join(c.data for c in resumed) == data

    installed = await fab.stub.GetModelAssignment(
        fab_pb2.GetModelAssignmentRequest(node_id="edge-1", installed_version="trm-v1.0.0"),
        timeout=TIMEOUT_S,
    )
    assert (installed.action, installed.desired_version) == (
        fab_pb2.MODEL_ACTION_KEEP,
        "trm-v1.0.0",
    )
    request.offset = len(data) + 1
    code, details = await _status(fab.stub.DownloadModel(request, timeout=TIMEOUT_S).read())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("offset: ")
    request.model_version, request.offset = "trm-v9.9.9", 0
    code, _ = await _status(fab.stub.DownloadModel(request, timeout=TIMEOUT_S).read())
    assert code == grpc.StatusCode.NOT_FOUND


_BAD_REQUESTS: list[tuple[str, Any, str]] = [
    ("ClassifyBatch", fab_pb2.ClassifyBatchRequest(), "wafers"),
    ("GetLotSummary", fab_pb2.GetLotSummaryRequest(), "lot_id"),
    (
        "FlagForReview",
        fab_pb2.FlagForReviewRequest(node_id="edge-1", sequence=1, wafer_id="W1"),
        "idempotency_key",
    ),
    (
        "FlagForReview",
        fab_pb2.FlagForReviewRequest(idempotency_key="k", node_id="edge-1", wafer_id="W1"),
        "sequence",
    ),
    ("PushMetrics", fab_pb2.EdgeMetrics(node_id="edge-1"), "window_start"),
    (
        "PushMetrics",
        fab_pb2.EdgeMetrics(
            node_id="edge-1",
            window_start=to_timestamp(datetime(2026, 3, 1, tzinfo=UTC)),
            window_end=to_timestamp(datetime(2026, 3, 1, 0, 1, tzinfo=UTC)),
            review_rate=1.5,
        ),
        "review_rate",
    ),
    ("GetModelAssignment", fab_pb2.GetModelAssignmentRequest(), "node_id"),
    (
        "GetModelAssignment",
        fab_pb2.GetModelAssignmentRequest(node_id="edge-1", artifact_format="../../etc"),
        "artifact_format",
    ),
    ("DownloadModel", fab_pb2.DownloadModelRequest(), "node_id"),
    (
        "DownloadModel",
        fab_pb2.DownloadModelRequest(node_id="edge-1", model_version="latest"),
        "model_version",
    ),
]


@pytest.mark.parametrize(
    ("method", "request_message", "field"),
    _BAD_REQUESTS,
    ids=[f"{m}-{f}" for m, _, f in _BAD_REQUESTS],
)
@pytest.mark.asyncio
async def test_bad_requests_are_invalid_argument_naming_the_field(
    fab: Any, method: str, request_message: Any, field: str
) -> None:
    caller = fab.engineer if method == "GetLotSummary" else fab.stub  # people / nodes
    call = getattr(caller, method)(request_message, timeout=TIMEOUT_S)
    if method == "DownloadModel":
        call = call.read()
    code, details = await _status(call)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"{field}: ")
