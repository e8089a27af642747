"""The one-machine demo: a fab server on SQLite and two edge nodes, with wafers replayed through.

Everything talks over the real interfaces: the stations POST maps to the edge nodes' HTTP API,
each node classifies with the default model, stores the result in its outbox and streams it to
the fab over gRPC (StreamResults, acked); lot summaries come back from the fab over gRPC
(GetLotSummary) and the review queue over its HTTP API, as the review UI would see it. Every
gRPC call is authenticated as in production: each node with a token the fab issued it, the
lot summaries with the demo engineer's API token.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import httpx
from pydantic import SecretStr

from edge.node import EdgeNode
from edge.replay import ReplaySummary, classify_bodies, replay
from edge.settings import EdgeSettings
from fab_server.app import FabServer
from fab_server.db import migrate
from fab_server.services import nodes as fab_nodes
from fab_server.services import users as fab_users
from fab_server.settings import ApiToken, FabSettings
from wafercore.classes import CLASS_NAMES
from wafercore.dataset import WaferDataset
from waferplatform.v1 import fab_pb2, fab_pb2_grpc  # type: ignore[import-not-found]

STATIONS = ("station-1", "station-2")
DEMO_USER = "demo"
"""The review UI's demo engineer, created in the demo's fab database."""
REPLAY_RATE = 100.0  # wafers per second and station
DRAIN_TIMEOUT_S = 60.0


@dataclass
class DemoOutcome:
    """What the demo did, for the CLI to print and tests to check."""

    sent: int
    delivered: int
    seconds: float
    replays: dict[str, ReplaySummary] = field(default_factory=dict)
    lots: list[Any] = field(default_factory=list)  # fab_pb2.LotSummary
    queue_head: list[dict[str, Any]] = field(default_factory=list)
    model_version: str = ""


@dataclass(frozen=True)
class Serving:
    """Where the demo's tiers answer while ``--serve`` keeps them up, and the UI's login."""

    ui_url: str
    user: str
    password: str
    edge_urls: dict[str, str]
    fab_grpc: str


ServeHook = Callable[[DemoOutcome, Serving], Awaitable[None]]
"""Awaited with the running tiers; the demo stops them when it returns (or is cancelled)."""


async def _drained(nodes: list[EdgeNode]) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while any(n.outbox is not None and n.outbox.depth() for n in nodes):
        if time.monotonic() > deadline:
            raise TimeoutError("the edge nodes did not deliver their outboxes to the fab in time")
        await asyncio.sleep(0.1)


async def run_demo(
    work_dir: Path,
    model_dir: Path,
    wafers: WaferDataset,
    progress: Callable[[str], None],
    *,
    serve: ServeHook | None = None,
    http_port: int = 0,
) -> DemoOutcome:
    """Start a fab server and two edge nodes on fresh local state and replay ``wafers``.

    Wafers alternate between the two stations by lot, as two testers working one lot each.
    With ``serve``, a review UI user is created and ``serve`` is awaited with the tiers still
    running (the fab's HTTP API and UI on ``http_port``), so people can click through the data.
    """
    root = work_dir / "demo"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    token = secrets.token_urlsafe(24)
    fab_settings = FabSettings(
        database_url=f"sqlite+aiosqlite:///{root / 'fab.db'}",
        grpc_port=0,
        http_port=http_port,
        model_dir=model_dir,
        artifact_dir=root / "fab-artifacts",
        api_tokens=[ApiToken(token=token, user="demo-engineer", role="engineer")],
    )
    migrate(fab_settings.database_url)
    fab = await FabServer(fab_settings).start()
    assert fab.sessions is not None  # set by start()
    nodes: list[EdgeNode] = []
    try:
        for station in STATIONS:
            # What `wafer-fab nodes add` does: the node gets a token, the fab its digest.
            node_token = await fab_nodes.add_token(fab.sessions, node_id=station)
            settings = EdgeSettings(
                node_id=station,
                fab_address=f"127.0.0.1:{fab.grpc_port}",
                node_token=SecretStr(node_token),
                http_port=0,
                work_dir=root / station,
                default_model_dir=model_dir,
                outbox_sync="normal",  # the demo's disk is scratch; production keeps "full"
            )
            nodes.append(await EdgeNode(settings).start())
        version = nodes[0].store.current.version if nodes[0].store else ""
        progress(f"fab server (SQLite) and edge nodes {', '.join(STATIONS)} serving {version}")
        bodies = list(classify_bodies(wafers))
        per_station: dict[str, list[dict[str, Any]]] = {s: [] for s in STATIONS}
        lots = list(dict.fromkeys(b["lot_id"] for b in bodies))
        for body in bodies:
            per_station[STATIONS[lots.index(body["lot_id"]) % len(STATIONS)]].append(body)
        started = time.perf_counter()
        summaries = await asyncio.gather(
            *(
                replay(
                    per_station[station],
                    target=f"http://127.0.0.1:{node.http_port}",
                    rate=REPLAY_RATE,
                    total=len(per_station[station]),
                    progress=False,
                )
                for station, node in zip(STATIONS, nodes, strict=True)
            )
        )
        await _drained(nodes)
        seconds = time.perf_counter() - started
        lot_summaries, queue_head = await _read_back(fab, token, lots)
        outcome = DemoOutcome(
            sent=len(bodies),
            delivered=sum(s.total_wafers for s in lot_summaries),
            seconds=seconds,
            replays=dict(zip(STATIONS, summaries, strict=True)),
            lots=lot_summaries,
            queue_head=queue_head,
            model_version=version,
        )
        if serve is not None:
            await serve(outcome, await _serving(fab, nodes))
    finally:
        for node in nodes:
            await node.stop()
        await fab.stop()
    return outcome


async def _read_back(fab: FabServer, token: str, lots: list[str]) -> tuple[list[Any], Any]:
    """The lots' summaries (gRPC) and the head of the review queue (HTTP API), as an engineer."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{fab.grpc_port}") as channel:
        stub = fab_pb2_grpc.FabServiceStub(channel)
        engineer = (("authorization", f"Bearer {token}"),)
        lot_summaries = [
            await stub.GetLotSummary(
                fab_pb2.GetLotSummaryRequest(lot_id=lot), timeout=10, metadata=engineer
            )
            for lot in lots
        ]
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{fab.http_port}",
        headers={"Authorization": f"Bearer {token}"},
    ) as http:
        response = await http.get("/api/review/items", params={"limit": 5})
        response.raise_for_status()
        return lot_summaries, response.json()


async def _serving(fab: FabServer, nodes: list[EdgeNode]) -> Serving:
    """Create the demo's UI user (a fresh password per run) and say where everything is."""
    assert fab.sessions is not None
    password = secrets.token_urlsafe(9)
    await fab_users.add_user(fab.sessions, user=DEMO_USER, role="admin", password=password)
    return Serving(
        ui_url=f"http://127.0.0.1:{fab.http_port}/ui/",
        user=DEMO_USER,
        password=password,
        edge_urls={n.settings.node_id: f"http://127.0.0.1:{n.http_port}" for n in nodes},
        fab_grpc=f"127.0.0.1:{fab.grpc_port}",
    )


def lot_table(summaries: list[Any]) -> str:
    """The fab's lot summaries as a text table."""
    lines = [f"{'lot':<16} {'wafers':>6} {'flagged':>7} {'dominant':<10} {'yield':>6}  excursion"]
    for s in summaries:
        die_yield = f"{s.die_yield:.1%}" if s.HasField("die_yield") else "-"
        lines.append(
            f"{s.lot_id:<16} {s.total_wafers:>6} {s.flagged_count:>7} "
            f"{CLASS_NAMES[s.dominant_pattern]:<10} {die_yield:>6}  "
            f"{'YES: ' + s.excursion_reason if s.excursion else 'no'}"
        )
    return "\n".join(lines)
