"""The HTTP API against real PostgreSQL: review flow, lots, alerts, health, metrics, errors."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.api import create_app
from fab_server.db import make_async_engine, session_factory
from fab_server.models import AlertRow, LotRow, ResultRow, WaferMapRow
from fab_server.services import review
from fab_server.settings import ApiToken, FabSettings

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
ANA = {"Authorization": "Bearer ana-engineer-token-0001"}
BEN = {"Authorization": "Bearer ben-engineer-token-0002"}
BOSS = {"Authorization": "Bearer boss-admin-token-00003"}
TOKENS = [
    ApiToken(token="ana-engineer-token-0001", user="ana", role="engineer"),
    ApiToken(token="ben-engineer-token-0002", user="ben", role="engineer"),
    ApiToken(token="boss-admin-token-00003", user="boss", role="admin"),
]


@dataclass
class Fab:
    http: httpx.AsyncClient
    sessions: async_sessionmaker[AsyncSession]
    settings: FabSettings


@pytest_asyncio.fixture
async def fab(fab_settings: FabSettings) -> AsyncIterator[Fab]:
    settings = fab_settings.model_copy(update={"api_tokens": TOKENS})
    engine = make_async_engine(settings.database_url, settings.db_schema)
    sessions = session_factory(engine)
    transport = httpx.ASGITransport(app=create_app(settings, sessions))
    async with httpx.AsyncClient(transport=transport, base_url="http://fab") as http:
        yield Fab(http, sessions, settings)
    await engine.dispose()


async def _seed(fab: Fab, confidences: list[float], lot_id: str = "LOT-7") -> None:
    """Store results (sequence 1..n, the first with a 3x4 map) and queue them as ingest does."""
    results = [
        domain.Result(
            node_id="edge-1",
            sequence=seq,
            wafer_id=f"W{seq}",
            lot_id=lot_id,
            model_version="trm-v1.0.0",
            prediction=4,
            probabilities=(0.05, 0.05, 0.05, 0.05, 0.4, 0.1, 0.1, 0.1, 0.1),
            confidence=conf,
            steps=2,
            latency_ms=11.0,
            flagged=False,
            classified_at=NOW,
        )
        for seq, conf in enumerate(confidences, start=1)
    ]
    async with fab.sessions.begin() as session:
        session.add(LotRow(lot_id=lot_id, first_seen=NOW, last_seen=NOW))
        for r in results:
            session.add(
                ResultRow(
                    node_id=r.node_id,
                    sequence=r.sequence,
                    wafer_id=r.wafer_id,
                    lot_id=r.lot_id,
                    model_version=r.model_version,
                    prediction=r.prediction,
                    probabilities=list(r.probabilities),
                    confidence=r.confidence,
                    steps=r.steps,
                    latency_ms=r.latency_ms,
                    flagged=r.flagged,
                    review_reason=0,
                    classified_at=r.classified_at,
                    received_at=NOW,
                )
            )
        session.add(
            WaferMapRow(
                node_id="edge-1",
                sequence=1,
                rows=3,
                cols=4,
                values=bytes([2, 0, 0, 2, 0, 1, 1, 0, 2, 0, 0, 2]),
            )
        )
        await session.flush()
        await review.enqueue_from_results(session, results=results, settings=fab.settings, now=NOW)


@pytest.mark.asyncio
async def test_review_flow_claim_resolve_history_and_stats(fab: Fab) -> None:
    await _seed(fab, [0.3, 0.5, 0.2, 0.95])
    listed = (await fab.http.get("/api/review/items", headers=ANA)).json()
    assert [i["wafer_id"] for i in listed] == ["W3", "W1", "W2"]  # most uncertain first
    assert listed[0]["reason"] == "low_confidence" and listed[0]["predicted_name"] == "Edge-Ring"

    detail = (await fab.http.get(f"/api/review/items/{listed[1]['id']}", headers=ANA)).json()
    assert detail["result"]["wafer_map"] == {
        "rows": 3,
        "cols": 4,
        "values": [[2, 0, 0, 2], [0, 1, 1, 0], [2, 0, 0, 2]],
    }
    assert detail["result"]["probabilities"]["Edge-Ring"] == pytest.approx(0.4)
    assert len(detail["result"]["probabilities"]) == 9

    claimed = await fab.http.post("/api/review/claim", headers=ANA)
    assert claimed.status_code == 200
    item = claimed.json()
    assert (item["wafer_id"], item["state"], item["claimed_by"]) == ("W3", "claimed", "ana")
    taken = await fab.http.post(f"/api/review/items/{item['id']}/claim", headers=BEN)
    assert taken.status_code == 409 and "claimed by ana" in taken.json()["detail"][0]["msg"]

    verdict = {"outcome": "relabelled", "true_label": 1, "comment": "centre spot"}
    url = f"/api/review/items/{item['id']}/resolve"
    assert (await fab.http.post(url, json=verdict, headers=BEN)).status_code == 409
    resolved = await fab.http.post(url, json=verdict, headers=ANA)
    assert resolved.status_code == 200
    assert resolved.json()["true_label_name"] == "Center"
    assert resolved.json()["resolved_by"] == "ana"

    second = (await fab.http.post("/api/review/claim", headers=BEN)).json()
    confirm = await fab.http.post(
        f"/api/review/items/{second['id']}/resolve", json={"outcome": "confirmed"}, headers=BEN
    )
    assert confirm.status_code == 200 and confirm.json()["true_label"] == 4

    history = (await fab.http.get("/api/review/history", headers=ANA)).json()
    assert [h["wafer_id"] for h in history] == ["W1", "W3"]
    mine = await fab.http.get("/api/review/history", params={"resolved_by": "ana"}, headers=ANA)
    assert [h["wafer_id"] for h in mine.json()] == ["W3"]
    [stats] = (await fab.http.get("/api/review/stats", headers=ANA)).json()
    assert (stats["model_version"], stats["reviewed"], stats["confirmed"]) == ("trm-v1.0.0", 2, 1)
    assert stats["per_class"] == [
        {
            "predicted_class": 4,
            "predicted_name": "Edge-Ring",
            "reviewed": 2,
            "confirmed": 1,
            "accuracy": 0.5,
        }
    ]
    resolved_listing = await fab.http.get(
        "/api/review/items", params={"state": "resolved"}, headers=ANA
    )
    assert {i["wafer_id"] for i in resolved_listing.json()} == {"W1", "W3"}


@pytest.mark.asyncio
async def test_admin_routes_override_a_colleagues_claim(fab: Fab) -> None:
    await _seed(fab, [0.3, 0.4])
    first = (await fab.http.post("/api/review/claim", headers=ANA)).json()
    second = (await fab.http.post("/api/review/claim", headers=ANA)).json()
    assert (await fab.http.post("/api/review/claim", headers=BEN)).status_code == 204

    release = f"/api/review/items/{first['id']}/release"
    assert (await fab.http.post(release, headers=BEN)).status_code == 409
    forced = await fab.http.post(f"/api/review/admin/items/{first['id']}/release", headers=BOSS)
    assert forced.status_code == 200 and forced.json()["state"] == "open"

    verdict = {"outcome": "unusable", "comment": "probe marks"}
    done = await fab.http.post(
        f"/api/review/admin/items/{second['id']}/resolve", json=verdict, headers=BOSS
    )
    assert done.status_code == 200
    assert (done.json()["resolved_by"], done.json()["outcome"]) == ("boss", "unusable")
    # The admin's own, non-admin route still respects Ana's claim.
    mine = await fab.http.post(f"/api/review/items/{second['id']}/release", headers=ANA)
    assert mine.status_code == 409


@pytest.mark.asyncio
async def test_flag_over_http_is_idempotent_and_attributed(fab: Fab) -> None:
    body = {"idempotency_key": "ui-1", "node_id": "edge-9", "sequence": 5, "wafer_id": "W5"}
    first = await fab.http.post("/api/review/flag", json=body, headers=ANA)
    again = await fab.http.post("/api/review/flag", json=body, headers=BEN)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert (first.json()["requested_by"], first.json()["reason"]) == ("ana", "manual")
    assert first.json()["priority"] == 0 and first.json()["predicted_class"] is None
    detail = (await fab.http.get(f"/api/review/items/{first.json()['id']}", headers=ANA)).json()
    assert detail["result"] is None
    other = await fab.http.post(
        "/api/review/flag", json={**body, "sequence": 6, "wafer_id": "W6"}, headers=ANA
    )
    assert other.status_code == 409


@pytest.mark.parametrize(
    ("method", "url", "body", "loc"),
    [
        ("GET", "/api/review/items?limit=0", None, ["query", "limit"]),
        ("GET", "/api/review/items?limit=501", None, ["query", "limit"]),
        ("GET", "/api/review/items?state=lost", None, ["query", "state"]),
        ("GET", "/api/review/items?reason=boredom", None, ["query", "reason"]),
        ("GET", "/api/review/items?node_id=a%00b", None, ["query", "node_id"]),
        ("GET", f"/api/review/items?lot_id={'L' * 129}", None, ["query", "lot_id"]),
        ("GET", "/api/review/items/not-a-uuid", None, ["path", "item_id"]),
        ("GET", "/api/review/history?since=yesterday", None, ["query", "since"]),
        ("GET", "/api/review/stats?until=2026-13-01", None, ["query", "until"]),
        ("POST", "/api/review/claim", {"reason": "x"}, ["body", "reason"]),
        ("POST", "/api/review/claim", {"lot": "LOT-1"}, ["body", "lot"]),
        ("POST", "/api/review/flag", {"node_id": "e"}, ["body", "idempotency_key"]),
        (
            "POST",
            "/api/review/flag",
            {"idempotency_key": "k", "node_id": "e", "sequence": 0, "wafer_id": "w"},
            ["body", "sequence"],
        ),
        (
            "POST",
            "/api/review/flag",
            {"idempotency_key": "auto:e:1", "node_id": "e", "sequence": 1, "wafer_id": "w"},
            ["idempotency_key"],
        ),
        ("POST", "/api/review/items/{id}/resolve", {"outcome": "maybe"}, ["body", "outcome"]),
        (
            "POST",
            "/api/review/items/{id}/resolve",
            {"outcome": "relabelled", "true_label": 9},
            ["body", "true_label"],
        ),
        ("POST", "/api/review/items/{id}/resolve", {"outcome": "relabelled"}, ["true_label"]),
        (
            "POST",
            "/api/review/items/{id}/resolve",
            {"outcome": "unusable", "comment": "x" * 4001},
            ["body", "comment"],
        ),
        ("POST", "/api/review/items/{id}/resolve", None, ["body"]),
        ("GET", f"/api/lots/{'L' * 129}", None, ["path", "lot_id"]),
        ("GET", "/api/lots/LOT%00-1", None, ["path", "lot_id"]),  # PostgreSQL refuses NUL
        ("GET", "/api/review/items?node_id=edge%1B%5B2J", None, ["query", "node_id"]),
        ("GET", "/api/review/stats?since=0", None, ["query", "since"]),  # not a Unix time
        (
            "POST",
            "/api/review/flag",
            {"idempotency_key": "k", "node_id": "e", "sequence": 1, "wafer_id": "w\u0000"},
            ["body", "wafer_id"],
        ),
        ("GET", "/api/alerts?limit=0", None, ["query", "limit"]),
        ("GET", "/api/alerts?state=sleeping", None, ["query", "state"]),
        ("POST", f"/api/alerts/{2**63}/ack", None, ["path", "alert_id"]),
        ("POST", "/api/alerts/0/ack", None, ["path", "alert_id"]),
    ],
)
@pytest.mark.asyncio
async def test_bad_input_is_422_naming_the_field(
    fab: Fab, method: str, url: str, body: dict[str, Any] | None, loc: list[str]
) -> None:
    await _seed(fab, [0.1])
    item = (await fab.http.post("/api/review/claim", headers=ANA)).json()
    headers = BOSS if "/ack" in url else ANA
    response = await fab.http.request(
        method, url.replace("{id}", item["id"]), json=body, headers=headers
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc


@pytest.mark.asyncio
async def test_malformed_json_is_422_and_unknown_things_are_404(fab: Fab) -> None:
    await _seed(fab, [0.1])
    item = (await fab.http.post("/api/review/claim", headers=ANA)).json()
    broken = await fab.http.post(
        f"/api/review/items/{item['id']}/resolve",
        content=b"{not json",
        headers={**ANA, "Content-Type": "application/json"},
    )
    assert broken.status_code == 422
    missing = uuid.uuid4()
    for method, url, headers in [
        ("GET", f"/api/review/items/{missing}", ANA),
        ("POST", f"/api/review/items/{missing}/claim", ANA),
        ("POST", f"/api/review/items/{missing}/release", ANA),
        ("GET", "/api/lots/LOT-NOPE", ANA),
        ("POST", "/api/alerts/424242/ack", BOSS),
    ]:
        response = await fab.http.request(method, url, headers=headers)
        assert response.status_code == 404, (url, response.text)


@pytest.mark.asyncio
async def test_lot_summary_route(fab: Fab) -> None:
    await _seed(fab, [0.3, 0.9, 0.99], lot_id="LOT-42")
    response = await fab.http.get("/api/lots/LOT-42", headers=ANA)
    assert response.status_code == 200
    lot = response.json()
    assert lot["total_wafers"] == 3 and lot["class_counts"]["Edge-Ring"] == 3
    assert lot["dominant_pattern_name"] == "Edge-Ring" and lot["excursion"] is False


@pytest.mark.asyncio
async def test_alerts_are_listed_and_acknowledged_by_an_admin(fab: Fab) -> None:
    async with fab.sessions.begin() as session:
        row = AlertRow(
            kind="latency_p99",
            severity="critical",
            subject="edge-1",
            message="p99 52 ms > 50 ms",
            value=52.0,
            threshold=50.0,
            state="active",
            created_at=NOW - timedelta(minutes=3),
            updated_at=NOW,
        )
        session.add(row)
        await session.flush()
        alert_id = row.id
    [listed] = (await fab.http.get("/api/alerts", headers=ANA)).json()
    assert (listed["id"], listed["severity"], listed["state"]) == (alert_id, "critical", "active")
    assert (await fab.http.post(f"/api/alerts/{alert_id}/ack", headers=ANA)).status_code == 403
    acked = await fab.http.post(f"/api/alerts/{alert_id}/ack", headers=BOSS)
    assert acked.status_code == 200
    assert (acked.json()["state"], acked.json()["acknowledged_by"]) == ("acknowledged", "boss")
    active = await fab.http.get("/api/alerts", params={"state": "active"}, headers=ANA)
    assert active.json() == []


@pytest.mark.asyncio
async def test_metrics_count_the_queue_at_scrape_time(fab: Fab) -> None:
    await _seed(fab, [0.1, 0.2, 0.3])
    await fab.http.post("/api/review/claim", headers=ANA)
    response = await fab.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'fab_review_queue_depth{state="open"} 2.0' in response.text
    assert 'fab_review_queue_depth{state="claimed"} 1.0' in response.text


@pytest.mark.asyncio
async def test_healthz_is_ok_on_a_migrated_database(fab: Fab) -> None:
    response = await fab.http.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["revision"] == body["expected_revision"]


@pytest.mark.asyncio
async def test_healthz_is_503_when_not_migrated(fab_settings: FabSettings, harness: Any) -> None:
    schema = f"fab_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(harness.postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    engine = make_async_engine(fab_settings.database_url, schema)
    try:
        app = create_app(fab_settings, session_factory(engine))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://fab"
        ) as http:
            response = await http.get("/healthz")
        assert response.status_code == 503
        assert response.json()["database"] == "not migrated"
        assert response.json()["revision"] is None
    finally:
        await engine.dispose()
        with psycopg.connect(harness.postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.mark.asyncio
async def test_an_unreachable_database_is_503_not_500(fab_settings: FabSettings) -> None:
    # Port 1 on localhost refuses connections at once.
    url = "postgresql+psycopg://postgres@127.0.0.1:1/test"
    settings = fab_settings.model_copy(update={"database_url": url, "api_tokens": TOKENS})
    engine = make_async_engine(url)
    try:
        app = create_app(settings, session_factory(engine))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://fab"
        ) as http:
            health = await http.get("/healthz")
            assert health.status_code == 503 and health.json()["database"] == "unreachable"
            listing = await http.get("/api/review/items", headers=ANA)
            assert listing.status_code == 503 and listing.headers["retry-after"] == "5"
            metrics = await http.get("/metrics")
            assert metrics.status_code == 200
            assert "fab_review_queue_depth{" not in metrics.text
    finally:
        await engine.dispose()
