"""``/api/wafers/{id}/similar`` and ``/heatmap`` over HTTP on real PostgreSQL: results stored by
ingest (embeddings through the JSON recordset path), engineers' tokens, and 4xx that name why."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
import pytest_asyncio

from fab_server import domain
from fab_server.api import create_app
from fab_server.db import make_async_engine, session_factory
from fab_server.services import ingest
from fab_server.services.classify import Classifier
from fab_server.settings import FabSettings
from wafercore.encoding import OUT
from wafercore.synthetic import generate_dataset

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
PROBABILITIES = (0.02, 0.02, 0.02, 0.84, 0.02, 0.02, 0.02, 0.02, 0.02)


def _result(sequence: int, embedding: tuple[float, ...] | None, wafer: np.ndarray) -> domain.Result:
    rows, cols = wafer.shape
    return domain.Result(
        node_id="edge-1",
        sequence=sequence,
        wafer_id=f"W{sequence}",
        lot_id="LOT-1",
        model_version="cnn-v2.1.0",
        prediction=3,
        probabilities=PROBABILITIES,
        confidence=0.84,
        steps=1,
        latency_ms=2.0,
        flagged=False,
        classified_at=NOW + timedelta(seconds=sequence),
        embedding=embedding,
        wafer_map=domain.StoredMap(rows=rows, cols=cols, values=wafer.tobytes()),
    )


@pytest_asyncio.fixture
async def http(
    fab_settings: FabSettings,
    engineer_token: str,
    tmp_path: Path,
    novelty_model: Callable[..., Path],
) -> AsyncIterator[httpx.AsyncClient]:
    engine = make_async_engine(fab_settings.database_url, fab_settings.db_schema)
    sessions = session_factory(engine)
    wafers = generate_dataset(1, np.random.default_rng(2))
    results = [
        _result(s, (0.1 * s, 0.5, -0.25, 1.0), wafers.map(s % len(wafers))) for s in range(1, 8)
    ]
    results.append(_result(8, None, wafers.map(0)))
    await ingest.ingest_batch(sessions, node_id="edge-1", results=results, settings=fab_settings)
    classifier = Classifier(novelty_model(tmp_path / "model", threshold=1e6))
    app = create_app(fab_settings, sessions, classifier)
    headers = {"Authorization": f"Bearer {engineer_token}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://fab", headers=headers) as c:
        yield c
    await engine.dispose()


@pytest.mark.asyncio
async def test_similar_wafers_are_the_nearest_stored_ones(http: httpx.AsyncClient) -> None:
    answer = await http.get("/api/wafers/W4/similar", params={"k": 3})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["query"]["wafer_id"] == "W4" and body["query"]["node_id"] == "edge-1"
    assert [n["wafer_id"] for n in body["neighbours"][:1]] in (["W3"], ["W5"])
    assert sorted(n["wafer_id"] for n in body["neighbours"][:2]) == ["W3", "W5"]
    assert body["neighbours"][0]["distance"] == pytest.approx(0.1, abs=1e-5)
    assert body["neighbours"][0]["confirmed_label"] is None
    by_key = await http.get(
        "/api/wafers/W4/similar", params={"k": 1, "node_id": "edge-1", "sequence": 4}
    )
    assert by_key.json()["query"]["sequence"] == 4


@pytest.mark.asyncio
async def test_the_heatmap_has_the_map_shape_and_nulls_off_the_wafer(
    http: httpx.AsyncClient,
) -> None:
    answer = await http.get("/api/wafers/W2/heatmap")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    wafer = generate_dataset(1, np.random.default_rng(2)).map(2)
    assert (body["rows"], body["cols"]) == wafer.shape
    assert (body["novelty_model"], body["novel"]) == ("vae-v0.0.1", False)
    values = np.array([[np.nan if v is None else v for v in row] for row in body["values"]])
    assert np.isnan(values[wafer == OUT]).all() and np.isfinite(values[wafer != OUT]).all()


BAD_REQUESTS = [
    ("/api/wafers/W1/similar", {"k": 0}, 422, "k"),
    ("/api/wafers/W1/similar", {"k": 101}, 422, "k"),
    ("/api/wafers/W1/similar", {"node_id": "edge-1"}, 422, "node_id"),
    ("/api/wafers/nope/similar", {}, 404, "nope"),
    ("/api/wafers/W8/similar", {}, 409, "no embedding"),
    ("/api/wafers/W1/heatmap", {"sequence": 0, "node_id": "edge-1"}, 422, "sequence"),
]


@pytest.mark.asyncio
async def test_bad_requests_get_a_4xx_that_says_why(http: httpx.AsyncClient) -> None:
    for path, params, status, says in BAD_REQUESTS:
        answer = await http.get(path, params=params)
        assert answer.status_code == status, (path, params, answer.text)
        assert says in answer.text, (path, params, answer.text)


@pytest.mark.asyncio
async def test_wafers_are_for_engineers_only(http: httpx.AsyncClient) -> None:
    answer = await http.get("/api/wafers/W1/similar", headers={"Authorization": "Bearer wrong"})
    assert answer.status_code == 401
