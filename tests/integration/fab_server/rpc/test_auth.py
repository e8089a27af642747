"""Who may call FabService, over real channels to a real server on PostgreSQL.

Every RPC of the contract is refused without valid credentials; a node acts only as itself;
people read lots; revoking a node cuts its open stream; with mutual TLS the certificate says
who the node is; ``grpc_allow_unauthenticated`` is the only way in without a credential.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from fab_server.certs import DevCerts, make_dev_certs
from fab_server.rpc.convert import to_timestamp
from fab_server.rpc.server import start_grpc_server
from fab_server.services import nodes
from fab_server.settings import FabSettings
from wafercore.tls import channel_credentials
from waferplatform.v1 import common_pb2, fab_pb2, fab_pb2_grpc

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0
Sql = Callable[[str], list[tuple[Any, ...]]]
MakeResult = Callable[..., common_pb2.Classification]
FAB_SERVICE = fab_pb2.DESCRIPTOR.services_by_name["FabService"]


async def _finish(call: Any) -> None:
    """Wait for a call of any kind (or a coroutine making one) to end; raises its error."""
    if hasattr(call, "__aiter__"):  # a streaming response: read it to the end
        async for _ in call:
            pass
    else:
        await call


async def _outcome(call: Any) -> grpc.StatusCode:
    """The status a call ends with."""
    try:
        await _finish(call)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _refusal(call: Any) -> tuple[grpc.StatusCode, str]:
    """The status and details of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _finish(call)
    return caught.value.code(), caught.value.details()


def _batch(make_result: MakeResult, node_id: str, sequences: range) -> fab_pb2.ResultBatch:
    return fab_pb2.ResultBatch(
        node_id=node_id,
        batch_id=f"{node_id}-{sequences.start}",
        results=[make_result(node_id, s) for s in sequences],
    )


async def _stream(stub: Any, batch: fab_pb2.ResultBatch) -> fab_pb2.StreamAck:
    call = stub.StreamResults(timeout=TIMEOUT_S)
    await call.write(batch)
    ack = await call.read()
    await call.done_writing()
    return ack


def _window(node_id: str, p99_ms: float = 12.0) -> fab_pb2.EdgeMetrics:
    start = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    return fab_pb2.EdgeMetrics(
        node_id=node_id,
        window_start=to_timestamp(start),
        window_end=to_timestamp(start + timedelta(minutes=1)),
        wafers_classified=10,
        throughput_per_minute=10.0,
        latency_p50_ms=8.0,
        latency_p90_ms=10.0,
        latency_p99_ms=p99_ms,
        avg_recursion_steps=2.0,
        model_version="trm-v1.0.0",
        class_counts=[10, 0, 0, 0, 0, 0, 0, 0, 0],
    )


def _call(stub: Any, method: Any) -> Any:
    """Call ``method`` (a descriptor) with an empty request, whatever its kind."""
    request = getattr(fab_pb2, method.input_type.name)()
    invoke = getattr(stub, method.name)
    if method.client_streaming:
        return invoke(iter([request]), timeout=TIMEOUT_S)
    return invoke(request, timeout=TIMEOUT_S)


@pytest.mark.parametrize("credential", ["none", "unknown node token", "other string", "revoked"])
@pytest.mark.asyncio
async def test_every_rpc_refuses_a_caller_without_valid_credentials(
    fab: Any, credential: str, sql: Sql
) -> None:
    token: str | None = None
    if credential == "unknown node token":
        token = nodes.TOKEN_PREFIX + "x" * 43
    elif credential == "other string":
        token = "not-a-token-anyone-was-given"
    elif credential == "revoked":
        token = await fab.token_of("edge-gone")
        assert await nodes.revoke(fab.sessions, node_id="edge-gone") == 1
    stub = fab.stub_with(token)
    methods = list(FAB_SERVICE.methods)
    assert len(methods) >= 7  # the walk sees the whole contract, new RPCs included
    outcomes = {m.name: await _outcome(_call(stub, m)) for m in methods}
    assert outcomes == {m.name: grpc.StatusCode.UNAUTHENTICATED for m in methods}
    assert sql("SELECT count(*) FROM results") == [(0,)]


@pytest.mark.parametrize(
    "header", ["Basic dXNlcjpwYXNz", "Bearer", "bearer  ", "Token abc", "Bearer a b"]
)
@pytest.mark.asyncio
async def test_a_malformed_authorization_header_is_unauthenticated_never_internal(
    fab: Any, header: str
) -> None:
    metadata = (("authorization", header),)
    call = fab.stub_with(None).PushMetrics(_window("edge-1"), timeout=TIMEOUT_S, metadata=metadata)
    assert await _outcome(call) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.asyncio
async def test_a_node_cannot_stream_as_another_node_and_steal_its_sequences(
    fab: Any, make_result: MakeResult, sql: Sql
) -> None:
    node_a, node_b = await fab.node_stub("edge-a"), await fab.node_stub("edge-b")
    assert (await _stream(node_a, _batch(make_result, "edge-a", range(1, 6)))).acked_sequence == 5

    # B, with a valid token of its own, sends A's next sequences as A.
    spoof = _batch(make_result, "edge-a", range(6, 11))
    for result in spoof.results:
        result.wafer_id = "FORGED"
    code, details = await _refusal(_stream(node_b, spoof))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "edge-b" in details
    assert sql("SELECT count(*), max(sequence) FROM results") == [(5, 5)]

    ack = await _stream(node_a, _batch(make_result, "edge-a", range(6, 11)))
    assert (ack.acked_sequence, ack.accepted, ack.duplicates) == (10, 5, 0)
    assert sql(
        "SELECT count(*) FROM results WHERE node_id = 'edge-a' AND wafer_id <> 'FORGED'"
    ) == [(10,)]


@pytest.mark.asyncio
async def test_a_node_cannot_invent_a_node_nor_can_a_person_stream(
    fab: Any, make_result: MakeResult, sql: Sql
) -> None:
    made_up = _batch(make_result, "edge-never-enrolled", range(1, 3))
    code, _ = await _refusal(_stream(fab.stub, made_up))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _ = await _refusal(_stream(fab.engineer, _batch(make_result, "edge-1", range(1, 3))))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert sql("SELECT count(*) FROM results") == [(0,)]


_NODE_CALLS: list[tuple[str, Callable[[str], Any]]] = [
    ("PushMetrics", lambda node: _window(node, p99_ms=99.0)),
    ("GetModelAssignment", lambda node: fab_pb2.GetModelAssignmentRequest(node_id=node)),
    (
        "DownloadModel",
        lambda node: fab_pb2.DownloadModelRequest(node_id=node, model_version="trm-v1.0.0"),
    ),
]


@pytest.mark.parametrize(("method", "request_for"), _NODE_CALLS, ids=[m for m, _ in _NODE_CALLS])
@pytest.mark.asyncio
async def test_node_calls_are_only_for_the_calling_node(
    fab: Any, sql: Sql, method: str, request_for: Callable[[str], Any]
) -> None:
    other = await fab.node_stub("edge-2")
    for stub in (other, fab.engineer):  # another node; a person
        code, _ = await _refusal(getattr(stub, method)(request_for("edge-1"), timeout=TIMEOUT_S))
        assert code == grpc.StatusCode.PERMISSION_DENIED
    assert sql("SELECT count(*) FROM edge_metrics") == [(0,)]  # no fake p99 stored
    own = await _outcome(getattr(fab.stub, method)(request_for("edge-1"), timeout=TIMEOUT_S))
    # The node itself passes the check (no artifact is registered: DownloadModel finds none).
    assert own == (grpc.StatusCode.NOT_FOUND if method == "DownloadModel" else grpc.StatusCode.OK)


@pytest.mark.asyncio
async def test_lot_summaries_are_for_people_and_classify_batch_for_both(
    fab: Any, make_result: MakeResult
) -> None:
    await _stream(fab.stub, _batch(make_result, "edge-1", range(1, 4)))
    request = fab_pb2.GetLotSummaryRequest(lot_id="LOT-1")
    code, _ = await _refusal(fab.stub.GetLotSummary(request, timeout=TIMEOUT_S))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    summary = await fab.engineer.GetLotSummary(request, timeout=TIMEOUT_S)
    assert summary.total_wafers == 3
    for stub in (fab.stub, fab.engineer):  # past authentication: the empty request is refused
        code, details = await _refusal(
            stub.ClassifyBatch(fab_pb2.ClassifyBatchRequest(), timeout=TIMEOUT_S)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("wafers: ")


@pytest.mark.asyncio
async def test_flag_for_review_records_the_authenticated_caller(
    fab: Any, make_result: MakeResult, sql: Sql
) -> None:
    await _stream(fab.stub, _batch(make_result, "edge-1", range(1, 3)))

    def flag(key: str, sequence: int) -> fab_pb2.FlagForReviewRequest:
        return fab_pb2.FlagForReviewRequest(
            idempotency_key=key,
            node_id="edge-1",
            sequence=sequence,
            wafer_id=f"edge-1-W{sequence}",
            reason=common_pb2.REVIEW_REASON_MANUAL,
            requested_by="the-plant-manager",
        )

    await fab.engineer.FlagForReview(flag("by-engineer", 1), timeout=TIMEOUT_S)
    await fab.stub.FlagForReview(flag("by-node", 2), timeout=TIMEOUT_S)
    other = await fab.node_stub("edge-2")
    code, _ = await _refusal(other.FlagForReview(flag("by-other", 1), timeout=TIMEOUT_S))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert sql("SELECT idempotency_key, requested_by FROM review_items ORDER BY 1") == [
        ("by-engineer", "eng-ana"),
        ("by-node", "edge-1"),
    ]


@pytest.mark.asyncio
async def test_revoking_a_node_refuses_the_next_batch_of_its_open_stream(
    fab: Any, make_result: MakeResult, sql: Sql
) -> None:
    call = fab.stub.StreamResults(timeout=TIMEOUT_S)
    await call.write(_batch(make_result, "edge-1", range(1, 4)))
    assert (await call.read()).acked_sequence == 3

    assert await nodes.revoke(fab.sessions, node_id="edge-1") == 1
    await call.write(_batch(make_result, "edge-1", range(4, 7)))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert sql("SELECT count(*), max(sequence) FROM results") == [(3, 3)]
    # And a new call with the same token is refused from the start.
    code, _ = await _refusal(fab.stub.PushMetrics(_window("edge-1"), timeout=TIMEOUT_S))
    assert code == grpc.StatusCode.UNAUTHENTICATED


@asynccontextmanager
async def _serving(fab: Any, settings: FabSettings) -> AsyncIterator[int]:
    """Another server on the same database, with ``settings``; yields its port."""
    server, port = await start_grpc_server(settings, fab.sessions, None)
    try:
        yield port
    finally:
        await server.stop(grace=None)


@pytest.fixture
def pki(tmp_path: Path) -> DevCerts:
    return make_dev_certs(tmp_path / "pki", clients=("edge-m1", "edge-m2"))


@pytest.mark.asyncio
async def test_with_mutual_tls_the_enrolled_certificate_names_the_node(
    fab: Any, pki: DevCerts, engineer_token: str
) -> None:
    m1, m2 = pki.clients["edge-m1"], pki.clients["edge-m2"]
    await nodes.add_certificate(fab.sessions, node_id="edge-m1", cert_pem=m1.cert.read_bytes())
    m2_token = await fab.token_of("edge-m2")  # m2 has a token, but its certificate is unknown
    mtls = fab.settings.model_copy(
        update={
            "tls_cert": pki.server.cert,
            "tls_key": pki.server.key,
            "tls_client_ca": pki.ca.cert,
        }
    )

    async def push(pair: Any, node_id: str, token: str | None = None) -> grpc.StatusCode:
        credentials = channel_credentials(ca=pki.ca.cert, cert=pair.cert, key=pair.key)
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            stub = fab_pb2_grpc.FabServiceStub(channel)
            if token == engineer_token:
                request = fab_pb2.GetLotSummaryRequest(lot_id="LOT-NONE")
                return await _outcome(stub.GetLotSummary(request, metadata=metadata))
            return await _outcome(stub.PushMetrics(_window(node_id), metadata=metadata))

    async with _serving(fab, mtls) as port:
        assert await push(m1, "edge-m1") == grpc.StatusCode.OK
        assert await push(m1, "edge-m2") == grpc.StatusCode.PERMISSION_DENIED
        assert await push(m2, "edge-m2") == grpc.StatusCode.UNAUTHENTICATED
        # A presented certificate decides: a valid token beside an unknown one does not help.
        assert await push(m2, "edge-m2", m2_token) == grpc.StatusCode.UNAUTHENTICATED
        # A person's API token comes first (a tool on an mTLS-only port still needs a cert).
        assert await push(m2, "", engineer_token) == grpc.StatusCode.NOT_FOUND
        assert await nodes.revoke(fab.sessions, node_id="edge-m1") == 1
        assert await push(m1, "edge-m1") == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.asyncio
async def test_allow_unauthenticated_trusts_an_anonymous_caller_as_the_node_it_names(
    fab: Any, make_result: MakeResult, sql: Sql, caplog: pytest.LogCaptureFixture
) -> None:
    demo = fab.settings.model_copy(update={"grpc_allow_unauthenticated": True})
    with caplog.at_level(logging.WARNING, logger="fab_server.rpc.server"):
        async with _serving(fab, demo) as port:
            assert "ALLOW_UNAUTHENTICATED is on" in caplog.text  # logged before start returns
            anonymous = fab.stub_with(None, port)
            ack = await _stream(anonymous, _batch(make_result, "edge-demo", range(1, 3)))
            assert ack.accepted == 2
            await anonymous.PushMetrics(_window("edge-demo"), timeout=TIMEOUT_S)
            lot = fab_pb2.GetLotSummaryRequest(lot_id="LOT-1")
            code, _ = await _refusal(anonymous.GetLotSummary(lot, timeout=TIMEOUT_S))
            assert code == grpc.StatusCode.PERMISSION_DENIED  # people only, even here
            # A credential that is presented must still be valid.
            stranger = fab.stub_with(nodes.TOKEN_PREFIX + "y" * 43, port)
            code, _ = await _refusal(stranger.PushMetrics(_window("edge-demo"), timeout=TIMEOUT_S))
            assert code == grpc.StatusCode.UNAUTHENTICATED
    assert sql("SELECT count(*) FROM results WHERE node_id = 'edge-demo'") == [(2,)]
    assert sql("SELECT node_id FROM edge_metrics") == [("edge-demo",)]
    # The same database behind the default settings refuses the anonymous caller.
    code, _ = await _refusal(fab.stub_with(None).PushMetrics(_window("edge-demo")))
    assert code == grpc.StatusCode.UNAUTHENTICATED
