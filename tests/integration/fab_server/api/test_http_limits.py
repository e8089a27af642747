"""The fab server's HTTP API against slow, anonymous and oversized requests; its error shape and
its docs.

A real fab server (PostgreSQL, uvicorn with the deadline protocol) on a loopback port, with
deadlines of a second, talked to over raw sockets where a client must misbehave.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import async_sessionmaker

from fab_server.api import create_app
from fab_server.app import FabServer
from fab_server.db import make_async_engine, session_factory
from fab_server.settings import ApiToken, FabSettings

pytestmark = pytest.mark.integration

HEADER_S = 1.0
BODY_S = 1.5
CLOSED_WITHIN_S = 20.0
"""A stalled connection must be closed well before this (the tester saw 45 s and more)."""
UntilClosed = Callable[[int, bytes], Awaitable[tuple[float, bytes]]]
ENGINEER = "limits-engineer-token-0001"
ADMIN = "limits-admin-token-00000002"
TOKENS = [
    ApiToken(token=ENGINEER, user="ana", role="engineer"),
    ApiToken(token=ADMIN, user="boss", role="admin"),
]
HUNDRED_MB = 100 * 1024 * 1024
STALLED = {
    "nothing": b"",
    "half the headers": b"GET /api/alerts HTTP/1.1\r\nHost: fab\r\nAuthori",
    "half the body": (
        f"POST /api/review/flag HTTP/1.1\r\nHost: fab\r\nAuthorization: Bearer {ENGINEER}\r\n"
        "Content-Type: application/json\r\nContent-Length: 300\r\n\r\n"
        '{"idempotency_key": "k1", '
    ).encode(),
}


@pytest_asyncio.fixture
async def fab(fab_settings: FabSettings) -> AsyncIterator[FabServer]:
    settings = fab_settings.model_copy(
        update={
            "api_tokens": TOKENS,
            "http_header_timeout_s": HEADER_S,
            "http_body_timeout_s": BODY_S,
        }
    )
    server = await FabServer(settings).start()
    try:
        yield server
    finally:
        await server.stop()


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes, dict[str, Any]]:
    """(status, head, JSON body) of one response on a raw connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSED_WITHIN_S)
    length = re.search(rb"content-length: (\d+)", head.lower())
    assert length is not None, head
    body = await asyncio.wait_for(reader.readexactly(int(length.group(1))), CLOSED_WITHIN_S)
    return int(head.split(b" ", 2)[1]), head.lower(), json.loads(body)


def _problem(body: dict[str, Any]) -> dict[str, Any]:
    """The one problem of an error body in the common shape."""
    [problem] = body["detail"]
    assert set(problem) == {"type", "loc", "msg"}
    return problem


@pytest.mark.asyncio
@pytest.mark.parametrize("stalled", list(STALLED), ids=list(STALLED))
async def test_a_stalled_connection_gets_a_408_and_is_closed(
    fab: FabServer, stalled: str, until_closed: UntilClosed
) -> None:
    outcomes = await asyncio.gather(
        *(until_closed(fab.http_port, STALLED[stalled]) for _ in range(10))
    )
    timeout = BODY_S if stalled == "half the body" else HEADER_S
    for elapsed, received in outcomes:
        assert timeout * 0.9 <= elapsed < CLOSED_WITHIN_S
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408")
        problem = _problem(json.loads(body))
        assert problem["type"] == "request_timeout"
        assert problem["loc"] == ["body" if stalled == "half the body" else "headers"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("authorization", "status", "kind"),
    [
        (None, 401, "unauthorized"),
        ("Bearer not-a-known-token-at-all", 401, "unauthorized"),
        (f"Bearer {ENGINEER}", 413, "content_too_large"),
    ],
)
async def test_a_100_mb_body_is_refused_before_it_is_sent(
    fab: FabServer, authorization: str | None, status: int, kind: str
) -> None:
    """Only the headers and a few bytes go out: the answer comes without the body being read."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", fab.http_port)
    try:
        auth = f"Authorization: {authorization}\r\n" if authorization else ""
        writer.write(
            f"POST /api/review/flag HTTP/1.1\r\nHost: fab\r\n{auth}"
            f"Content-Type: application/json\r\nContent-Length: {HUNDRED_MB}\r\n\r\n"
            '{"idempotency_key": "'.encode()
        )
        await writer.drain()
        code, head, body = await _response(reader)
        assert code == status
        assert _problem(body)["type"] == kind
        if status == 401:
            assert b"www-authenticate: bearer" in head
        # The rest of the body never comes: the body deadline closes the connection.
        started = loop.time()
        assert await asyncio.wait_for(reader.read(), CLOSED_WITHIN_S) == b""
        assert loop.time() - started < CLOSED_WITHIN_S
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_every_error_has_the_common_shape_and_is_documented(fab: FabServer) -> None:
    engineer = {"Authorization": f"Bearer {ENGINEER}"}
    flag = {"idempotency_key": "k-1", "node_id": "edge-1", "sequence": 1, "wafer_id": "W1"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{fab.http_port}") as http:
        assert (await http.post("/api/review/flag", json=flag, headers=engineer)).is_success
        answers = {
            401: await http.get("/api/alerts", headers={"Authorization": "Basic x"}),
            403: await http.post("/api/alerts/1/ack", headers=engineer),
            404: await http.get("/api/lots/LOT-NONE", headers=engineer),
            405: await http.delete("/api/lots/LOT-1", headers=engineer),
            409: await http.post(
                "/api/review/flag", json={**flag, "wafer_id": "W2"}, headers=engineer
            ),
            422: await http.get("/api/alerts", params={"limit": 0}, headers=engineer),
        }
        schema = (await http.get("/openapi.json")).json()
    for code, answer in answers.items():
        assert answer.status_code == code, answer.text
        assert answer.headers["content-type"] == "application/json"
        problems = answer.json()["detail"]
        assert problems and all(set(p) == {"type", "loc", "msg"} for p in problems)
    assert answers[404].json()["detail"][0]["loc"] == ["path"]
    assert "already used" in answers[409].json()["detail"][0]["msg"]
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    # No operation falls back to FastAPI's own validation error model (a second shape).
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    operations = [(p, m, op) for p, ops in schema["paths"].items() for m, op in ops.items()]
    for path, method, op in operations:
        if not path.startswith("/api/"):
            continue
        documented = set(op["responses"])
        assert {"401", "422", "503"} <= documented, (method, path)
        assert ("403" in documented) == ("/admin/" in path or path.endswith("/ack"))
        assert ("413" in documented) == ("requestBody" in op), (method, path)
        for code in documented - {"200", "204"}:
            assert op["responses"][code]["content"]["application/json"]["schema"] == ref


@pytest.mark.asyncio
async def test_a_database_that_does_not_answer_is_503_in_the_common_shape(
    fab_settings: FabSettings,
) -> None:
    # Nothing listens on port 1: every session fails to connect.
    engine = make_async_engine("postgresql+psycopg://postgres@127.0.0.1:1/test")
    settings = fab_settings.model_copy(update={"api_tokens": TOKENS})
    app = create_app(settings, session_factory(engine))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://fab") as http:
        answer = await http.get("/api/alerts", headers={"Authorization": f"Bearer {ENGINEER}"})
    await engine.dispose()
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    assert _problem(answer.json())["type"] == "database_unavailable"


@pytest.mark.asyncio
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_load_only_this_servers_files_without_a_token(page: str) -> None:
    app = create_app(FabSettings(api_tokens=TOKENS), async_sessionmaker())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://fab") as http:
        html = await http.get(page)
        assert html.status_code == 200
        found = re.findall(r'(?:src|href|spec-url)="([^"]*)"|url: \'([^\']*)\'', html.text)
        urls = [a or b for a, b in found]
        assert urls, "the page references no assets"
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), url
            assert (await http.get(url)).status_code == 200, url
        policy = html.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "http" not in policy and "*" not in policy
