"""Delivery of the outbox to the fab server over ``FabService.StreamResults``.

Delivery is at-least-once and exactly-once in effect: the fab stores results idempotently on
(node_id, sequence), the sequence is the outbox id (strictly increasing, never reused), and a
record leaves the outbox only when an ack covers it. Nothing else deletes: a crash, a kill -9,
a fab restart or a dropped connection at any moment leaves every unacked result in the outbox,
and the next stream starts again from the oldest one (redeliveries count as duplicates at the
fab and change nothing).

One stream carries up to ``MAX_IN_FLIGHT`` unacked batches (pipelining), so a 24 h backlog
drains at the fab's ingest rate rather than one database commit per round trip. Each stream
starts with one batch and opens the window at its first ack (see `Uplink._session`). A failed
stream is retried with exponential backoff and full jitter (``uplink_backoff_initial_s`` up to
``uplink_backoff_max_s``; reset by an ack).

The fab rejects a whole batch with INVALID_ARGUMENT when one result in it is invalid, and says
which (``results[3].confidence: ...``). Such a result can never be delivered; retrying it would
block every result behind it until the outbox fills and the test station stops. So the uplink
appends it, with the fab's reason, to the dead-letter file (``work_dir/uplink-dead-letter.jsonl``,
one JSON object per line, fsync-ed) for an engineer to inspect, counts it in
``edge_uplink_dead_lettered_total`` (alert on any increase), and sends on without it; the next
ack covers its sequence and only then removes it from the outbox. A rejection that names no
result (a bad ``node_id``, a batch larger than the fab allows) is a configuration error that
dead-lettering cannot fix: the uplink logs it at ERROR, sets ``edge_uplink_blocked`` to 1 and
retries at the maximum backoff, keeping every result, until the configuration is fixed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import re
import threading
import uuid
import weakref
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry, Counter, Gauge

from edge.fab_client import Backoff
from edge.outbox import Outbox
from edge.settings import EdgeSettings
from waferplatform.v1 import fab_pb2, fab_pb2_grpc  # type: ignore[import-not-found]

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 4
"""Unacked batches one stream carries; enough to keep the fab's ingest busy between acks."""
IDLE_POLL_S = 0.5
"""How often an idle stream looks for new outbox records (the outbox does not notify)."""
STOP_GRACE_S = 5.0
"""On stop, how long in-flight batches may take to be acked before the stream is cut."""
DEAD_LETTER_FILE = "uplink-dead-letter.jsonl"
"""Name of the dead-letter file in ``settings.work_dir``."""

_RESULT_FIELD = re.compile(r"^results\[(\d+)\]")


class UplinkMetrics:
    """The uplink's Prometheus series on one registry (see `uplink_metrics`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, registry=registry)

        self.acked = counter("edge_uplink_acked", "Outbox results acked by the fab and deleted.")
        self.stream_failures = counter(
            "edge_uplink_stream_failures", "Uplink streams ended by an error.", ("code",)
        )
        self.dead_lettered = counter(
            "edge_uplink_dead_lettered",
            "Results the fab rejected as invalid, kept in the dead-letter file (alert on any).",
        )
        self.connected = gauge("edge_uplink_connected", "1 while a stream to the fab is open.")
        self.blocked = gauge(
            "edge_uplink_blocked",
            "1 while the fab rejects whole batches for a reason naming no result "
            "(configuration): nothing is delivered until it is fixed.",
        )


# A registry refuses a second series of the same name: an uplink restarted on the node's
# registry reuses the first one's series.
_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, UplinkMetrics] = weakref.WeakKeyDictionary()


def uplink_metrics(registry: CollectorRegistry) -> UplinkMetrics:
    """The uplink series of ``registry``, created on first use."""
    if registry not in _METRICS:
        _METRICS[registry] = UplinkMetrics(registry)
    return _METRICS[registry]


class UplinkError(RuntimeError):
    """The fab ended a stream normally but without acking every batch sent on it."""


class _RecordRejectedError(Exception):
    """A result the fab named as invalid was dead-lettered; the stream may start again now."""


@dataclass
class UplinkStatus:
    """What the uplink knows about its link to the fab.

    Attributes:
        connected: a stream to the fab is open.
        last_acked: highest outbox id the fab has acked since this process started (0: none).
        last_error: why the latest stream failed; empty once an ack arrives.
    """

    connected: bool = False
    last_acked: int = 0
    last_error: str = ""


@dataclass
class _InFlight:
    """A batch written to the stream and not acked yet."""

    batch_id: str
    records: list[tuple[int, bytes]]


@dataclass
class _Stream:
    """State of one StreamResults call (the caller keeps it: a failed stream's acks count)."""

    # Slow start: one batch until the first ack opens the window (see `Uplink._session`).
    window: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    inflight: deque[_InFlight] = field(default_factory=deque)
    writing_done: bool = False
    opened: bool = False
    acked: int = 0  # outbox records this stream's acks deleted


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` or until ``stop`` is set, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


class Uplink:
    """Streams the outbox to the fab server; see the module docstring for the guarantees.

    Args:
        settings: ``node_id``, ``uplink_batch``, the backoff bounds and ``work_dir``.
        outbox: the node's outbox; read with ``pending`` and trimmed only with ``ack``.
        channel: a channel to the fab (`edge.fab_client.open_channel`).
        max_in_flight: unacked batches per stream.
        idle_poll_s: how often an idle stream checks the outbox for new records.
        stop_grace_s: on stop, how long in-flight batches may take to be acked.
        rng: randomness of the backoff jitter (seeded in tests).
        registry: Prometheus registry of the uplink's series (the node's, so ``/metrics``
            shows them); a private one by default.
    """

    def __init__(
        self,
        settings: EdgeSettings,
        outbox: Outbox,
        channel: grpc.aio.Channel,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        idle_poll_s: float = IDLE_POLL_S,
        stop_grace_s: float = STOP_GRACE_S,
        rng: random.Random | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight: must be >= 1, got {max_in_flight}")
        self._node_id = settings.node_id
        self._batch_size = settings.uplink_batch
        self._batch_bytes = settings.uplink_batch_bytes
        self._outbox = outbox
        self._stub = fab_pb2_grpc.FabServiceStub(channel)
        self._max_in_flight = max_in_flight
        self._idle_poll_s = idle_poll_s
        self._stop_grace_s = stop_grace_s
        self._backoff = Backoff(
            settings.uplink_backoff_initial_s,
            settings.uplink_backoff_max_s,
            rng or random.Random(),
        )
        self._dead_letter_path = settings.work_dir / DEAD_LETTER_FILE
        # Outbox ids dead-lettered by this process: skipped until an ack removes them. The
        # sender's worker thread adds to it while acks are handled on the event loop.
        self._skipped: set[int] = set()
        self._skipped_lock = threading.Lock()
        self._status = UplinkStatus()
        self._metrics = uplink_metrics(registry or CollectorRegistry())

    @property
    def status(self) -> UplinkStatus:
        """A snapshot of the link's state (for health checks)."""
        return replace(self._status)

    @property
    def dead_letter_path(self) -> Path:
        """Where results the fab rejected as invalid are kept."""
        return self._dead_letter_path

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver the outbox until ``stop`` is set, reconnecting after every failure.

        Never raises for a failed stream or a failing outbox: it logs, waits (backoff) and
        tries again. On stop, in-flight batches get ``stop_grace_s`` to be acked; whatever is
        not acked stays in the outbox for the next start.
        """
        log.info("uplink for node %s started (batch %d)", self._node_id, self._batch_size)
        while not stop.is_set():
            try:
                await self._session_until(stop)
                continue
            except _RecordRejectedError:
                continue  # progress was made; start the next stream at once
            except grpc.aio.AioRpcError as exc:
                delay = self._after_rpc_failure(exc)
            except UplinkError as exc:
                log.warning("uplink to fab failed: %s", exc)
                self._status.last_error = str(exc)
                delay = self._backoff.next_delay()
            except Exception as exc:
                # A 24/7 background task must not die (e.g. a transient disk error in the
                # outbox); the node's health shows last_error meanwhile.
                log.exception("uplink failed")
                self._status.last_error = f"{type(exc).__name__}: {exc}"
                delay = self._backoff.next_delay()
            await _wait(stop, delay)
        log.info("uplink for node %s stopped", self._node_id)

    async def drain_once(self) -> int:
        """Send everything pending and wait for the acks (tests, benchmarks), without backoff.

        A stream that fails after some acks is followed at once by another (its first batch
        is the one that failed); results the fab rejects as invalid are dead-lettered on the
        way, as in :meth:`run`.

        Returns:
            How many outbox records were acked (and deleted).

        Raises:
            grpc.aio.AioRpcError: the fab is unreachable, or a stream failed before its first
                ack.
            UplinkError: the fab closed a stream before its first ack.
        """
        total = 0
        while True:
            stream = _Stream()
            try:
                await self._session(asyncio.Event(), stream, drain=True)
                return total + stream.acked
            except _RecordRejectedError:
                pass
            except (grpc.aio.AioRpcError, UplinkError):
                if not stream.acked:
                    raise
            total += stream.acked

    async def _session_until(self, stop: asyncio.Event) -> None:
        """One stream, until it fails (raises) or ``stop`` is set (after a grace period)."""
        session = asyncio.create_task(self._session(stop, _Stream(), drain=False))
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({session, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not session.done():
                # The sender half-closes on stop; let the fab ack what is in flight.
                await asyncio.wait({session}, timeout=self._stop_grace_s)
            if session.done():
                session.result()
        finally:
            for task in (session, stopped):
                task.cancel()
            await asyncio.gather(session, stopped, return_exceptions=True)

    async def _session(self, stop: asyncio.Event, stream: _Stream, *, drain: bool) -> None:
        """Run one StreamResults call: a sender and a receiver over a window of batches.

        The window starts at one batch and opens at the first ack (slow start): a write that
        races the fab's rejection of an earlier batch makes grpc report INTERNAL instead of
        the fab's status, and the first batch of a new stream is the one the last stream
        failed on, so sent alone it gets the true status.
        """
        call = self._stub.StreamResults()
        sender = asyncio.create_task(self._send(call, stream, stop, drain=drain))
        receiver = asyncio.create_task(self._receive(call, stream))
        try:
            await call.wait_for_connection()
            self._set_connected(True)
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_EXCEPTION)
            failure = sender.exception() if sender.done() else None
            # A failed call also fails the sender's write; the receiver reports the call's status.
            if failure is not None and not isinstance(
                failure, grpc.aio.AioRpcError | asyncio.InvalidStateError
            ):
                raise failure
            await receiver
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and stream.inflight:
                await self._reject_named_result(stream.inflight[0], exc.details() or "")
            raise
        finally:
            self._set_connected(False)
            call.cancel()
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)

    async def _send(self, call: Any, stream: _Stream, stop: asyncio.Event, *, drain: bool) -> None:
        after = 0
        while not stop.is_set():
            await stream.window.acquire()
            last, batch, records = await asyncio.to_thread(self._next_batch, after)
            if last is None:
                stream.window.release()
                if drain:
                    break
                await _wait(stop, self._idle_poll_s)
                continue
            after = last
            if not records:
                stream.window.release()  # everything fetched was dead-lettered
                continue
            # Registered before the write, so an ack can never arrive for an unknown batch.
            stream.inflight.append(_InFlight(batch.batch_id, records))
            await call.write(batch)
        await call.done_writing()
        stream.writing_done = True

    def _next_batch(self, after: int) -> tuple[int | None, Any, list[tuple[int, bytes]]]:
        """The next batch after outbox id ``after`` (runs in a worker thread).

        Returns:
            The last outbox id read (None: nothing pending), the ResultBatch and the records
            in it (undecodable ones are dead-lettered instead).
        """
        pending = self._outbox.pending(limit=self._batch_size, after=after)
        if not pending:
            return None, None, []
        batch = fab_pb2.ResultBatch(node_id=self._node_id, batch_id=uuid.uuid4().hex)
        records: list[tuple[int, bytes]] = []
        with self._skipped_lock:
            skipped = set(self._skipped)
        size = 0
        last_read = after
        for sequence, data in pending:
            if records and size + len(data) > self._batch_bytes:
                break  # big maps: stay far below the fab's message limit; the rest goes next
            last_read = sequence
            if sequence in skipped:
                continue
            result = batch.results.add()
            try:
                result.ParseFromString(data)
            except DecodeError as exc:
                del batch.results[-1]
                self._dead_letter(sequence, data, f"undecodable outbox record: {exc}")
                continue
            result.node_id = self._node_id
            result.sequence = sequence
            records.append((sequence, data))
            size += len(data)
        batch.sent_at.GetCurrentTime()
        return last_read, batch, records

    async def _receive(self, call: Any, stream: _Stream) -> None:
        while (ack := await call.read()) is not grpc.aio.EOF:
            stream.acked += await self._on_ack(ack, stream)
        if stream.inflight or not stream.writing_done:
            raise UplinkError(
                f"the fab closed the stream with {len(stream.inflight)} batches unacked"
            )

    async def _on_ack(self, ack: Any, stream: _Stream) -> int:
        """Delete what ``ack`` covers from the outbox; return how many records went."""
        position = next(
            (i for i, b in enumerate(stream.inflight) if b.batch_id == ack.batch_id), None
        )
        if position is None:
            log.warning("ack for unknown batch %r ignored", ack.batch_id)
            return 0
        # Acks come in batch order; one for a later batch covers the earlier ones too.
        acked = [stream.inflight.popleft() for _ in range(position + 1)]
        for _ in acked:
            stream.window.release()
        if not stream.opened:
            stream.opened = True
            for _ in range(self._max_in_flight - 1):
                stream.window.release()
        last_sent = acked[-1].records[-1][0]
        if ack.acked_sequence < last_sent:  # against the contract: the rest is resent later
            log.warning("ack %s stops at %d of %d", ack.batch_id, ack.acked_sequence, last_sent)
        if ack.rejected:
            log.warning("fab set aside %d invalid results of batch %s", ack.rejected, ack.batch_id)
        # Never beyond what this stream sent: an ack cannot vouch for records it never saw.
        up_to = min(ack.acked_sequence, last_sent)
        deleted = await asyncio.to_thread(self._outbox.ack, up_to)
        with self._skipped_lock:
            self._skipped = {s for s in self._skipped if s > up_to}
        self._status.last_acked = max(self._status.last_acked, up_to)
        self._status.last_error = ""
        self._backoff.reset()
        self._metrics.blocked.set(0)
        self._metrics.acked.inc(deleted)
        return deleted

    async def _reject_named_result(self, batch: _InFlight, details: str) -> None:
        """Dead-letter the result an INVALID_ARGUMENT names, if it names one of ``batch``."""
        match = _RESULT_FIELD.match(details)
        if match is None or int(match[1]) >= len(batch.records):
            return
        sequence, data = batch.records[int(match[1])]
        await asyncio.to_thread(self._dead_letter, sequence, data, details)
        raise _RecordRejectedError(sequence)

    def _dead_letter(self, sequence: int, data: bytes, reason: str) -> None:
        """Append a result to the dead-letter file (durably) and skip it from now on."""
        entry = {
            "node_id": self._node_id,
            "sequence": sequence,
            "reason": reason,
            "dead_lettered_at": datetime.now(UTC).isoformat(),
            "classification_b64": base64.b64encode(data).decode("ascii"),
        }
        self._dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
        with self._dead_letter_path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(entry) + "\n")
            file.flush()
            # Durable before the record may be acked away from the outbox.
            os.fsync(file.fileno())
        with self._skipped_lock:
            self._skipped.add(sequence)
        self._metrics.dead_lettered.inc()
        log.error("result %d dead-lettered to %s: %s", sequence, self._dead_letter_path, reason)

    def _after_rpc_failure(self, exc: grpc.aio.AioRpcError) -> float:
        """Record a failed stream; return how long to wait before the next one."""
        code = exc.code()
        message = f"{code.name}: {exc.details()}"
        self._metrics.stream_failures.labels(code.name).inc()
        changed = message != self._status.last_error
        self._status.last_error = message
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            self._metrics.blocked.set(1)
            log.error("fab rejects this node's batches (fix the configuration): %s", message)
            return self._backoff.max_s
        # Logged once per distinct error: a day-long outage is one line, not thousands.
        log.log(logging.WARNING if changed else logging.DEBUG, "uplink to fab failed: %s", message)
        return self._backoff.next_delay()

    def _set_connected(self, connected: bool) -> None:
        self._status.connected = connected
        self._metrics.connected.set(1 if connected else 0)
