"""The classification service: model swaps mid-request, concurrency, the map fast path, alerts."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.classify import ClassifyService, WaferInput, _canonical
from edge.metrics import EdgeMetrics
from edge.model_store import ModelStore
from edge.outbox import Outbox, OutboxFull
from wafercore.errors import InvalidInput
from wafercore.preprocessing import validate_map
from wafercore.runtime import MANIFEST_FILE, ModelManifest, ModelRuntime, RuntimeResult
from waferplatform.v1 import common_pb2

DEFAULT = Path(__file__).resolve().parents[3] / "models" / "trm-v1.0.0"
NOW = datetime(2025, 8, 31, 10, 42, 15, tzinfo=UTC)
WAFER = WaferInput("WF-1", "LOT-1", [[2, 0, 2], [0, 1, 0], [2, 0, 2]])


class Parts:
    def __init__(self, root: Path, *, outbox_bytes: int = 1 << 24) -> None:
        self.store = ModelStore(root / "models", default_model=DEFAULT, threads=1, warmup=0)
        self.outbox = Outbox(root / "outbox.db", max_bytes=outbox_bytes, sync="normal")
        self.metrics = EdgeMetrics(start=NOW)
        self.service = ClassifyService(
            store=self.store,
            outbox=self.outbox,
            metrics=self.metrics,
            review_threshold=0.6,
            max_batch=4,
            clock=lambda: NOW,
        )


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    made = Parts(tmp_path)
    yield made
    made.outbox.close()


def _gate(
    runtime: ModelRuntime, monkeypatch: pytest.MonkeyPatch
) -> tuple[threading.Event, threading.Event]:
    """Make the first ``runtime.predict`` call signal ``entered`` and wait for ``release``."""
    entered, release = threading.Event(), threading.Event()
    predict = runtime.predict

    def gated(tokens: Any, **kwargs: Any) -> RuntimeResult:
        if not entered.is_set():
            entered.set()
            assert release.wait(30), "test never released the prediction"
        return predict(tokens, **kwargs)

    monkeypatch.setattr(runtime, "predict", gated)
    return entered, release


def _relabelled(store: ModelStore, version: str) -> tuple[Path, ModelRuntime]:
    staged = store.staging_dir()
    shutil.copy(DEFAULT / "model.onnx", staged / "model.onnx")
    manifest = ModelManifest.from_json((DEFAULT / MANIFEST_FILE).read_text())
    (staged / MANIFEST_FILE).write_text(dataclasses.replace(manifest, version=version).to_json())
    return staged, ModelRuntime.load(staged, threads=1)


@pytest.mark.asyncio
async def test_a_request_finishes_on_the_model_it_started_with(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = _gate(parts.store.current.runtime, monkeypatch)
    in_flight = asyncio.create_task(parts.service.classify([WAFER]))
    assert await asyncio.to_thread(entered.wait, 30)
    parts.store.activate(*_relabelled(parts.store, "trm-v1.1.0"))
    # While the old model is busy, a new request already runs on the new one.
    (fresh,) = await parts.service.classify([dataclasses.replace(WAFER, wafer_id="WF-2")])
    release.set()
    (old,) = await in_flight
    assert old.model_version == "trm-v1.0.0"
    assert fresh.model_version == "trm-v1.1.0"
    stored = {
        m.wafer_id: m.model_version
        for m in (common_pb2.Classification.FromString(d) for _, d in parts.outbox.pending(limit=9))
    }
    assert stored == {"WF-1": "trm-v1.0.0", "WF-2": "trm-v1.1.0"}


@pytest.mark.asyncio
async def test_inference_runs_off_the_event_loop(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prediction blocked in its thread stalls neither the loop nor other requests."""
    entered, release = _gate(parts.store.current.runtime, monkeypatch)
    blocked = asyncio.create_task(parts.service.classify([WAFER]))
    assert await asyncio.to_thread(entered.wait, 30)
    (other,) = await asyncio.wait_for(
        parts.service.classify([dataclasses.replace(WAFER, wafer_id="WF-2")]), 30
    )
    assert not blocked.done()
    release.set()
    (first,) = await blocked
    assert 0 < other.sequence < first.sequence  # stored in the order they finished


@pytest.mark.asyncio
async def test_results_carry_outbox_sequences_and_are_observed(parts: Parts) -> None:
    results = await parts.service.classify(
        [dataclasses.replace(WAFER, wafer_id=f"W{i}") for i in range(3)]
    )
    ids = [i for i, _ in parts.outbox.pending(limit=9)]
    assert [r.sequence for r in results] == ids
    assert len({r.latency_ms for r in results}) == 1  # the batch's time, shared
    stored = common_pb2.Classification.FromString(parts.outbox.pending(limit=1)[0][1])
    assert stored.classified_at.ToDatetime(tzinfo=UTC) == NOW
    window = parts.metrics.window(NOW.replace(minute=43))
    assert window.wafers_classified == 3
    assert sum(window.class_counts) == 3


@pytest.mark.asyncio
async def test_call_limits_and_bad_ids_are_refused_before_inference(parts: Parts) -> None:
    with pytest.raises(InvalidInput, match="wafers: is empty"):
        await parts.service.classify([])
    with pytest.raises(InvalidInput, match="at most 4"):
        await parts.service.classify([WAFER] * 5)
    batch = [WAFER, dataclasses.replace(WAFER, lot_id="\t", field="wafers[1].wafer_map")]
    with pytest.raises(InvalidInput) as err:
        await parts.service.classify(batch)
    assert err.value.field == "wafers[1].lot_id"
    assert parts.outbox.depth() == 0


@pytest.mark.asyncio
async def test_g85_maps_without_ids_are_refused(parts: Parts) -> None:
    document = (
        '<Maps><Map WaferId=" "><Device Rows="1" Columns="2" BinType="Decimal" LotId="L">'
        '<Bin BinCode="1" BinQuality="Pass"/><Data><Row>1 1</Row></Data></Device></Map></Maps>'
    )
    with pytest.raises(InvalidInput) as err:
        await parts.service.classify_g85(document.encode())
    assert (err.value.field, err.value.reason) == ("Map[0].WaferId", "must not be blank")


@pytest.mark.asyncio
async def test_a_full_outbox_logs_one_error_per_interval_not_per_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    parts = Parts(tmp_path, outbox_bytes=1 << 16)
    with pytest.raises(OutboxFull):
        while True:
            parts.outbox.append(b"x" * 4000)
    with caplog.at_level(logging.WARNING, logger="edge.classify"):
        for _ in range(3):
            with pytest.raises(OutboxFull):
                await parts.service.classify([WAFER])
        assert [r.levelno for r in caplog.records] == [logging.ERROR]
        parts.outbox.ack(10**18)
        await parts.service.classify([WAFER])
        assert "accepts results again" in caplog.records[-1].message
    parts.outbox.close()


MAYBE_MAPS = st.one_of(
    st.lists(st.lists(st.integers(-(2**70), 2**70), max_size=6), max_size=6),
    st.lists(st.lists(st.integers(0, 2), min_size=3, max_size=3), min_size=1, max_size=5),
    st.lists(
        st.lists(st.one_of(st.integers(0, 3), st.booleans(), st.floats(), st.none()), max_size=4),
        max_size=4,
    ),
)


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        return "ok", call().tobytes()
    except InvalidInput as exc:
        return "error", (exc.field, exc.reason)


@settings(max_examples=300, deadline=None)
@given(rows=MAYBE_MAPS, wm811k=st.booleans())
def test_the_fast_path_agrees_with_wafercore_on_every_input(rows: Any, wm811k: bool) -> None:
    fast = _outcome(lambda: _canonical(WaferInput("W", "L", rows, wm811k=wm811k)))
    reference = _outcome(lambda: validate_map(rows, field="wafer_map", wm811k=wm811k))
    assert fast == reference


def test_the_fast_path_keeps_numpy_input() -> None:
    grid = np.array([[0, 1], [2, 0]], dtype=np.uint8)
    assert np.array_equal(_canonical(WaferInput("W", "L", grid)), grid)
