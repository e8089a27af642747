"""Classification on the fab server (ClassifyBatch): bulk re-classification, tools without a node.

The model is loaded on first use, not at import or start-up, and inference runs in a worker
thread (ONNX Runtime releases the GIL) so the event loop keeps serving other calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fab_server import domain
from fab_server.errors import Conflict, InvalidArgument
from fab_server.settings import FabSettings
from wafercore.errors import InvalidInput
from wafercore.pipeline import classify_maps
from wafercore.runtime import ModelLoadError, ModelRuntime
from wafercore.validation import check_id, map_from_bytes

FAB_NODE_ID = "fab-server"
"""``node_id`` of the classifications the fab server makes itself (they are not stored)."""


_REASONS = {
    None: domain.ReviewReason.UNSPECIFIED,
    "low_confidence": domain.ReviewReason.LOW_CONFIDENCE,
    "novelty": domain.ReviewReason.NOVELTY,
}
"""The review reason of each `wafercore.pipeline.Prediction.reason`."""


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


def _check_wafer(wafer: domain.WaferInput) -> npt.NDArray[np.uint8]:
    """The wafer's canonical map; raises InvalidInput naming the field within the wafer."""
    check_id(wafer.wafer_id, "wafer_id")
    check_id(wafer.lot_id, "lot_id")
    if wafer.wafer_map is None:
        raise InvalidArgument("wafer_map", "is required")
    raw = wafer.wafer_map
    return map_from_bytes(raw.rows, raw.cols, raw.values, encoding=raw.encoding, field="wafer_map")


def _prepare(
    wafers: Sequence[domain.WaferInput],
) -> tuple[list[domain.ClassifyOutcome], list[int], list[npt.NDArray[np.uint8]]]:
    """Error outcomes for invalid wafers, and the indexes and canonical maps of the valid ones."""
    outcomes = [domain.ClassifyOutcome(wafer_id=w.wafer_id) for w in wafers]
    maps: list[npt.NDArray[np.uint8]] = []
    valid: list[int] = []
    for i, wafer in enumerate(wafers):
        try:
            maps.append(_check_wafer(wafer))
        except InvalidInput as exc:
            outcomes[i] = domain.ClassifyOutcome(wafer_id=wafer.wafer_id, error=str(exc))
            continue
        valid.append(i)
    return outcomes, valid, maps


async def classify_batch(
    classifier: Classifier,
    *,
    wafers: Sequence[domain.WaferInput],
    settings: FabSettings,
    now: datetime | None = None,
) -> list[domain.ClassifyOutcome]:
    """Classify up to ``settings.classify_max_batch`` wafers with the fab server's model.

    The same pipeline as the edge nodes' (`wafercore.pipeline.classify_maps`). A wafer whose
    map (or id) is invalid gets an ``error`` outcome naming the field and the reason; the
    other wafers are classified. Nothing is stored.

    Args:
        classifier: the model.
        wafers: the wafers, any map size, either encoding.
        settings: batch limit and review threshold (results below it are flagged).
        now: ``classified_at`` of the results (UTC); the current time by default.

    Returns:
        One outcome per wafer, in input order. ``latency_ms`` is the batch's preprocessing and
        inference time shared equally by its wafers.

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
    # Decoding up to 1,024 maps is CPU work: off the event loop, like inference.
    outcomes, valid, maps = await asyncio.to_thread(_prepare, wafers)
    if not valid:
        return outcomes
    runtime = await classifier.runtime()
    predictions = await asyncio.to_thread(
        classify_maps, runtime, maps, review_threshold=settings.review_confidence_threshold
    )
    classified_at = now or datetime.now(UTC)
    for i, p in zip(valid, predictions, strict=True):
        outcomes[i] = domain.ClassifyOutcome(
            wafer_id=wafers[i].wafer_id,
            result=domain.Result(
                node_id=FAB_NODE_ID,
                sequence=0,
                wafer_id=wafers[i].wafer_id,
                lot_id=wafers[i].lot_id,
                model_version=p.model_version,
                prediction=p.prediction,
                probabilities=p.probabilities,
                confidence=p.confidence,
                steps=p.steps,
                latency_ms=p.latency_ms,
                flagged=p.flagged,
                classified_at=classified_at,
                review_reason=_REASONS[p.reason],
                novelty=p.novelty,
                embedding=p.embedding,
            ),
        )
    return outcomes
