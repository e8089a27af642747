"""The edge node's HTTP server against slow and oversized requests, its error shape and its docs.

A real node (uvicorn with the deadline protocol, no fab) on a loopback port, with deadlines of a
second, talked to over raw sockets where a client must misbehave.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from edge.node import EdgeNode
from edge.settings import EdgeSettings

pytestmark = pytest.mark.integration

HEADER_S = 1.0
BODY_S = 1.5
CLOSED_WITHIN_S = 20.0
"""A stalled connection must be closed well before this (the tester saw 45 s and more)."""
UntilClosed = Callable[[int, bytes], Awaitable[tuple[float, bytes]]]
STALLED = {
    "nothing": b"",
    "half the headers": b"POST /classify HTTP/1.1\r\nHost: edge\r\nContent-Type: appl",
    "half the body": (
        b"POST /classify HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
        b"Content-Length: 400\r\n\r\n" + b'{"wafer_id": "W1", '
    ),
}


@pytest_asyncio.fixture
async def node(tmp_path: Path) -> AsyncIterator[EdgeNode]:
    settings = EdgeSettings(
        node_id="edge-limits",
        work_dir=tmp_path / "edge",
        http_port=0,
        outbox_sync="normal",
        warmup_predictions=0,
        http_header_timeout_s=HEADER_S,
        http_body_timeout_s=BODY_S,
    )
    started = await EdgeNode(settings).start()
    try:
        yield started
    finally:
        await started.stop()


def _error(raw: bytes) -> tuple[int, dict[str, Any]]:
    """(status, problem) of a raw response in the common error shape with one problem."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower()
    [problem] = json.loads(body)["detail"]
    assert set(problem) == {"type", "loc", "msg"}
    return status, problem


@pytest.mark.asyncio
@pytest.mark.parametrize("stalled", list(STALLED), ids=list(STALLED))
async def test_a_stalled_connection_gets_a_408_and_is_closed(
    node: EdgeNode, stalled: str, until_closed: UntilClosed
) -> None:
    # Ten at once, as an attacker would: each has its own deadline.
    outcomes = await asyncio.gather(
        *(until_closed(node.http_port, STALLED[stalled]) for _ in range(10))
    )
    timeout = BODY_S if stalled == "half the body" else HEADER_S
    for elapsed, received in outcomes:
        # The server waited for the request (timers may fire a hair early), then gave up.
        assert timeout * 0.9 <= elapsed < CLOSED_WITHIN_S
        status, problem = _error(received)
        assert status == 408 and problem["type"] == "request_timeout"
        assert problem["loc"] == ["body" if stalled == "half the body" else "headers"]


@pytest.mark.asyncio
async def test_the_next_request_on_a_kept_alive_connection_has_a_deadline_too(
    node: EdgeNode,
) -> None:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", node.http_port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSED_WITHIN_S)
        assert head.startswith(b"HTTP/1.1 200")
        length = re.search(rb"content-length: (\d+)", head.lower())
        assert length is not None
        await reader.readexactly(int(length.group(1)))
        started = loop.time()
        writer.write(b"GET /hea")  # a second request, trickled and abandoned
        await writer.drain()
        received = await asyncio.wait_for(reader.read(), CLOSED_WITHIN_S)
        assert loop.time() - started >= HEADER_S * 0.9
        assert _error(received)[0] == 408
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_a_body_over_the_limit_is_413_in_the_common_shape(node: EdgeNode) -> None:
    limit = node.settings.max_body_bytes
    big = b'{"wafer_id": "' + b"W" * limit + b'"}'

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        for content in (big, chunks()):  # with a Content-Length, then chunked (none)
            answer = await http.post("/classify", content=content, headers=headers)
            assert answer.status_code == 413
            assert answer.json() == {
                "detail": [
                    {
                        "type": "content_too_large",
                        "loc": ["body"],
                        "msg": f"the body is larger than {limit:,} bytes",
                    }
                ]
            }
        # The connection was not left in a bad state: the next request is served.
        assert (await http.get("/healthz")).status_code == 200
    assert node.outbox is not None and node.outbox.depth() == 0


@pytest.mark.asyncio
async def test_every_error_has_the_common_shape_and_is_documented(node: EdgeNode) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        answers = {
            404: await http.get("/no-such-page"),
            405: await http.delete("/classify"),
            422: await http.post("/classify", json={"wafer_id": "W1"}),
        }
        schema = (await http.get("/openapi.json")).json()
    for code, answer in answers.items():
        assert answer.status_code == code
        assert answer.headers["content-type"] == "application/json"
        problems = answer.json()["detail"]
        assert problems and all(set(p) == {"type", "loc", "msg"} for p in problems)
    assert answers[422].json()["detail"][0]["loc"] == ["body", "lot_id"]
    # No operation falls back to FastAPI's own validation error model (a second shape).
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for path in ("/classify", "/classify/batch", "/classify/g85"):
        responses = schema["paths"][path]["post"]["responses"]
        for code in ("408", "413", "422", "503"):
            content = responses[code]["content"]["application/json"]["schema"]
            assert content == {"$ref": "#/components/schemas/ErrorResponse"}, (path, code)


@pytest.mark.asyncio
async def test_model_does_not_reveal_where_the_model_is_stored(node: EdgeNode) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        model = (await http.get("/model")).json()
    assert model["version"] and "path" not in model
    assert str(node.settings.work_dir) not in json.dumps(model)


@pytest.mark.asyncio
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_load_only_this_servers_files(node: EdgeNode, page: str) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        html = await http.get(page)
        assert html.status_code == 200
        urls = re.findall(r'(?:src|href|spec-url)="([^"]*)"|url: \'([^\']*)\'', html.text)
        local = [a or b for a, b in urls]
        assert local, "the page references no assets"
        for url in local:
            # A path on this server: no scheme, no host (not even //host/...).
            assert url.startswith("/") and not url.startswith("//"), url
            asset = await http.get(url)
            assert asset.status_code == 200, url
        policy = html.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        script_sources = directives["script-src"].split()
        assert script_sources[0] == "'self'"
        assert all(s.startswith("'sha256-") for s in script_sources[1:])
        assert "http" not in policy and "*" not in policy
