"""ClassifyBatch's service with the real default model: per-wafer errors, limits, encodings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fab_server import domain
from fab_server.errors import Conflict, InvalidArgument
from fab_server.services import classify
from fab_server.settings import FabSettings
from wafercore.encoding import to_wm811k
from wafercore.pipeline import classify_maps

SETTINGS = FabSettings(classify_max_batch=8)


@pytest.fixture(scope="module")
def classifier() -> classify.Classifier:
    return classify.Classifier(SETTINGS.model_dir)


def _canonical(values: np.ndarray) -> domain.RawWaferMap:
    rows, cols = values.shape
    return domain.RawWaferMap(rows=rows, cols=cols, values=values.astype(np.uint8).tobytes())


def _ring(size: int = 40) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    radius = np.hypot(y - size / 2 + 0.5, x - size / 2 + 0.5)
    wafer = np.where(radius <= size / 2, 0, 2)
    wafer[(radius > size / 2 - 3) & (radius <= size / 2)] = 1
    return wafer.astype(np.uint8)


@pytest.mark.asyncio
async def test_good_wafers_are_classified_and_bad_maps_get_an_error(
    classifier: classify.Classifier,
) -> None:
    ring = _ring()
    wafers = [
        domain.WaferInput("W1", "LOT-1", _canonical(ring)),
        domain.WaferInput("W2", "LOT-1", domain.RawWaferMap(26, 26, bytes(675))),
        domain.WaferInput(
            "W3", "LOT-1", domain.RawWaferMap(40, 40, to_wm811k(ring).tobytes(), encoding=1)
        ),
        domain.WaferInput("W4", "LOT-1", None),
        domain.WaferInput("", "LOT-1", _canonical(ring)),
        domain.WaferInput("W\x00", "LOT-1", _canonical(ring)),
        domain.WaferInput("W7", "LOT-1", domain.RawWaferMap(40, 40, ring.tobytes(), encoding=99)),
    ]
    outcomes = await classify.classify_batch(classifier, wafers=wafers, settings=SETTINGS)
    assert [o.wafer_id for o in outcomes] == ["W1", "W2", "W3", "W4", "", "W\x00", "W7"]
    first, bad_size, wm811k, no_map, no_id, nul, encoding = outcomes
    assert nul.error == "wafer_id: must not contain control characters"
    assert encoding.error.startswith("wafer_map.encoding: 99 is not a known encoding")
    # The edge's pipeline, on the same map, gives the same answer and the same flag.
    runtime = await classifier.runtime()
    (edge_answer,) = classify_maps(
        runtime, [ring], review_threshold=SETTINGS.review_confidence_threshold
    )
    assert first.result is not None
    assert first.result.probabilities == edge_answer.probabilities
    assert first.result.flagged == edge_answer.flagged
    assert first.result is not None and first.error == ""
    result = first.result
    assert result.model_version == SETTINGS.model_dir.name  # the default model
    assert result.node_id == classify.FAB_NODE_ID and result.lot_id == "LOT-1"
    assert len(result.probabilities) == 9 and sum(result.probabilities) == pytest.approx(
        1, abs=1e-5
    )
    assert result.prediction == int(np.argmax(result.probabilities))
    assert result.confidence == pytest.approx(max(result.probabilities))
    assert result.steps >= 1 and result.latency_ms > 0
    assert result.flagged == (result.confidence < SETTINGS.review_confidence_threshold)
    # The same wafer in WM-811K encoding gets the same answer.
    assert wm811k.result is not None and wm811k.result.probabilities == result.probabilities
    assert bad_size.result is None
    assert bad_size.error == "wafer_map.values: has 675 bytes, expected 676 (26x26)"
    assert no_map.error == "wafer_map: is required"
    assert no_id.error == "wafer_id: must not be blank"


@pytest.mark.asyncio
async def test_batch_limits(classifier: classify.Classifier) -> None:
    wafer = domain.WaferInput("W", "L", _canonical(_ring(26)))
    with pytest.raises(InvalidArgument) as too_many:
        await classify.classify_batch(classifier, wafers=[wafer] * 9, settings=SETTINGS)
    assert too_many.value.field == "wafers"
    with pytest.raises(InvalidArgument) as empty:
        await classify.classify_batch(classifier, wafers=[], settings=SETTINGS)
    assert empty.value.field == "wafers"


@pytest.mark.asyncio
async def test_an_unloadable_model_is_a_failed_precondition(tmp_path: Path) -> None:
    missing = classify.Classifier(tmp_path / "no-model")
    wafer = domain.WaferInput("W", "L", _canonical(_ring(26)))
    with pytest.raises(Conflict, match="no model"):
        await classify.classify_batch(missing, wafers=[wafer], settings=SETTINGS)
