"""The HTTP API on the real default model: responses, validation, limits, G85, operations."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.app import create_app
from edge.classify import ClassifyService
from edge.metrics import EdgeMetrics
from edge.model_store import ModelStore
from edge.outbox import Outbox, OutboxFull
from edge.settings import EdgeSettings
from wafercore.classes import CLASS_NAMES
from wafercore.encoding import to_wm811k
from wafercore.readers.g85 import G85Map, write_g85
from wafercore.synthetic import generate_dataset
from waferplatform.v1 import common_pb2

DEFAULT = Path(__file__).resolve().parents[3] / "models" / "trm-v1.0.0"
MAP = [[2, 0, 0, 2], [0, 1, 1, 0], [0, 1, 1, 0], [2, 0, 0, 2]]
BODY: dict[str, Any] = {
    "wafer_id": "WF-2024-0831-1042",
    "lot_id": "LOT-A7732",
    "wafer_map": MAP,
    "timestamp": "2025-08-31T10:42:15Z",
}
JSON = {"content-type": "application/json"}
_WAFER_NUMBERS = itertools.count()
RESPONSE_FIELDS = {
    "wafer_id",
    "prediction",
    "confidence",
    "class_probabilities",
    "recursion_steps_used",
    "inference_latency_ms",
    "model_version",
    "flagged_for_review",
    "novelty_score",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """The default model, loaded once for the module (no test activates another)."""
    root = tmp_path_factory.mktemp("models")
    return ModelStore(root, default_model=DEFAULT, threads=1, warmup=1)


class Node:
    """An app on the shared model with its own outbox and metrics."""

    def __init__(self, store: ModelStore, work: Path, *, outbox_bytes: int = 1 << 24) -> None:
        self.settings = EdgeSettings(work_dir=work, node_id="edge-test", max_batch=8)
        self.outbox = Outbox(self.settings.outbox_path, max_bytes=outbox_bytes, sync="normal")
        self.metrics = EdgeMetrics(
            model_version=lambda: store.current.version, outbox_depth=self.outbox.depth
        )
        service = ClassifyService(
            store=store,
            outbox=self.outbox,
            metrics=self.metrics,
            review_threshold=self.settings.review_threshold,
            max_batch=self.settings.max_batch,
        )
        self.app = create_app(
            settings=self.settings,
            service=service,
            store=store,
            outbox=self.outbox,
            metrics=self.metrics,
        )

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(self.app), base_url="http://edge")

    def stored(self) -> list[Any]:
        """The outbox's records, decoded."""
        return [
            common_pb2.Classification.FromString(data)
            for _, data in self.outbox.pending(limit=10_000)
        ]


@pytest.fixture
def node(store: ModelStore, tmp_path: Path) -> Iterator[Node]:
    made = Node(store, tmp_path / "edge")
    yield made
    made.outbox.close()


@pytest_asyncio.fixture
async def client(node: Node) -> AsyncIterator[httpx.AsyncClient]:
    async with node.client() as http:
        yield http


def _detail(answer: httpx.Response) -> tuple[list[Any], str]:
    """(loc, msg) of a 422's first problem."""
    assert answer.status_code == 422, answer.text
    first = answer.json()["detail"][0]
    return first["loc"], first["msg"]


@pytest.mark.asyncio
async def test_classify_answers_the_brief_fields_and_stores_the_result(
    client: httpx.AsyncClient, node: Node
) -> None:
    answer = await client.post("/classify", json=BODY)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == RESPONSE_FIELDS
    assert body["wafer_id"] == BODY["wafer_id"]
    assert body["model_version"] == "trm-v1.0.0"
    assert list(body["class_probabilities"]) == list(CLASS_NAMES)
    assert sum(body["class_probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["prediction"] == max(
        body["class_probabilities"], key=body["class_probabilities"].get
    )
    assert body["confidence"] == body["class_probabilities"][body["prediction"]]
    assert body["flagged_for_review"] == (body["confidence"] < 0.6)
    assert 1 <= body["recursion_steps_used"] <= 3
    assert body["inference_latency_ms"] > 0
    assert body["novelty_score"] is None

    (stored,) = node.stored()
    assert (stored.wafer_id, stored.lot_id) == (BODY["wafer_id"], BODY["lot_id"])
    assert CLASS_NAMES[stored.prediction] == body["prediction"]
    assert stored.confidence == pytest.approx(body["confidence"])
    assert stored.recursion_steps_used == body["recursion_steps_used"]
    assert stored.model_version == "trm-v1.0.0"
    assert stored.HasField("classified_at")
    # The uplink sets these when it sends.
    assert stored.sequence == 0 and stored.node_id == ""
    assert (stored.wafer_map.rows, stored.wafer_map.cols) == (4, 4)
    assert stored.wafer_map.values == bytes(np.array(MAP, dtype=np.uint8).ravel())
    assert stored.wafer_map.encoding == common_pb2.DIE_ENCODING_CANONICAL
    expected_reason = (
        common_pb2.REVIEW_REASON_LOW_CONFIDENCE
        if body["flagged_for_review"]
        else common_pb2.REVIEW_REASON_UNSPECIFIED
    )
    assert stored.review_reason == expected_reason


@pytest.mark.asyncio
async def test_a_station_retry_returns_the_stored_answer_and_stores_nothing(
    client: httpx.AsyncClient, node: Node
) -> None:
    first = await client.post("/classify", json=BODY)
    # Same wafer and test time: a retry (lost response, station restart), even in a batch.
    again = await client.post("/classify", json=BODY)
    batch = await client.post("/classify/batch", json={"wafers": [BODY, BODY]})
    assert first.status_code == again.status_code == batch.status_code == 200
    assert again.json() == first.json()
    assert batch.json()["results"] == [first.json(), first.json()]
    (stored,) = node.stored()
    assert stored.tested_at.ToJsonString() == "2025-08-31T10:42:15Z"
    assert stored.HasField("wafer_map")


@pytest.mark.asyncio
async def test_a_retest_at_a_later_time_and_a_new_wafer_are_new_results(
    client: httpx.AsyncClient, node: Node
) -> None:
    retest = {**BODY, "timestamp": "2025-08-31T12:42:15+02:00"}  # 10:42:15Z: the same test
    later = {**BODY, "timestamp": "2025-08-31T10:42:16Z"}
    other = {**BODY, "wafer_id": "WF-2024-0831-1043"}
    for body in (BODY, retest, later, other):
        assert (await client.post("/classify", json=body)).status_code == 200
    stored = node.stored()
    assert [(r.wafer_id, r.tested_at.ToJsonString()) for r in stored] == [
        (BODY["wafer_id"], "2025-08-31T10:42:15Z"),
        (BODY["wafer_id"], "2025-08-31T10:42:16Z"),
        (other["wafer_id"], "2025-08-31T10:42:15Z"),
    ]


@pytest.mark.asyncio
async def test_a_wm811k_map_is_converted_and_classified_like_its_canonical_twin(
    client: httpx.AsyncClient, node: Node
) -> None:
    wafer = generate_dataset(1, np.random.default_rng(3)).map(0)
    canonical = await client.post("/classify", json={**BODY, "wafer_map": wafer.tolist()})
    raw = {
        **BODY,
        "wafer_map": to_wm811k(wafer).tolist(),
        "encoding": "wm811k",
        "timestamp": "2025-08-31T10:43:00Z",  # a retest: a retry would return the first answer
    }
    converted = await client.post("/classify", json=raw)
    assert canonical.status_code == converted.status_code == 200
    assert converted.json()["class_probabilities"] == canonical.json()["class_probabilities"]
    first, second = node.stored()
    assert first.wafer_map.values == second.wafer_map.values == wafer.tobytes()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"wafer_map": [[0, 1], [0]]}, "wafer_map[1]", "ragged"),
        ({"wafer_map": [[0, 5]]}, "wafer_map[0][1]", "allowed values are 0 pass"),
        ({"wafer_map": [[0, 3]], "encoding": "wm811k"}, "wafer_map[0][1]", "0 no die"),
        ({"wafer_map": [[0] * 513]}, "wafer_map", "at most 512"),
        ({"wafer_map": [[0]] * 513}, "wafer_map", "at most 512"),
        ({"wafer_map": []}, "wafer_map", "empty"),
        ({"wafer_map": [[True, 0]]}, "wafer_map[0][0]", "not a die value"),
        ({"wafer_map": [[0.5]]}, "wafer_map[0][0]", "not an integer"),
        ({"wafer_map": [[10**30]]}, "wafer_map", "too large"),
        ({"wafer_map": "0101"}, "wafer_map", "list of rows"),
        ({"wafer_id": ""}, "wafer_id", "at least 1 character"),
        ({"lot_id": "   "}, "lot_id", "blank"),
        ({"wafer_id": "W\x00"}, "wafer_id", "control characters"),
        ({"lot_id": "L" * 129}, "lot_id", "at most 128"),
        ({"timestamp": "2025-08-31T10:42:15"}, "timestamp", "no time zone"),
        ({"timestamp": "last tuesday"}, "timestamp", "ISO 8601"),
        ({"timestamp": 0}, "timestamp", "not a number"),
        ({"timestamp": "1970-01-01T00:00:00Z"}, "timestamp", "before 2000"),
        ({"timestamp": "2999-01-01T00:00:00+02:00"}, "timestamp", "ahead"),
        ({"encoding": "ascii"}, "encoding", "'canonical' or 'wm811k'"),
        ({"wafermap": MAP}, "wafermap", "Extra inputs"),
    ],
)
async def test_bad_input_is_422_naming_the_field_and_the_reason(
    client: httpx.AsyncClient, node: Node, change: dict[str, Any], field: str, reason: str
) -> None:
    loc, msg = _detail(await client.post("/classify", json={**BODY, **change}))
    assert loc == ["body", field]
    assert reason in msg
    assert node.outbox.depth() == 0


@pytest.mark.asyncio
async def test_a_missing_field_and_malformed_json_are_422(client: httpx.AsyncClient) -> None:
    loc, msg = _detail(
        await client.post("/classify", json={k: BODY[k] for k in BODY if k != "lot_id"})
    )
    assert loc == ["body", "lot_id"] and "required" in msg
    headers = {"content-type": "application/json"}
    loc, _ = _detail(await client.post("/classify", content=b'{"wafer_id": ', headers=headers))
    assert loc[0] == "body"
    nested = b"[" * 200_000
    loc, msg = _detail(await client.post("/classify", content=nested, headers=headers))
    assert loc == ["body", "body"] and "JSON" in msg


@pytest.mark.asyncio
async def test_a_422_does_not_echo_a_large_input(client: httpx.AsyncClient) -> None:
    huge = [[7] * 400] * 400  # every die bad: one error, not 160,000
    answer = await client.post("/classify", json={**BODY, "wafer_map": huge})
    assert answer.status_code == 422
    assert len(answer.content) < 500


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=30,
)


def _run(node: Node, coroutine_factory: Any) -> Any:
    async def go() -> Any:
        async with node.client() as http:
            return await coroutine_factory(http)

    return asyncio.run(go())


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    field=st.sampled_from(["wafer_id", "lot_id", "wafer_map", "timestamp", "encoding"]),
    value=JSON_VALUES,
)
def test_any_json_in_any_field_is_never_a_server_error(node: Node, field: str, value: Any) -> None:
    # Python's json writes NaN and Infinity, which Python's (and the node's) parser reads.
    content = json.dumps({**BODY, field: value}).encode()
    answer = _run(node, lambda http: http.post("/classify", content=content, headers=JSON))
    assert answer.status_code in (200, 422), answer.text
    if answer.status_code == 422:
        loc, msg = _detail(answer)
        assert loc[1].startswith(field) and msg


def _broken_grid(draw: st.DrawFn) -> list[list[Any]]:
    rows, cols = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    grid: list[list[Any]] = [[draw(st.integers(0, 2)) for _ in range(cols)] for _ in range(rows)]
    defect = draw(st.sampled_from(["value", "ragged", "type", "empty_row"]))
    i, j = draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1))
    if defect == "value":
        grid[i][j] = draw(st.integers().filter(lambda v: not 0 <= v <= 2))
    elif defect == "ragged":
        grid[i] = grid[i] + [0] if rows == 1 or draw(st.booleans()) else grid[i][:-1]
        if rows == 1:
            grid.append([0] * cols)
    elif defect == "type":
        grid[i][j] = draw(st.sampled_from([True, None, "1", 1.5, float("nan"), [0]]))
    else:
        grid[i] = []
    return grid


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(grid=st.composite(_broken_grid)(), wm811k=st.booleans())
def test_every_broken_map_is_422_naming_wafer_map(
    node: Node, grid: list[list[Any]], wm811k: bool
) -> None:
    body = {**BODY, "wafer_map": grid, "encoding": "wm811k" if wm811k else "canonical"}
    # NaN is not JSON: send it the way a careless client would (Python's json allows it).
    content = json.dumps(body).encode()
    answer = _run(node, lambda http: http.post("/classify", content=content, headers=JSON))
    loc, msg = _detail(answer)
    assert loc[0] == "body" and str(loc[1]).startswith("wafer_map") and msg
    assert node.outbox.depth() == 0


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    grid=st.integers(1, 40).flatmap(
        lambda rows: st.lists(
            st.lists(st.integers(0, 2), min_size=rows, max_size=rows), min_size=1, max_size=40
        )
    ),
    wm811k=st.booleans(),
)
def test_every_valid_map_of_any_size_is_classified_and_stored(
    node: Node, grid: list[list[int]], wm811k: bool
) -> None:
    before = node.outbox.depth()
    body = {
        **BODY,
        "wafer_id": f"WF-{next(_WAFER_NUMBERS)}",  # a new wafer each time, not a retry
        "wafer_map": grid,
        "encoding": "wm811k" if wm811k else "canonical",
    }
    answer = _run(node, lambda http: http.post("/classify", json=body))
    assert answer.status_code == 200, answer.text
    assert sum(answer.json()["class_probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert node.outbox.depth() == before + 1


@pytest.mark.asyncio
async def test_a_body_over_the_limit_is_413_with_or_without_content_length(
    client: httpx.AsyncClient, node: Node
) -> None:
    limit = node.settings.max_body_bytes
    big = json.dumps({**BODY, "wafer_id": "W" * limit}).encode()
    headers = {"content-type": "application/json"}
    answer = await client.post("/classify", content=big, headers=headers)
    assert answer.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    chunked = await client.post("/classify", content=chunks(), headers=headers)
    assert chunked.status_code == 413
    [problem] = chunked.json()["detail"]
    assert problem["type"] == "content_too_large" and problem["loc"] == ["body"]
    assert "1,048,576" in problem["msg"]
    assert node.outbox.depth() == 0
    metrics = (await client.get("/metrics")).text
    assert 'edge_requests_rejected_total{status="413"} 2.0' in metrics


@pytest.mark.asyncio
async def test_batch_classifies_in_order_and_stores_every_result(
    client: httpx.AsyncClient, node: Node
) -> None:
    wafers = [{**BODY, "wafer_id": f"W{i}"} for i in range(3)]
    answer = await client.post("/classify/batch", json={"wafers": wafers})
    assert answer.status_code == 200, answer.text
    assert [r["wafer_id"] for r in answer.json()["results"]] == ["W0", "W1", "W2"]
    assert [s.wafer_id for s in node.stored()] == ["W0", "W1", "W2"]


@pytest.mark.asyncio
async def test_a_batch_with_one_bad_wafer_classifies_none(
    client: httpx.AsyncClient, node: Node
) -> None:
    wafers = [BODY, {**BODY, "wafer_map": [[0, 9]]}]
    loc, msg = _detail(await client.post("/classify/batch", json={"wafers": wafers}))
    assert loc == ["body", "wafers[1].wafer_map[0][1]"] and "is 9" in msg
    loc, _ = _detail(await client.post("/classify/batch", json={"wafers": [BODY] * 9}))
    assert loc == ["body", "wafers"]
    loc, _ = _detail(await client.post("/classify/batch", json={"wafers": []}))
    assert loc == ["body", "wafers"]
    assert node.outbox.depth() == 0


@pytest.mark.asyncio
async def test_g85_documents_are_classified_map_by_map(
    client: httpx.AsyncClient, node: Node
) -> None:
    dataset = generate_dataset(1, np.random.default_rng(1))
    maps = [G85Map(f"WF-{i}", "LOT-G85", "P1", dataset.map(i)) for i in range(2)]
    document = write_g85(maps)
    headers = {"content-type": "application/xml"}
    answer = await client.post("/classify/g85", content=document, headers=headers)
    assert answer.status_code == 200, answer.text
    assert [r["wafer_id"] for r in answer.json()["results"]] == ["WF-0", "WF-1"]
    stored = node.stored()
    assert [(s.wafer_id, s.lot_id) for s in stored] == [("WF-0", "LOT-G85"), ("WF-1", "LOT-G85")]
    assert stored[1].wafer_map.values == dataset.map(1).tobytes()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("document", "field"),
    [
        ("<Maps><Map", "xml"),
        ("", "xml"),
        ('<!DOCTYPE x [<!ENTITY a "b">]><Maps/>', "xml"),
        ("<Maps/>", "Maps"),
        (
            write_g85([G85Map("WF-1", "", "P", np.zeros((3, 3), dtype=np.uint8))]),
            "Map[0].Device.LotId",
        ),
        (write_g85([G85Map("", "L", "P", np.zeros((3, 3), dtype=np.uint8))]), "Map[0].WaferId"),
        (write_g85([G85Map("W", "L", "P", np.zeros((1, 600), dtype=np.uint8))]), "Map[0].Device"),
        (  # a trillion columns declared: refused before anything is allocated (it was a 500)
            '<Maps><Map WaferId="W"><Device LotId="L" Rows="1" Columns="1000000000000" '
            'BinType="Decimal" NullBin="255"><Bin BinCode="1" BinQuality="Pass"/>'
            "<Data><Row>1</Row></Data></Device></Map></Maps>",
            "Map[0].Device",
        ),
    ],
)
async def test_bad_g85_documents_are_422(
    client: httpx.AsyncClient, node: Node, document: str, field: str
) -> None:
    answer = await client.post("/classify/g85", content=document.encode())
    loc, msg = _detail(answer)
    assert loc[1].startswith(field) and msg
    assert node.outbox.depth() == 0


@pytest.mark.asyncio
async def test_a_full_outbox_is_503_with_an_alert_and_nothing_is_dropped(
    store: ModelStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = Node(store, tmp_path / "edge", outbox_bytes=1 << 16)
    filler: list[int] = []
    with pytest.raises(OutboxFull):
        while True:
            filler.append(node.outbox.append(b"x" * 2000))
    async with node.client() as http:
        with caplog.at_level(logging.ERROR, logger="edge.classify"):
            answer = await http.post("/classify", json=BODY)
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "30"
        assert any("outbox full" in r.message for r in caplog.records)
        assert [i for i, _ in node.outbox.pending(limit=1000)] == filler
        assert (await http.get("/healthz")).status_code == 503
        metrics = (await http.get("/metrics")).text
        assert "edge_outbox_full 1.0" in metrics
        assert "edge_outbox_refused_results_total 1.0" in metrics

        node.outbox.ack(filler[-1])  # the fab caught up
        assert (await http.post("/classify", json=BODY)).status_code == 200
        assert "edge_outbox_full 0.0" in (await http.get("/metrics")).text
        assert (await http.get("/healthz")).status_code == 200
    node.outbox.close()


@pytest.mark.asyncio
async def test_operations_routes(client: httpx.AsyncClient, node: Node) -> None:
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {
        "status": "ok",
        "node_id": "edge-test",
        "model_version": "trm-v1.0.0",
        "outbox_depth": 0,
        "outbox_bytes": node.outbox.size_bytes(),
        "outbox_max_bytes": 1 << 24,
        "uplink_connected": None,
    }
    model = (await client.get("/model")).json()
    assert model["version"] == "trm-v1.0.0"
    assert model["previous_version"] is None
    assert "path" not in model  # the node's file layout is nobody's business
    assert model["review_threshold"] == 0.6
    assert model["manifest"]["kind"] == "trm" and model["manifest"]["n_sup"] == 3
    assert model["manifest"]["class_names"] == list(CLASS_NAMES)

    await client.post("/classify", json=BODY)
    metrics = await client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "edge_inference_latency_seconds_count 1.0" in metrics.text
    assert 'edge_model_info{version="trm-v1.0.0"} 1.0' in metrics.text
    assert "process_cpu_seconds_total" in metrics.text

    schema = (await client.get("/openapi.json")).json()
    request = schema["components"]["schemas"]["ClassifyRequest"]
    assert set(request["required"]) == {"wafer_id", "lot_id", "wafer_map", "timestamp"}
    assert "application/xml" in schema["paths"]["/classify/g85"]["post"]["requestBody"]["content"]


@pytest.mark.asyncio
async def test_a_g85_retry_with_the_station_time_returns_the_stored_answers(
    client: httpx.AsyncClient, node: Node
) -> None:
    dataset = generate_dataset(1, np.random.default_rng(5))
    document = write_g85([G85Map(f"G-{i}", "LOT-G", "P", dataset.map(i)) for i in range(2)])
    url = "/classify/g85?timestamp=2025-08-31T10:42:15%2B02:00"
    first = await client.post(url, content=document.encode())
    again = await client.post(url, content=document.encode())
    assert first.status_code == again.status_code == 200, first.text
    assert again.json() == first.json()
    stored = node.stored()
    assert [r.tested_at.ToJsonString() for r in stored] == ["2025-08-31T08:42:15Z"] * 2
    untimed = await client.post("/classify/g85", content=document.encode())
    assert untimed.status_code == 200 and len(node.stored()) == 4  # no time: no retry key
    loc, msg = _detail(await client.post("/classify/g85?timestamp=0", content=document.encode()))
    assert loc == ["query", "timestamp"] and msg.startswith("must be an ISO 8601")


@pytest.mark.asyncio
async def test_a_novelty_model_scores_embeds_and_flags_every_wafer(
    tmp_path: Path, novelty_model: Callable[..., Path]
) -> None:
    model = novelty_model(tmp_path / "novel", threshold=0.0)  # everything is novel
    store = ModelStore(tmp_path / "models", default_model=model, threads=1, warmup=1)
    made = Node(store, tmp_path / "edge")
    try:
        async with made.client() as http:
            answer = await http.post("/classify", json=BODY)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["novelty_score"] > 0 and body["flagged_for_review"] is True
        (stored,) = made.stored()
        assert stored.novelty_score == pytest.approx(body["novelty_score"])
        assert stored.review_reason == common_pb2.REVIEW_REASON_NOVELTY
        assert len(stored.embedding) == 4 and all(np.isfinite(stored.embedding))
    finally:
        made.outbox.close()
