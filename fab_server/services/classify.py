"""Classification on the fab server (ClassifyBatch): bulk re-classification, tools without a node.

The model is loaded on first use, not at import or start-up, and inference runs in a worker
thread (ONNX Runtime releases the GIL) so the event loop keeps serving other calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fab_server import domain
from fab_server.errors import Conflict, InvalidArgument
from fab_server.services.ingest import MAX_ID_CHARS, canonical_map
from fab_server.settings import FabSettings
from wafercore.encoding import TOKENS
from wafercore.preprocessing import to_grid, to_tokens
from wafercore.runtime import ModelLoadError, ModelRuntime

FAB_NODE_ID = "fab-server"
"""``node_id`` of the classifications the fab server makes itself (they are not stored)."""


class Classifier:
    """The fab server's model: a loaded runtime, or a model directory loaded on first use."""

    def __init__(self, model_dir: Path, runtime: ModelRuntime | None = None) -> None:
        self._model_dir = model_dir
        self._runtime = runtime
        self._lock = asyncio.Lock()

    async def runtime(self) -> ModelRuntime:
        """The loaded model.

        Raises:
            Conflict: the model directory cannot be loaded (missing, corrupt).
        """
        if self._runtime is None:
            async with self._lock:
                if self._runtime is None:
                    try:
                        self._runtime = await asyncio.to_thread(ModelRuntime.load, self._model_dir)
                    except ModelLoadError as exc:
                        raise Conflict(f"no model to classify with: {exc}") from exc
        return self._runtime


def _check_wafer(wafer: domain.WaferInput) -> domain.StoredMap:
    """The wafer's canonical map; raises InvalidArgument naming the field within the wafer."""
    if not wafer.wafer_id:
        raise InvalidArgument("wafer_id", "is required")
    if len(wafer.wafer_id) > MAX_ID_CHARS:
        raise InvalidArgument("wafer_id", f"has {len(wafer.wafer_id)} characters")
    if len(wafer.lot_id) > MAX_ID_CHARS:
        raise InvalidArgument("lot_id", f"has {len(wafer.lot_id)} characters")
    if wafer.wafer_map is None:
        raise InvalidArgument("wafer_map", "is required")
    return canonical_map(wafer.wafer_map, field="wafer_map")


def _prepare(
    wafers: Sequence[domain.WaferInput],
) -> tuple[list[domain.ClassifyOutcome], list[int], npt.NDArray[np.uint8]]:
    """Error outcomes for invalid wafers, and the (N, 676) tokens of the valid ones."""
    outcomes = [domain.ClassifyOutcome(wafer_id=w.wafer_id) for w in wafers]
    grids: list[npt.NDArray[np.uint8]] = []
    valid: list[int] = []
    for i, wafer in enumerate(wafers):
        try:
            stored = _check_wafer(wafer)
        except InvalidArgument as exc:
            outcomes[i] = domain.ClassifyOutcome(wafer_id=wafer.wafer_id, error=str(exc))
            continue
        values = np.frombuffer(stored.values, dtype=np.uint8).reshape(stored.rows, stored.cols)
        grids.append(to_grid(values))
        valid.append(i)
    tokens = to_tokens(np.stack(grids)) if grids else np.empty((0, TOKENS), dtype=np.uint8)
    return outcomes, valid, tokens


async def classify_batch(
    classifier: Classifier,
    *,
    wafers: Sequence[domain.WaferInput],
    settings: FabSettings,
    now: datetime | None = None,
) -> list[domain.ClassifyOutcome]:
    """Classify up to ``settings.classify_max_batch`` wafers with the fab server's model.

    A wafer whose map (or id) is invalid gets an ``error`` outcome naming the field and the
    reason; the other wafers are classified. Nothing is stored.

    Args:
        classifier: the model.
        wafers: the wafers, any map size, either encoding.
        settings: batch limit and review threshold (results below it are flagged).
        now: ``classified_at`` of the results (UTC); the current time by default.

    Returns:
        One outcome per wafer, in input order. ``latency_ms`` is the batch's inference time
        shared equally by its wafers.

    Raises:
        InvalidArgument: no wafers, or more than the limit.
        Conflict: the model cannot be loaded.
    """
    if not wafers:
        raise InvalidArgument("wafers", f"is empty; send 1 to {settings.classify_max_batch} wafers")
    if len(wafers) > settings.classify_max_batch:
        raise InvalidArgument(
            "wafers", f"has {len(wafers)} wafers; at most {settings.classify_max_batch} per call"
        )
    # Decoding and resizing up to 1,024 maps is CPU work: off the event loop, like inference.
    outcomes, valid, tokens = await asyncio.to_thread(_prepare, wafers)
    if not valid:
        return outcomes
    runtime = await classifier.runtime()
    started = time.perf_counter()
    predicted = await asyncio.to_thread(runtime.predict, tokens)
    latency_ms = (time.perf_counter() - started) * 1000 / len(valid)
    classified_at = now or datetime.now(UTC)
    threshold = settings.review_confidence_threshold
    for row, i in enumerate(valid):
        confidence = float(predicted.confidence[row])
        flagged = confidence < threshold
        outcomes[i] = domain.ClassifyOutcome(
            wafer_id=wafers[i].wafer_id,
            result=domain.Result(
                node_id=FAB_NODE_ID,
                sequence=0,
                wafer_id=wafers[i].wafer_id,
                lot_id=wafers[i].lot_id,
                model_version=runtime.version,
                prediction=int(predicted.prediction[row]),
                probabilities=tuple(float(p) for p in predicted.probabilities[row]),
                confidence=confidence,
                steps=int(predicted.steps[row]),
                latency_ms=latency_ms,
                flagged=flagged,
                classified_at=classified_at,
                review_reason=(
                    domain.ReviewReason.LOW_CONFIDENCE
                    if flagged
                    else domain.ReviewReason.UNSPECIFIED
                ),
            ),
        )
    return outcomes
