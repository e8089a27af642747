"""The one-machine demo: a fab server on SQLite, a test station streaming classified wafers to it.

The station side classifies with the default model through ``wafercore.runtime`` and streams
over the real gRPC contract (StreamResults), then the lot summaries come back over gRPC
(GetLotSummary) and the review queue over the HTTP API, as an engineer's browser would see it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc  # type: ignore[import-untyped]
import httpx
import numpy as np

from fab_server.app import FabServer
from fab_server.db import migrate
from fab_server.rpc.convert import to_timestamp
from fab_server.settings import ApiToken, FabSettings
from wafercore.classes import CLASS_NAMES
from wafercore.dataset import WaferDataset
from wafercore.preprocessing import to_grid, to_tokens
from wafercore.runtime import ModelRuntime
from waferplatform.v1 import common_pb2, fab_pb2, fab_pb2_grpc  # type: ignore[import-not-found]

NODE_ID = "demo-station-1"
BATCH = 100


@dataclass
class DemoOutcome:
    """What the demo did, for the CLI to print and tests to check."""

    streamed: int
    acked_sequence: int
    duplicates: int
    seconds: float
    lots: list[fab_pb2.LotSummary] = field(default_factory=list)
    queue_head: list[dict[str, object]] = field(default_factory=list)
    model_version: str = ""


def _classifications(
    runtime: ModelRuntime, wafers: WaferDataset, lots: list[str]
) -> list[common_pb2.Classification]:
    grids = np.stack([to_grid(m) for m in wafers.maps()])
    started = time.perf_counter()
    out = runtime.predict(to_tokens(grids))
    per_wafer_ms = (time.perf_counter() - started) * 1000 / len(wafers)
    now = to_timestamp(datetime.now(UTC))
    messages = []
    for i in range(len(wafers)):
        raw = wafers.map(i)
        messages.append(
            common_pb2.Classification(
                wafer_id=f"{lots[i]}-W{i % 25 + 1:02d}",
                lot_id=lots[i],
                node_id=NODE_ID,
                sequence=i + 1,
                class_probabilities=out.probabilities[i].tolist(),
                prediction=int(out.prediction[i]),
                confidence=float(out.confidence[i]),
                recursion_steps_used=int(out.steps[i]),
                inference_latency_ms=per_wafer_ms,
                model_version=runtime.version,
                flagged_for_review=bool(out.flagged[i]),
                classified_at=now,
                review_reason=(
                    common_pb2.REVIEW_REASON_LOW_CONFIDENCE
                    if out.flagged[i]
                    else common_pb2.REVIEW_REASON_UNSPECIFIED
                ),
                wafer_map=common_pb2.WaferMap(
                    rows=raw.shape[0], cols=raw.shape[1], values=raw.tobytes()
                ),
            )
        )
    return messages


async def _stream(
    stub: fab_pb2_grpc.FabServiceStub, messages: list[common_pb2.Classification]
) -> tuple[int, int]:
    async def batches() -> AsyncIterator[fab_pb2.ResultBatch]:
        for first in range(0, len(messages), BATCH):
            yield fab_pb2.ResultBatch(
                node_id=NODE_ID,
                batch_id=f"b-{first // BATCH}",
                results=messages[first : first + BATCH],
            )

    acked = duplicates = 0
    async for ack in stub.StreamResults(batches(), timeout=120):
        acked = max(acked, ack.acked_sequence)
        duplicates += ack.duplicates
    return acked, duplicates


async def run_demo(
    work_dir: Path,
    model_dir: Path,
    wafers: WaferDataset,
    lots: list[str],
    progress: Callable[[str], None],
) -> DemoOutcome:
    """Start a fab server on a fresh SQLite database, stream ``wafers`` to it, read it back."""
    db = work_dir / "demo-fab.db"
    for stale in work_dir.glob("demo-fab.db*"):
        stale.unlink()
    token = secrets.token_urlsafe(24)
    settings = FabSettings(
        database_url=f"sqlite+aiosqlite:///{db}",
        grpc_port=0,
        http_port=0,
        model_dir=model_dir,
        artifact_dir=work_dir / "demo-artifacts",
        api_tokens=[ApiToken(token=token, user="demo-engineer", role="engineer")],
    )
    migrate(settings.database_url)
    runtime = await asyncio.to_thread(ModelRuntime.load, model_dir)
    progress(f"fab server on {db} (SQLite), model {runtime.version}")
    server = await FabServer(settings, runtime=runtime).start()
    try:
        started = time.perf_counter()
        messages = await asyncio.to_thread(_classifications, runtime, wafers, lots)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = fab_pb2_grpc.FabServiceStub(channel)
            acked, duplicates = await _stream(stub, messages)
            seconds = time.perf_counter() - started
            summaries = [
                await stub.GetLotSummary(fab_pb2.GetLotSummaryRequest(lot_id=lot), timeout=10)
                for lot in dict.fromkeys(lots)
            ]
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.http_port}",
            headers={"Authorization": f"Bearer {token}"},
        ) as http:
            response = await http.get("/api/review/items", params={"limit": 5})
            response.raise_for_status()
            queue_head = response.json()
    finally:
        await server.stop()
    return DemoOutcome(
        streamed=len(messages),
        acked_sequence=acked,
        duplicates=duplicates,
        seconds=seconds,
        lots=summaries,
        queue_head=queue_head,
        model_version=runtime.version,
    )


def lot_table(summaries: list[fab_pb2.LotSummary]) -> str:
    """The lot summaries as a text table."""
    lines = [f"{'lot':<16} {'wafers':>6} {'flagged':>7} {'dominant':<10} {'yield':>6}  excursion"]
    for s in summaries:
        die_yield = f"{s.die_yield:.1%}" if s.HasField("die_yield") else "-"
        lines.append(
            f"{s.lot_id:<16} {s.total_wafers:>6} {s.flagged_count:>7} "
            f"{CLASS_NAMES[s.dominant_pattern]:<10} {die_yield:>6}  "
            f"{'YES: ' + s.excursion_reason if s.excursion else 'no'}"
        )
    return "\n".join(lines)
