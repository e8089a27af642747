"""Replay real wafer maps to a running edge node at a fixed rate and summarise the latency.

Requests are sent open loop: wafer ``i`` is sent at ``i / rate`` seconds after the start
whether or not earlier answers have come back (up to ``concurrency`` in flight), the way a
line of test stations loads a node. Client latency is measured from sending to the full answer;
the node's own ``inference_latency_ms`` is collected beside it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm  # type: ignore[import-untyped]

from wafercore.dataset import WaferDataset
from wafercore.encoding import to_wm811k

REQUEST_TIMEOUT_S = 30.0
"""A request unanswered this long counts as an error."""


@dataclass(frozen=True)
class ReplaySummary:
    """What a replay measured.

    Attributes:
        sent: requests sent.
        ok: answered 200.
        errors: failures by kind (``HTTP 422``, ``ConnectError``).
        elapsed_s: from the first send to the last answer.
        client_ms: client-side latency of each successful request.
        server_inference_ms: the node's ``inference_latency_ms`` of each.
    """

    sent: int
    ok: int
    errors: dict[str, int]
    elapsed_s: float
    client_ms: list[float] = field(repr=False)
    server_inference_ms: list[float] = field(repr=False)

    def percentile(self, q: float, *, server: bool = False) -> float:
        """Percentile ``q`` (0..100) of the client (or server inference) latency; NaN if none."""
        values = self.server_inference_ms if server else self.client_ms
        return float(np.percentile(values, q)) if values else float("nan")

    def report(self) -> str:
        """A few lines for people."""
        rate = self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0
        lines = [
            f"sent {self.sent:,} wafers in {self.elapsed_s:.1f} s ({rate:.1f}/s), "
            f"{self.ok:,} ok, {sum(self.errors.values()):,} errors",
            f"client latency ms: p50 {self.percentile(50):.2f}  p90 {self.percentile(90):.2f}  "
            f"p99 {self.percentile(99):.2f}",
            f"server inference ms: p50 {self.percentile(50, server=True):.2f}",
        ]
        lines.extend(f"  {kind}: {count:,}" for kind, count in sorted(self.errors.items()))
        return "\n".join(lines)


def classify_bodies(
    dataset: WaferDataset, *, limit: int | None = None, wm811k: bool = False
) -> Iterator[dict[str, Any]]:
    """``/classify`` request bodies for the dataset's maps, in file order.

    Args:
        dataset: maps in the canonical encoding (as `wafercore.readers.npz.read_npz` returns).
        limit: at most this many.
        wm811k: send the maps in WM-811K's encoding (``encoding: wm811k``), as a station
            replaying the raw dataset would, instead of the canonical one.
    """
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(count):
        lot = str(dataset.lot[i]) or "LOT-REPLAY"
        wafer_map = dataset.map(i)
        body: dict[str, Any] = {
            "wafer_id": f"{lot}-{i}",
            "lot_id": lot,
            "wafer_map": (to_wm811k(wafer_map) if wm811k else wafer_map).tolist(),
            "timestamp": datetime.now(UTC).isoformat(),
        }
        if wm811k:
            body["encoding"] = "wm811k"
        yield body


async def replay(
    bodies: Iterable[dict[str, Any]],
    *,
    target: str,
    rate: float,
    total: int | None = None,
    concurrency: int = 64,
    progress: bool = True,
) -> ReplaySummary:
    """POST each body to ``target``/classify, ``rate`` per second.

    Args:
        bodies: request bodies (`classify_bodies`).
        target: the node's base URL (``http://127.0.0.1:8000``).
        rate: wafers per second (> 0).
        total: how many bodies there are, for the progress bar.
        concurrency: most requests in flight; beyond it sending waits (and the rate drops).
        progress: show a progress bar on stderr.

    Returns:
        The summary; failures are counted in it, never raised.
    """
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    errors: Counter[str] = Counter()
    client_ms: list[float] = []
    server_ms: list[float] = []
    slots = asyncio.Semaphore(concurrency)
    bar = tqdm(total=total, unit="wafer", disable=not progress)

    async def send(http: httpx.AsyncClient, body: dict[str, Any]) -> None:
        try:
            started = time.perf_counter()
            answer = await http.post("/classify", json=body)
            elapsed_ms = (time.perf_counter() - started) * 1000
            if answer.status_code == 200:
                inference_ms = float(answer.json()["inference_latency_ms"])
                client_ms.append(elapsed_ms)
                server_ms.append(inference_ms)
            else:
                errors[f"HTTP {answer.status_code}"] += 1
        except httpx.HTTPError as exc:
            errors[type(exc).__name__] += 1
        except (ValueError, KeyError):
            errors["malformed answer"] += 1
        finally:
            slots.release()
            bar.update(1)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    sent = 0
    tasks: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(base_url=target, timeout=REQUEST_TIMEOUT_S, limits=limits) as http:
        start = time.perf_counter()
        for sent, body in enumerate(bodies, start=1):
            delay = start + (sent - 1) / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            task = asyncio.create_task(send(http, body))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    bar.close()
    return ReplaySummary(
        sent=sent,
        ok=len(client_ms),
        errors=dict(errors),
        elapsed_s=elapsed,
        client_ms=client_ms,
        server_inference_ms=server_ms,
    )
