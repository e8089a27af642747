"""StreamResults over a real channel into PostgreSQL: acks, idempotency, concurrency, restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from fab_server.db import make_async_engine, session_factory
from fab_server.rpc.server import start_grpc_server
from waferplatform.v1 import common_pb2, fab_pb2, fab_pb2_grpc

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0
Sql = Callable[[str], list[tuple[Any, ...]]]
MakeResult = Callable[..., common_pb2.Classification]


def _batches(
    make_result: MakeResult, node_id: str, count: int, size: int, *, lots: int = 3
) -> list[fab_pb2.ResultBatch]:
    """``count`` batches of ``size`` results, sequences 1..count*size, lots shared by nodes."""
    return [
        fab_pb2.ResultBatch(
            node_id=node_id,
            batch_id=f"{node_id}-b{b}",
            results=[
                make_result(node_id, s, lot_id=f"LOT-{s % lots}")
                for s in range(b * size + 1, (b + 1) * size + 1)
            ],
        )
        for b in range(count)
    ]


async def _deliver(
    stub: fab_pb2_grpc.FabServiceStub, batches: Sequence[fab_pb2.ResultBatch]
) -> list[fab_pb2.StreamAck]:
    """Write every batch at once (pipelined, as an outbox drains), then read all acks."""
    call = stub.StreamResults(timeout=TIMEOUT_S)
    for batch in batches:
        await call.write(batch)
    await call.done_writing()
    acks = []
    while (ack := await call.read()) is not grpc.aio.EOF:
        acks.append(ack)
    assert await call.code() == grpc.StatusCode.OK
    return acks


@pytest.mark.asyncio
async def test_acks_follow_commits_and_a_resent_batch_only_counts_duplicates(
    fab: Any, make_result: MakeResult, sql: Sql
) -> None:
    first, second = _batches(make_result, "edge-1", count=2, size=10)
    acks = await _deliver(fab.stub, [first, second, first])
    assert [(a.batch_id, a.acked_sequence, a.accepted, a.duplicates) for a in acks] == [
        ("edge-1-b0", 10, 10, 0),
        ("edge-1-b1", 20, 10, 0),
        ("edge-1-b0", 20, 0, 10),  # the highest stored sequence, not the batch's
    ]
    assert sql("SELECT count(*), min(sequence), max(sequence) FROM results") == [(20, 1, 20)]
    assert sql("SELECT node_id, acked_sequence FROM edge_nodes") == [("edge-1", 20)]


@pytest.mark.asyncio
async def test_eight_concurrent_streams_lose_and_duplicate_nothing(
    fab: Any, make_result: MakeResult, sql: Sql
) -> None:
    nodes = [f"edge-{n}" for n in range(6)] + ["edge-twin", "edge-twin"]
    per_node = 10 * 40
    stubs = [await fab.node_stub(n) for n in nodes]  # each node with its own token
    # Built once per node: the twin's two streams carry the same results (a redelivery).
    outboxes = {n: _batches(make_result, n, count=10, size=40) for n in set(nodes)}
    streams = [_deliver(stub, outboxes[n]) for stub, n in zip(stubs, nodes, strict=True)]
    results = await asyncio.gather(*streams)

    for acks in results:
        assert [a.acked_sequence for a in acks] == sorted(a.acked_sequence for a in acks)
        assert acks[-1].acked_sequence == per_node
    twin = results[-2:]
    assert sum(a.accepted for acks in twin for a in acks) == per_node
    assert sum(a.duplicates for acks in twin for a in acks) == per_node
    distinct = len(set(nodes))
    assert sum(a.accepted for acks in results for a in acks) == distinct * per_node
    assert sql("SELECT count(*) FROM results") == [(distinct * per_node,)]
    assert sql("SELECT count(*) FROM (SELECT DISTINCT node_id, sequence FROM results) d") == [
        (distinct * per_node,)
    ]
    assert sql("SELECT DISTINCT acked_sequence FROM edge_nodes") == [(per_node,)]
    lots = [
        await fab.engineer.GetLotSummary(fab_pb2.GetLotSummaryRequest(lot_id=f"LOT-{k}"))
        for k in range(3)
    ]
    assert sum(lot.total_wafers for lot in lots) == distinct * per_node


@pytest.mark.asyncio
async def test_a_server_stopped_mid_stream_loses_nothing_when_the_node_resends(
    fab: Any, make_result: MakeResult, sql: Sql
) -> None:
    outbox = _batches(make_result, "edge-1", count=12, size=50)
    total = 12 * 50
    acked = 0
    call = fab.stub.StreamResults(timeout=TIMEOUT_S)
    for batch in outbox:  # everything in flight at once
        await call.write(batch)
    for _ in range(3):
        acked = max(acked, (await call.read()).acked_sequence)
    await fab.server.stop(grace=None)  # killed while later batches are in flight
    with pytest.raises(grpc.aio.AioRpcError):
        while await call.read() is not grpc.aio.EOF:
            pass
    assert 150 <= acked < total

    # A new server process on the same database; the node resends what no ack covered.
    engine = make_async_engine(fab.settings.database_url, fab.settings.db_schema)
    server, port = await start_grpc_server(fab.settings, session_factory(engine), None)
    try:
        unacked = [b for b in outbox if b.results[-1].sequence > acked]
        acks = await _deliver(fab.stub_with(await fab.token_of("edge-1"), port), unacked)
    finally:
        await server.stop(grace=None)
        await engine.dispose()

    assert acks[-1].acked_sequence == total
    assert sum(a.accepted + a.duplicates for a in acks) == sum(len(b.results) for b in unacked)
    assert sql("SELECT count(*), count(DISTINCT sequence), max(sequence) FROM results") == [
        (total, total, total)
    ]


@pytest.mark.parametrize(
    ("index", "change", "field"),
    [
        (3, {"confidence": 1.7}, "results[3].confidence"),
        (1, {"node_id": "edge-9"}, "results[1].node_id"),
        (2, {"wafer_id": ""}, "results[2].wafer_id"),
        (4, {"sequence": 0}, "results[4].sequence"),
        (0, {"class_probabilities": [0.5] * 9}, "results[0].class_probabilities"),
        (
            2,
            {"wafer_map": common_pb2.WaferMap(rows=26, cols=26, values=bytes(675))},
            "results[2].wafer_map.values",
        ),
        # PostgreSQL refuses NUL in text: it was INTERNAL, which an uplink retries forever.
        (1, {"wafer_id": "WF\x00-1"}, "results[1].wafer_id"),
        (3, {"lot_id": "LOT\x1b]0;pwned\x07"}, "results[3].lot_id"),  # a terminal escape
        (
            0,
            {"wafer_map": common_pb2.WaferMap(rows=1, cols=3, values=b"\x00\x01\x02", encoding=99)},
            "results[0].wafer_map.encoding",
        ),
        (2, {"tested_at": Timestamp(seconds=0)}, "results[2].tested_at"),  # "timestamp": 0
    ],
)
@pytest.mark.asyncio
async def test_a_batch_with_one_invalid_result_is_rejected_whole(
    fab: Any, make_result: MakeResult, sql: Sql, index: int, change: dict[str, Any], field: str
) -> None:
    good, bad = _batches(make_result, "edge-1", count=2, size=5)
    for name, value in change.items():
        if name in ("wafer_map", "tested_at"):
            getattr(bad.results[index], name).CopyFrom(value)
        elif name == "class_probabilities":
            bad.results[index].ClearField(name)
            bad.results[index].class_probabilities.extend(value)
        else:
            setattr(bad.results[index], name, value)
    call = fab.stub.StreamResults(timeout=TIMEOUT_S)
    await call.write(good)
    assert (await call.read()).acked_sequence == 5
    await call.write(bad)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}: ")
    assert sql("SELECT count(*), max(sequence) FROM results") == [(5, 5)]
    assert sql("SELECT acked_sequence FROM edge_nodes") == [(5,)]
