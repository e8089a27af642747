"""The sync agent: one pass (`run_once`) and the fab server's periodic loop (`run_sync_loop`).

A pass uploads the labels after the watermark (in batches of ``sync.batch_size``, each with a
key derived from its label ids, the watermark advanced after each acknowledgement), then the
daily aggregates of every (node, day) changed since the aggregate watermark, then pulls the
deployment plan and applies it (`fab_server.sync.deployments`). A cloud that cannot be reached
ends the pass with `CloudUnavailable`: what was acknowledged stays acknowledged, nothing else
moves, and the next pass resumes from the stored watermarks. Labels the cloud already has
(a retried batch, the overlap window) are de-duplicated by the cloud.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server.settings import FabSettings
from fab_server.sync import collectors, policy, storage
from fab_server.sync.client import CloudClient, CloudRefused, CloudUnavailable, SyncError
from fab_server.sync.deployments import PLAN_STATE, apply_plan
from fab_server.sync.policy import DataPolicy
from fab_server.sync.records import LabelRecord

logger = logging.getLogger(__name__)

Sessions = async_sessionmaker[AsyncSession]
T = TypeVar("T")
LABELS_STATE = "labels"
"""``sync_state``: ``{"label_id": highest acknowledged label id}``."""
AGGREGATES_STATE = "aggregates"
"""``sync_state``: ``{"received_at": start of the last fully acknowledged aggregate pass}``."""
LAST_RUN_STATE = "last_run"
"""``sync_state``: the summary (or error) of the last pass."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_REQUEST_BYTES = 16 * 1024 * 1024
"""Largest labels upload (the cloud accepts 64 MiB messages)."""
LABEL_OVERHEAD_BYTES = 512
"""A label's bytes besides its map (three hashes, times, version), rounded up."""


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def size_bounded(
    labels: Sequence[LabelRecord], budget: int = MAX_REQUEST_BYTES
) -> list[Sequence[LabelRecord]]:
    """``labels`` in consecutive runs whose requests stay under ``budget`` bytes (maps are big:
    500 maps of 512 x 512 would be 128 MiB); a run holds at least one label."""
    parts: list[Sequence[LabelRecord]] = []
    start, size = 0, 0
    for index, label in enumerate(labels):
        cost = LABEL_OVERHEAD_BYTES + (len(label.wafer_map.values) if label.wafer_map else 0)
        if index > start and size + cost > budget:
            parts.append(labels[start:index])
            start, size = index, 0
        size += cost
    if start < len(labels):
        parts.append(labels[start:])
    return parts


def _check_ack(ack: Any, request: Any, what: str) -> None:
    if ack.idempotency_key != request.idempotency_key:
        raise CloudRefused(
            f"{what}: the cloud acknowledged key {ack.idempotency_key!r}, "
            f"not {request.idempotency_key!r}"
        )


async def _save(sessions: Sessions, name: str, value: dict[str, object], now: datetime) -> None:
    async with sessions() as session, session.begin():
        await storage.set_state(session, name=name, value=value, now=now)


async def _load(sessions: Sessions, name: str) -> dict[str, object] | None:
    async with sessions() as session:
        entry = await storage.get_state(session, name=name)
    return entry.value if entry is not None else None


async def upload_labels(
    sessions: Sessions,
    client: CloudClient,
    data_policy: DataPolicy,
    settings: FabSettings,
    *,
    now: datetime,
) -> dict[str, Any]:
    """Upload the labels after the watermark and those resolved in the overlap window.

    Returns:
        Counts (sent, accepted, rejected, batches) and the watermark reached.
    """
    sync = settings.sync
    stored = await _load(sessions, LABELS_STATE)
    watermark = int(str(stored["label_id"])) if stored else 0
    since = now - timedelta(seconds=sync.overlap_s)
    counts = {"sent": 0, "accepted": 0, "rejected": 0, "batches": 0}
    cursor = 0
    while True:
        batch = await collectors.label_batch(
            sessions,
            after_id=cursor,
            watermark=watermark,
            resolved_since=since,
            limit=sync.batch_size,
            with_maps=data_policy.maps_leave_premises,
        )
        if not batch:
            break
        for part in size_bounded(batch):
            request = policy.labels_request(part, data_policy)
            ack = await client.upload_labels(request)
            _check_ack(ack, request, "UploadLabels")
            cursor = part[-1].label_id
            if cursor > watermark:
                watermark = cursor
                await _save(sessions, LABELS_STATE, {"label_id": watermark}, now)
            counts["sent"] += len(part)
            counts["accepted"] += ack.accepted
            counts["rejected"] += ack.rejected
            counts["batches"] += 1
            if ack.rejected:
                logger.warning("cloud refused %d of %d labels", ack.rejected, len(part))
        if len(batch) < sync.batch_size:
            break
    return {**counts, "watermark": watermark}


async def upload_aggregates(
    sessions: Sessions,
    client: CloudClient,
    data_policy: DataPolicy,
    settings: FabSettings,
    *,
    now: datetime,
) -> dict[str, Any]:
    """Upload the aggregates of every (node, day) changed since the watermark, and today's.

    The watermark (a ``received_at`` time) moves to this pass's start once every batch is
    acknowledged; the next pass looks back ``sync.overlap_s`` further, for results whose
    transaction committed late.

    Returns:
        Counts (sent, accepted, rejected, batches) and the watermark reached.
    """
    sync = settings.sync
    stored = await _load(sessions, AGGREGATES_STATE)
    held = datetime.fromisoformat(str(stored["received_at"])) if stored else None
    since = held - timedelta(seconds=sync.overlap_s) if held else _EPOCH
    figures = await collectors.collect_aggregates(sessions, since=since, now=now, settings=settings)
    counts = {"sent": 0, "accepted": 0, "rejected": 0, "batches": 0}
    for chunk in _chunks(figures, sync.batch_size):
        request = policy.aggregates_request(chunk, data_policy)
        ack = await client.upload_aggregates(request)
        _check_ack(ack, request, "UploadAggregates")
        counts["sent"] += len(chunk)
        counts["accepted"] += ack.accepted
        counts["rejected"] += ack.rejected
        counts["batches"] += 1
    await _save(sessions, AGGREGATES_STATE, {"received_at": now.isoformat()}, now)
    return {**counts, "watermark": now.isoformat()}


async def pull_deployments(
    sessions: Sessions,
    client: CloudClient,
    data_policy: DataPolicy,
    settings: FabSettings,
    *,
    now: datetime,
) -> dict[str, Any]:
    """Fetch the plan and apply it (see `fab_server.sync.deployments.apply_plan`)."""
    plan = await client.get_deployments(policy.deployments_request(data_policy))
    if plan.fab_id and plan.fab_id != data_policy.fab_id:
        raise CloudRefused(f"GetDeployments answered for fab {plan.fab_id!r}, not ours")
    return await apply_plan(sessions, client, plan, settings, now=now)


async def run_once(
    sessions: Sessions,
    settings: FabSettings,
    *,
    client: CloudClient | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """One sync pass: labels, aggregates, deployments; records it as the last run.

    Args:
        sessions: the fab database.
        settings: ``settings.sync`` (fab id, token, policy, cloud addresses) and the artifact
            store.
        client: the connection to use (tests); by default one is opened and closed here.
        now: the time of the pass (UTC); the current time by default.

    Returns:
        A JSON-ready summary; ``ok`` is false when an artifact failed verification.

    Raises:
        InvalidArgument: sync is not configured (the message names the setting).
        CloudUnavailable: the cloud could not be reached; watermarks stay where the last
            acknowledgement left them.
        CloudRefused: the cloud refused a call (token, fab id, request).
    """
    data_policy = DataPolicy.from_settings(settings.sync)
    now = now or datetime.now(UTC)
    summary: dict[str, Any] = {"fab_id": data_policy.fab_id, "started_at": now.isoformat()}
    own_client = client is None
    active = client or CloudClient(settings.sync)
    try:
        for part, step in (
            ("labels", upload_labels),
            ("aggregates", upload_aggregates),
            ("deployments", pull_deployments),
        ):
            summary[part] = await step(sessions, active, data_policy, settings, now=now)
    except SyncError as exc:
        summary.update(ok=False, error=str(exc), finished_at=datetime.now(UTC).isoformat())
        await _save(sessions, LAST_RUN_STATE, summary, now)
        raise
    finally:
        if own_client:
            await active.close()
    summary["ok"] = not summary["deployments"]["rejected"]
    summary["finished_at"] = datetime.now(UTC).isoformat()
    await _save(sessions, LAST_RUN_STATE, summary, now)
    return summary


async def sync_status(sessions: Sessions) -> dict[str, Any]:
    """The stored watermarks, the applied plan's time and the last run, JSON-ready."""
    async with sessions() as session:
        entries = {e.name: e for e in await storage.all_states(session)}
    out: dict[str, Any] = {}
    for name in (LABELS_STATE, AGGREGATES_STATE, PLAN_STATE, LAST_RUN_STATE):
        entry = entries.get(name)
        out[name] = (
            None if entry is None else {**entry.value, "updated_at": entry.updated_at.isoformat()}
        )
    return out


async def _pass_unless_stopped(
    sessions: Sessions, settings: FabSettings, stop: asyncio.Event
) -> dict[str, Any] | None:
    """One pass, cancelled when ``stop`` is set first (the server is stopping): None then."""
    work = asyncio.create_task(run_once(sessions, settings))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not work.done():
        # Safe at any point: a batch acknowledged but not yet recorded is sent again with the
        # same key next time, and the cloud answers it with the first acknowledgement.
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        return None
    return work.result()


async def run_sync_loop(sessions: Sessions, settings: FabSettings, stop: asyncio.Event) -> None:
    """Run a pass now and every ``settings.sync.interval_s`` until ``stop``.

    A failed pass (cloud unreachable, refused, database restarting) is logged and the next tick
    retries from the stored watermarks; a pass in flight when ``stop`` is set is cancelled.
    """
    while not stop.is_set():
        try:
            summary = await _pass_unless_stopped(sessions, settings, stop)
            if summary is not None:
                logger.info(
                    "cloud sync: %d labels, %d aggregates, %d nodes assigned",
                    summary["labels"]["sent"],
                    summary["aggregates"]["sent"],
                    summary["deployments"]["assigned"],
                )
        except CloudUnavailable as exc:
            logger.warning("cloud sync postponed: %s", exc)
        except Exception:
            logger.exception("cloud sync failed; retrying in %g s", settings.sync.interval_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.sync.interval_s)
