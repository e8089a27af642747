"""The uplink against a scripted in-process FabService, with the real outbox on disk.

The fake fab stores results on (sequence) like the real one, acks what it stored, and can be
told to fail streams, hold acks, reject batches or ack too much; the real fab server is in
``tests/integration/edge``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from edge.fab_client import open_channel
from edge.outbox import Outbox
from edge.settings import EdgeSettings
from edge.uplink import Uplink
from waferplatform.v1 import common_pb2, fab_pb2, fab_pb2_grpc

NODE = "edge-07"
TIMEOUT_S = 10.0


class FakeFab(fab_pb2_grpc.FabServiceServicer):
    """StreamResults only, scriptable; stores each (sequence) once, on ack."""

    def __init__(self) -> None:
        self.stored: dict[int, common_pb2.Classification] = {}
        self.batches: list[fab_pb2.ResultBatch] = []
        self.duplicates = 0
        self.streams = 0
        self.stream_starts: list[float] = []  # loop time of each StreamResults call
        self.never_ack = False  # hold every ack until cancelled
        self.max_unacked = 0
        self.fail_streams = 0  # abort the next N streams with UNAVAILABLE before reading
        self.ack_every = 1  # after a stream's first ack, hold acks until this many are unacked
        self.down_on_batch: int | None = None  # go down on receiving a stream's n-th batch
        self.down = False  # abort every stream with UNAVAILABLE
        self.reject: Callable[[fab_pb2.ResultBatch], str | None] = lambda batch: None
        # Report a rejection as INTERNAL unless it is the stream's first batch, as grpc does
        # when the client's next write races the server's abort.
        self.garble_rejections = False
        self.acked_sequence_override: int | None = None
        self.changed = asyncio.Condition()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), TIMEOUT_S)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def _ack(self, batch: fab_pb2.ResultBatch) -> fab_pb2.StreamAck:
        accepted = 0
        for result in batch.results:
            if result.sequence in self.stored:
                self.duplicates += 1
            else:
                self.stored[result.sequence] = result
                accepted += 1
        await self._notify()
        top = max(self.stored)
        return fab_pb2.StreamAck(
            node_id=batch.node_id,
            batch_id=batch.batch_id,
            acked_sequence=self.acked_sequence_override or top,
            accepted=accepted,
            duplicates=len(batch.results) - accepted,
        )

    async def StreamResults(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[fab_pb2.ResultBatch], context: Any
    ) -> AsyncIterator[fab_pb2.StreamAck]:
        self.streams += 1
        self.stream_starts.append(asyncio.get_running_loop().time())
        await self._notify()
        if self.down or self.fail_streams:
            self.fail_streams = max(0, self.fail_streams - 1)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "fab restarting")
        unacked: list[fab_pb2.ResultBatch] = []
        acks = 0
        received = 0
        async for batch in request_iterator:
            self.batches.append(batch)
            received += 1
            await self._notify()
            if received == self.down_on_batch:
                self.down = True
                await context.abort(grpc.StatusCode.UNAVAILABLE, "fab went away")
            problem = self.reject(batch)
            if problem is not None and self.garble_rejections and received > 1:
                await context.abort(grpc.StatusCode.INTERNAL, "Internal error from Core")
            if problem is not None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
            unacked.append(batch)
            if self.never_ack:
                continue
            self.max_unacked = max(self.max_unacked, len(unacked))
            if len(unacked) >= self.ack_every or acks == 0:
                for held in unacked:
                    yield await self._ack(held)
                    acks += 1
                unacked.clear()
        if self.never_ack:
            await asyncio.Event().wait()  # until the server or the client cancels
        for held in unacked:
            yield await self._ack(held)


class ZeroJitter(random.Random):
    """Backoff delays of 0: retries without waiting."""

    def uniform(self, a: float, b: float) -> float:
        return a


@pytest_asyncio.fixture
async def fab() -> AsyncIterator[tuple[FakeFab, int]]:
    fake = FakeFab()
    server = grpc.aio.server()
    fab_pb2_grpc.add_FabServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield fake, port
    finally:
        await server.stop(grace=None)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db", max_bytes=1 << 24, sync="normal")
    yield box
    box.close()


def _settings(tmp_path: Path, port: int, **overrides: Any) -> EdgeSettings:
    values: dict[str, Any] = {
        "node_id": NODE,
        "fab_address": f"127.0.0.1:{port}",
        "work_dir": tmp_path,
        "uplink_batch": 5,
        "uplink_backoff_initial_s": 0.01,
        "uplink_backoff_max_s": 0.05,
    }
    values.update(overrides)
    return EdgeSettings(**values)


def _record(wafer_id: str) -> bytes:
    """What the classify service appends: no node_id, no sequence (the uplink sets them)."""
    result = common_pb2.Classification(
        wafer_id=wafer_id,
        lot_id="LOT-A7732",
        class_probabilities=[0.92] + [0.01] * 8,
        prediction=common_pb2.DEFECT_CLASS_NONE,
        confidence=0.92,
        recursion_steps_used=1,
        inference_latency_ms=4.5,
        model_version="trm-v1.0.0",
        wafer_map=common_pb2.WaferMap(rows=2, cols=2, values=b"\x00\x01\x00\x02"),
    )
    result.classified_at.GetCurrentTime()
    return bytes(result.SerializeToString())


def _fill(outbox: Outbox, count: int, prefix: str = "W") -> list[int]:
    return outbox.append_many([_record(f"{prefix}{i}") for i in range(count)])


@pytest_asyncio.fixture
async def channel(tmp_path: Path, fab: tuple[FakeFab, int]) -> AsyncIterator[grpc.aio.Channel]:
    ch = open_channel(_settings(tmp_path, fab[1]))
    yield ch
    await ch.close()


@pytest.mark.asyncio
async def test_drain_delivers_every_result_once_with_node_and_outbox_sequence(
    tmp_path: Path, fab: tuple[FakeFab, int], outbox: Outbox, channel: grpc.aio.Channel
) -> None:
    fake, port = fab
    ids = _fill(outbox, 12)
    uplink = Uplink(_settings(tmp_path, port), outbox, channel)

    assert await uplink.drain_once() == 12

    assert sorted(fake.stored) == ids and fake.duplicates == 0
    assert [r.wafer_id for r in (fake.stored[i] for i in ids)] == [f"W{i}" for i in range(12)]
    assert all(r.node_id == NODE for r in fake.stored.values())
    assert [len(b.results) for b in fake.batches] == [5, 5, 2]  # uplink_batch
    assert len({b.batch_id for b in fake.batches}) == 3
    assert all(b.node_id == NODE and b.sent_at.seconds > 0 for b in fake.batches)
    assert fake.stored[ids[0]].wafer_map.values == b"\x00\x01\x00\x02"
    assert outbox.depth() == 0
    assert uplink.status.last_acked == ids[-1] and uplink.status.last_error == ""


@pytest.mark.asyncio
async def test_batches_are_cut_by_bytes_so_big_maps_stay_under_the_message_limit(
    tmp_path: Path, fab: tuple[FakeFab, int], outbox: Outbox, channel: grpc.aio.Channel
) -> None:
    fake, port = fab
    ids = _fill(outbox, 12)
    budget = 2 * len(_record("W0")) + 5  # room for two records, not three
    settings = _settings(tmp_path, port, uplink_batch=100, uplink_batch_bytes=1024)
    uplink = Uplink(settings.model_copy(update={"uplink_batch_bytes": budget}), outbox, channel)

    assert await uplink.drain_once() == 12

    assert [len(b.results) for b in fake.batches] == [2] * 6
    assert sorted(fake.stored) == ids and fake.duplicates == 0 and outbox.depth() == 0


@pytest.mark.asyncio
async def test_batches_are_pipelined_up_to_the_window(
    tmp_path: Path, fab: tuple[FakeFab, int], outbox: Outbox, channel: grpc.aio.Channel
) -> None:
    fake, port = fab
    fake.ack_every = 3  # a sender that waited for each ack would never get one
    _fill(outbox, 50)
    uplink = Uplink(_settings(tmp_path, port), outbox, channel, max_in_flight=3)

    assert await asyncio.wait_for(uplink.drain_once(), TIMEOUT_S) == 50
    assert fake.max_unacked == 3  # never more in flight than the window
    assert len(fake.stored) == 50 and outbox.depth() == 0


@pytest.mark.asyncio
async def test_only_acked_results_leave_the_outbox(
    tmp_path: Path, fab: tuple[FakeFab, int], outbox: Outbox, channel: grpc.aio.Channel
) -> None:
    fake, port = fab
    fake.down_on_batch = 3
    ids = _fill(outbox, 30)
    uplink = Uplink(_settings(tmp_path, port), outbox, channel)

    with pytest.raises(grpc.aio.AioRpcError):
        await uplink.drain_once()
    assert [r.sequence for r in fake.batches[2].results] == ids[10:15]  # sent, never acked
    assert [i for i, _ in outbox.pending(limit=100)] == ids[10:]
    assert uplink.status.last_acked == ids[9] and not uplink.status.connected


@pytest.mark.asyncio
async def test_an_ack_beyond_what_was_sent_deletes_only_what_was_sent(
    tmp_path: Path, fab: tuple[FakeFab, int], outbox: Outbox, channel: grpc.aio.Channel
) -> None:
    fake, port = fab
    fake.down_on_batch = 2
    ids = _fill(outbox, 10)
    fake.acked_sequence_override = ids[-1] + 1_000_000
    uplink = Uplink(_settings(tmp_path, port), outbox, channel, max_in_flight=1)

    with pytest.raises(grpc.aio.AioRpcError):
        await uplink.drain_once()
    assert [i for i, _ in outbox.pending(limit=100)] == ids[5:]


@pytest.mark.asyncio
async def test_a_restarted_uplink_resumes_from_the_outbox(
    tmp_path: Path, fab: tuple[FakeFab, int], channel: grpc.aio.Channel
) -> None:
    fake, port = fab
    settings = _settings(tmp_path, port)
    first = Outbox(settings.outbox_path, max_bytes=1 << 24)
    ids = _fill(first, 23)
    fake.down_on_batch = 3
    with pytest.raises(grpc.aio.AioRpcError):
        await Uplink(settings, first, channel).drain_once()
    first.close()

    fake.down_on_batch = None
    fake.down = False
    reopened = Outbox(settings.outbox_path, max_bytes=1 << 24)
    try:
        assert await Uplink(settings, reopened, channel).drain_once() == 13
        assert reopened.depth() == 0
    finally:
        reopened.close()
    assert sorted(fake.stored) == ids and fake.duplicates == 0


def _reject_w7(batch: fab_pb2.ResultBatch) -> str | None:
    for i, result in enumerate(batch.results):
        if result.wafer_id == "W7":
            return f"results[{i}].confidence: must be in [0, 1], got 1.5"
    return None


@pytest.mark.asyncio
@pytest.mark.parametrize("garbled", [False, True], ids=["clear", "garbled-by-a-racing-write"])
async def test_a_result_the_fab_names_as_invalid_is_dead_lettered_and_the_rest_delivered(
    tmp_path: Path,
    fab: tuple[FakeFab, int],
    outbox: Outbox,
    channel: grpc.aio.Channel,
    garbled: bool,
) -> None:
    fake, port = fab
    fake.reject = _reject_w7
    fake.garble_rejections = garbled
    ids = _fill(outbox, 12)
    registry = CollectorRegistry()
    uplink = Uplink(_settings(tmp_path, port), outbox, channel, registry=registry)

    assert await uplink.drain_once() == 12  # the next ack covers the dead-lettered one too

    assert sorted(fake.stored) == [i for i in ids if i != ids[7]]
    assert outbox.depth() == 0
    lines = uplink.dead_letter_path.read_text().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["sequence"] == ids[7] and entry["node_id"] == NODE
    assert entry["reason"] == "results[2].confidence: must be in [0, 1], got 1.5"
    kept = common_pb2.Classification.FromString(base64.b64decode(entry["classification_b64"]))
    assert kept.wafer_id == "W7"
    assert registry.get_sample_value("edge_uplink_dead_lettered_total") == 1


@pytest.mark.asyncio
async def test_an_undecodable_record_is_dead_lettered_without_being_sent(
    tmp_path: Path, fab: tuple[FakeFab, int], outbox: Outbox, channel: grpc.aio.Channel
) -> None:
    fake, port = fab
    good = _fill(outbox, 2)
    broken = outbox.append(b"\xff\xff\xff")
    good += _fill(outbox, 2, prefix="X")
    uplink = Uplink(_settings(tmp_path, port), outbox, channel)

    assert await uplink.drain_once() == 5
    assert sorted(fake.stored) == good
    entry = json.loads(uplink.dead_letter_path.read_text())
    assert entry["sequence"] == broken and "undecodable" in entry["reason"]


@pytest.mark.asyncio
async def test_a_rejection_naming_no_result_keeps_everything_and_retries_at_the_cap(
    tmp_path: Path, fab: tuple[FakeFab, int], outbox: Outbox, channel: grpc.aio.Channel
) -> None:
    fake, port = fab
    fake.reject = lambda batch: "node_id: has 300 characters; at most 128"
    ids = _fill(outbox, 6)
    stop = asyncio.Event()
    registry = CollectorRegistry()
    settings = _settings(tmp_path, port)
    uplink = Uplink(settings, outbox, channel, rng=ZeroJitter(), registry=registry)
    task = asyncio.create_task(uplink.run(stop))
    await fake.wait_for(lambda: fake.streams >= 3)
    assert registry.get_sample_value("edge_uplink_blocked") == 1
    failures = {"code": "INVALID_ARGUMENT"}
    assert registry.get_sample_value("edge_uplink_stream_failures_total", failures) >= 2
    stop.set()
    await asyncio.wait_for(task, TIMEOUT_S)
    # Zero jitter would retry at once; a blocked uplink waits the maximum (0.05 s) instead.
    gaps = [b - a for a, b in zip(fake.stream_starts, fake.stream_starts[1:], strict=False)]
    assert min(gaps) >= 0.05
    assert [i for i, _ in outbox.pending(limit=100)] == ids
    assert not uplink.dead_letter_path.exists()
    assert "INVALID_ARGUMENT: node_id" in uplink.status.last_error


@pytest.mark.asyncio
async def test_run_retries_until_the_fab_answers_then_delivers_new_results(
    tmp_path: Path, fab: tuple[FakeFab, int], outbox: Outbox, channel: grpc.aio.Channel
) -> None:
    fake, port = fab
    fake.fail_streams = 3
    first = _fill(outbox, 7)
    stop = asyncio.Event()
    uplink = Uplink(_settings(tmp_path, port), outbox, channel, rng=ZeroJitter(), idle_poll_s=0.01)
    task = asyncio.create_task(uplink.run(stop))
    try:
        await fake.wait_for(lambda: len(fake.stored) == 7)
        assert fake.streams == 4  # three failed, the fourth delivered
        later = _fill(outbox, 3, prefix="L")  # picked up by the open, idle stream
        await fake.wait_for(lambda: len(fake.stored) == 10)
        assert uplink.status.connected
        assert fake.streams == 4
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT_S)
    assert sorted(fake.stored) == first + later and fake.duplicates == 0
    assert outbox.depth() == 0
    assert not uplink.status.connected and uplink.status.last_error == ""


@pytest.mark.asyncio
async def test_stop_cuts_a_stream_the_fab_never_acks_and_keeps_its_results(
    tmp_path: Path, fab: tuple[FakeFab, int], outbox: Outbox, channel: grpc.aio.Channel
) -> None:
    fake, port = fab
    fake.never_ack = True
    ids = _fill(outbox, 8)
    stop = asyncio.Event()
    uplink = Uplink(_settings(tmp_path, port), outbox, channel, stop_grace_s=0.2)
    task = asyncio.create_task(uplink.run(stop))
    await fake.wait_for(lambda: len(fake.batches) == 1)
    stop.set()
    await asyncio.wait_for(task, TIMEOUT_S)
    assert [i for i, _ in outbox.pending(limit=100)] == ids
    # Slow start: during the grace period nothing more was sent before a first ack.
    assert len(fake.batches) == 1
