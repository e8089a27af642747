"""The classification service: validate -> preprocess -> predict -> outbox -> result.

Transport-free: the HTTP routes convert their bodies to `WaferInput` and the `Classified`
results back. A call is all or nothing: every wafer is validated before any is classified, and
the results of a call are committed to the outbox in one transaction before any is returned.

The CPU work (validation, resizing, inference, the outbox's fsync) runs in one worker thread
per call, off the event loop, so concurrent requests do not wait for each other's inference
(ONNX Runtime and SQLite release the GIL).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf.timestamp_pb2 import Timestamp  # type: ignore[import-untyped]

from edge.metrics import EdgeMetrics
from edge.model_store import ModelStore
from edge.outbox import Outbox, OutboxFull, StationRequest
from wafercore.errors import InvalidInput
from wafercore.pipeline import Prediction, classify_maps
from wafercore.preprocessing import validate_map
from wafercore.readers.g85 import read_g85
from wafercore.validation import MAX_SIDE, check_id
from waferplatform.v1 import common_pb2  # type: ignore[import-not-found]

log = logging.getLogger(__name__)

# While the outbox stays full, repeat the ERROR log at most this often.
_FULL_LOG_INTERVAL_S = 60.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class WaferInput:
    """One wafer as a transport received it.

    Attributes:
        wafer_id: station's wafer id.
        lot_id: lot id.
        wafer_map: rows of die values (JSON) or an array, not yet validated.
        wm811k: the values use WM-811K's encoding (0 no die, 1 pass, 2 fail).
        field: where the map is in the request, for errors (``wafers[2].wafer_map``).
        tested_at: the station's time of the test (validated, aware); with ``wafer_id`` it
            identifies the request, so a retry returns the stored answer. None: no such key.
    """

    wafer_id: str
    lot_id: str
    wafer_map: Any
    wm811k: bool = False
    field: str = "wafer_map"
    tested_at: datetime | None = None


@dataclass(frozen=True)
class Classified:
    """One wafer's result, stored in the outbox under ``sequence``: the fields of
    `wafercore.pipeline.Prediction` (as stored, so a retry's answer is the same), plus:

    Attributes:
        wafer_id: the wafer.
        novelty_score: the novelty model's score; None: this node runs no novelty model.
        sequence: the outbox id (the result's sequence at the fab).
        replayed: the stored answer to an earlier, identical request (nothing was stored).
    """

    wafer_id: str
    prediction: int
    confidence: float
    probabilities: tuple[float, ...]
    steps: int
    latency_ms: float
    model_version: str
    flagged: bool
    novelty_score: float | None
    sequence: int
    replayed: bool = False


class ClassifyService:
    """Classifies wafers with the store's current model and keeps every result in the outbox.

    Args:
        store: the served model (read once per call).
        outbox: where results wait for the fab.
        metrics: observed once per wafer.
        review_threshold: results below this confidence are flagged for review.
        max_batch: most wafers per call.
        clock: ``classified_at`` of results (UTC).
    """

    def __init__(
        self,
        *,
        store: ModelStore,
        outbox: Outbox,
        metrics: EdgeMetrics,
        review_threshold: float,
        max_batch: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._metrics = metrics
        self._threshold = review_threshold
        self._max_batch = max_batch
        self._clock = clock
        self._full_lock = threading.Lock()
        self._full_logged_at: float | None = None

    async def classify(self, wafers: Sequence[WaferInput]) -> list[Classified]:
        """Classify 1 to ``max_batch`` wafers; their results are durable when this returns.

        A wafer whose (wafer_id, tested_at) was classified before gets the stored answer
        (``replayed``), is not classified again and stores nothing.

        Raises:
            InvalidInput: no wafers, too many, or a bad id or map (``field`` names it); nothing
                was classified or stored.
            OutboxFull: the outbox is at its cap; nothing was stored.
        """
        if not wafers:
            raise InvalidInput("wafers", f"is empty; send 1 to {self._max_batch} wafers")
        if len(wafers) > self._max_batch:
            raise InvalidInput(
                "wafers", f"has {len(wafers)} wafers; at most {self._max_batch} per call"
            )
        started = time.perf_counter()
        results = await asyncio.to_thread(self._classify, wafers)
        self._metrics.observe_call(time.perf_counter() - started)
        return results

    async def classify_g85(
        self, document: bytes, *, tested_at: datetime | None = None
    ) -> list[Classified]:
        """Classify every map of a SEMI G85 document (ids from ``WaferId`` and ``LotId``).

        Args:
            document: the G85 XML.
            tested_at: the station's time of the test, when it said; each map's retry key.

        Raises:
            InvalidInput: not a valid G85 document (``field`` names the part), a map without
                ids, or more than ``max_batch`` maps.
            OutboxFull: the outbox is at its cap; nothing was stored.
        """
        maps = await asyncio.to_thread(read_g85, document)
        wafers = []
        for i, parsed in enumerate(maps):
            check_id(parsed.wafer_id, f"Map[{i}].WaferId")
            check_id(parsed.lot_id, f"Map[{i}].Device.LotId")
            wafers.append(
                WaferInput(
                    parsed.wafer_id,
                    parsed.lot_id,
                    parsed.map,
                    field=f"Map[{i}].Data",
                    tested_at=tested_at,
                )
            )
        return await self.classify(wafers)

    def _classify(self, wafers: Sequence[WaferInput]) -> list[Classified]:
        model = self._store.current  # this call finishes on this model, whatever is activated
        maps = [_canonical(w) for w in wafers]  # every wafer is valid before any is classified
        requests = [_request_key(w) for w in wafers]
        known = self._outbox.answers([k for k in requests if k is not None])
        results: list[Classified | None] = [
            None if key is None or key not in known else _replayed(wafer, *known[key])
            for wafer, key in zip(wafers, requests, strict=True)
        ]
        fresh = [i for i, result in enumerate(results) if result is None]
        if fresh:
            predictions = classify_maps(
                model.runtime, [maps[i] for i in fresh], review_threshold=self._threshold
            )
            stamp = Timestamp()
            stamp.FromDatetime(self._clock())
            answers = [
                _to_message(wafers[i], p, stamp) for i, p in zip(fresh, predictions, strict=True)
            ]
            # Each answer is serialised once without its map (what a retry gets back), once
            # with it (what the fab gets).
            stations = [
                _station_request(requests[i], answer)
                for i, answer in zip(fresh, answers, strict=True)
            ]
            messages = [_with_map(a, maps[i]) for i, a in zip(fresh, answers, strict=True)]
            ids = self._store_results(messages, stations)
            for i, prediction, sequence, answer in zip(
                fresh, predictions, ids, answers, strict=True
            ):
                # Read back from the message (float32 fields), so a retry's answer is this one.
                results[i] = _classified(wafers[i], sequence, answer, replayed=False)
                self._metrics.observe(
                    latency_ms=prediction.latency_ms,
                    steps=prediction.steps,
                    confidence=prediction.confidence,
                    prediction=prediction.prediction,
                    flagged=prediction.flagged,
                )
        return [r for r in results if r is not None]

    def _store_results(
        self, messages: list[bytes], requests: list[StationRequest | None]
    ) -> list[int]:
        try:
            ids = self._outbox.append_many(messages, requests=requests)
        except OutboxFull as exc:
            self._metrics.outbox_refused(len(messages))
            with self._full_lock:
                now = time.monotonic()
                due = self._full_logged_at is None or now - self._full_logged_at >= (
                    _FULL_LOG_INTERVAL_S
                )
                if due:
                    self._full_logged_at = now
            if due:
                log.error("ALERT outbox full, refusing results until the fab acks: %s", exc)
            raise
        with self._full_lock:
            recovered, self._full_logged_at = self._full_logged_at is not None, None
        if recovered:
            self._metrics.outbox_accepted()
            log.warning("outbox accepts results again (%d waiting)", self._outbox.depth())
        return ids


def _canonical(wafer: WaferInput) -> npt.NDArray[np.uint8]:
    """The wafer's map, validated, as a canonical (rows, cols) array; ids checked too."""
    prefix = wafer.field.rpartition(".")[0]
    for name, value in (("wafer_id", wafer.wafer_id), ("lot_id", wafer.lot_id)):
        check_id(value, f"{prefix}.{name}" if prefix else name)
    return validate_map(_fast_array(wafer.wafer_map), field=wafer.field, wm811k=wafer.wm811k)


def _request_key(wafer: WaferInput) -> tuple[str, int] | None:
    """(wafer_id, tested_at in microseconds since the epoch), or None without a test time."""
    if wafer.tested_at is None:
        return None
    delta = wafer.tested_at - _EPOCH
    return (wafer.wafer_id, (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)


def _station_request(key: tuple[str, int] | None, answer: Any) -> StationRequest | None:
    """The outbox's retry key and stored answer (the result without its map), if any."""
    if key is None:
        return None
    return StationRequest(key[0], key[1], answer=answer.SerializeToString())


def _replayed(wafer: WaferInput, sequence: int, answer: bytes) -> Classified:
    """The stored answer to an earlier request with the same wafer id and test time."""
    return _classified(wafer, sequence, common_pb2.Classification.FromString(answer))


def _classified(
    wafer: WaferInput, sequence: int, message: Any, *, replayed: bool = True
) -> Classified:
    """A result from its contract message (the answer to a retry, or the first one)."""
    return Classified(
        wafer_id=wafer.wafer_id,
        prediction=int(message.prediction),
        confidence=float(message.confidence),
        probabilities=tuple(float(p) for p in message.class_probabilities),
        steps=int(message.recursion_steps_used),
        latency_ms=float(message.inference_latency_ms),
        model_version=message.model_version,
        flagged=bool(message.flagged_for_review),
        novelty_score=message.novelty_score if message.HasField("novelty_score") else None,
        sequence=sequence,
        replayed=replayed,
    )


def _fast_array(rows: Any) -> Any:
    """Rows of plain ints as an int64 array (checked vectorised); anything else unchanged.

    `validate_map` checks list input die by die in Python, which is 4x slower; it still gets
    every input this fast path does not take, and reports the first bad die by position.
    """
    if isinstance(rows, np.ndarray) or not isinstance(rows, list) or not rows:
        return rows
    if len(rows) > MAX_SIDE or not all(type(row) is list for row in rows):
        return rows
    width = len(rows[0])
    # type() is int excludes bool (JSON true), which np.asarray would read as 1.
    if not all(len(row) == width and set(map(type, row)) <= {int} for row in rows):
        return rows
    try:
        return np.asarray(rows, dtype=np.int64)
    except OverflowError:  # an int beyond int64: let validate_map name it
        return rows


_REASONS = {
    None: common_pb2.REVIEW_REASON_UNSPECIFIED,
    "low_confidence": common_pb2.REVIEW_REASON_LOW_CONFIDENCE,
    "novelty": common_pb2.REVIEW_REASON_NOVELTY,
}
"""The contract's reason for each `wafercore.pipeline.Prediction.reason`."""


def _to_message(wafer: WaferInput, result: Prediction, stamp: Timestamp) -> Any:
    """The contract Classification of a result with the station's time, not yet its map; the
    uplink sets ``node_id`` and ``sequence`` when it sends it."""
    message = common_pb2.Classification(
        wafer_id=wafer.wafer_id,
        lot_id=wafer.lot_id,
        class_probabilities=result.probabilities,
        prediction=result.prediction,
        confidence=result.confidence,
        recursion_steps_used=result.steps,
        inference_latency_ms=result.latency_ms,
        model_version=result.model_version,
        flagged_for_review=result.flagged,
        classified_at=stamp,
        review_reason=_REASONS[result.reason],
        embedding=result.embedding or (),
    )
    if result.novelty is not None:
        message.novelty_score = result.novelty
    if wafer.tested_at is not None:
        message.tested_at.FromDatetime(wafer.tested_at)
    return message


def _with_map(message: Any, wafer_map: npt.NDArray[np.uint8]) -> bytes:
    """The message with its canonical map, serialised: what the outbox keeps for the fab."""
    rows, cols = wafer_map.shape
    message.wafer_map.CopyFrom(
        common_pb2.WaferMap(
            rows=rows,
            cols=cols,
            values=np.ascontiguousarray(wafer_map, dtype=np.uint8).tobytes(),
            encoding=common_pb2.DIE_ENCODING_CANONICAL,
        )
    )
    return bytes(message.SerializeToString())
