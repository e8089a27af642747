"""The generated stubs and servicers work over a real gRPC channel (grpc.aio, loopback)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import grpc
import pytest

from waferplatform.v1 import common_pb2, fab_pb2, fab_pb2_grpc

ARTIFACT = bytes(range(256)) * 40  # 10,240 bytes
CHUNKS = 3
TIMEOUT_S = 10.0


class _MinimalFabServicer(fab_pb2_grpc.FabServiceServicer):
    """Implements StreamResults and DownloadModel only; the rest stay UNIMPLEMENTED."""

    async def StreamResults(  # noqa: N802 (gRPC method name)
        self,
        request_iterator: AsyncIterator[fab_pb2.ResultBatch],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[fab_pb2.StreamAck]:
        async for batch in request_iterator:
            yield fab_pb2.StreamAck(
                node_id=batch.node_id,
                batch_id=batch.batch_id,
                acked_sequence=max(r.sequence for r in batch.results),
                accepted=len(batch.results),
            )

    async def DownloadModel(  # noqa: N802 (gRPC method name)
        self, request: fab_pb2.DownloadModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[fab_pb2.ModelChunk]:
        size = -(-len(ARTIFACT) // CHUNKS)
        for index, offset in enumerate(range(0, len(ARTIFACT), size)):
            chunk = fab_pb2.ModelChunk(
                offset=offset, data=ARTIFACT[offset : offset + size], total_size=len(ARTIFACT)
            )
            if index == 0:
                chunk.sha256 = hashlib.sha256(ARTIFACT).hexdigest()
                chunk.signature = b"\x01" * 64
            yield chunk


def _batch(batch_id: str, sequences: list[int]) -> fab_pb2.ResultBatch:
    return fab_pb2.ResultBatch(
        node_id="edge-03",
        batch_id=batch_id,
        results=[
            common_pb2.Classification(
                wafer_id=f"WF-{s}", lot_id="LOT-A7732", node_id="edge-03", sequence=s
            )
            for s in sequences
        ],
    )


async def _exercise_server() -> tuple[list[fab_pb2.StreamAck], list[fab_pb2.ModelChunk], object]:
    server = grpc.aio.server()
    fab_pb2_grpc.add_FabServiceServicer_to_server(_MinimalFabServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = fab_pb2_grpc.FabServiceStub(channel)

            # Bidirectional: one ack per batch, read before the next batch is written.
            call = stub.StreamResults(timeout=TIMEOUT_S)
            acks = []
            for batch in (_batch("b-1", [1, 2, 3]), _batch("b-2", [4, 9, 5])):
                await call.write(batch)
                acks.append(await call.read())
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK

            request = fab_pb2.DownloadModelRequest(node_id="edge-03", model_version="trm-v2.2.0")
            chunks = [c async for c in stub.DownloadModel(request, timeout=TIMEOUT_S)]

            with pytest.raises(grpc.aio.AioRpcError) as unimplemented:
                await stub.GetLotSummary(
                    fab_pb2.GetLotSummaryRequest(lot_id="LOT-A7732"), timeout=TIMEOUT_S
                )
            return acks, chunks, unimplemented.value.code()
    finally:
        await server.stop(grace=None)


@pytest.mark.integration
def test_stream_results_and_download_model_over_a_real_channel() -> None:
    acks, chunks, unimplemented_code = asyncio.run(_exercise_server())

    assert [(a.node_id, a.batch_id, a.acked_sequence, a.accepted) for a in acks] == [
        ("edge-03", "b-1", 3, 3),
        ("edge-03", "b-2", 9, 3),
    ]

    assert len(chunks) == CHUNKS
    assert [c.offset for c in chunks] == sorted(c.offset for c in chunks)
    assert {c.total_size for c in chunks} == {len(ARTIFACT)}
    assembled = b"".join(c.data for c in chunks)
    assert assembled == ARTIFACT
    assert hashlib.sha256(assembled).hexdigest() == chunks[0].sha256
    assert len(chunks[0].signature) == 64

    assert unimplemented_code == grpc.StatusCode.UNIMPLEMENTED
