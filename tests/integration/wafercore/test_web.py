"""The deadline protocol's edges on a real uvicorn server of a small app, over raw sockets.

What the edge's and the fab's tests do not reach: a slow response is never cut, pipelined
requests are answered, an idle connection after an early answer is still closed, and a request
the parser refuses gets the common error shape, and so do headers over the size limit (but
not a large body that arrives with them).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from wafercore.web import MAX_HEADER_BYTES, deadline_protocol, install_error_handlers

pytestmark = pytest.mark.integration

HEADER_S = 0.5
BODY_S = 0.5
SLOW_S = 1.5
"""A response slower than either deadline."""
KEEP_ALIVE_S = 1
WITHIN_S = 20.0


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/slow")
    async def slow() -> dict[str, bool]:
        await asyncio.sleep(SLOW_S)
        return {"slow": True}

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.post("/refuse")
    async def refuse() -> JSONResponse:
        # Answers without reading the body, as the fab's token gate does.
        return JSONResponse({"detail": []}, 401)

    return app


@pytest_asyncio.fixture
async def port() -> AsyncIterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        _app(),
        http=deadline_protocol(header_timeout_s=HEADER_S, body_timeout_s=BODY_S),
        timeout_keep_alive=KEEP_ALIVE_S,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done()
        await asyncio.sleep(0.01)
    yield sock.getsockname()[1]
    server.should_exit = True
    await task


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WITHIN_S)
    length = re.search(rb"content-length: (\d+)", head.lower())
    assert length is not None, head
    body = await asyncio.wait_for(reader.readexactly(int(length.group(1))), WITHIN_S)
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.asyncio
async def test_a_received_request_is_answered_however_long_it_takes(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # Two requests in one write (pipelined): each is received at once, answered later.
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n" * 2)
        await writer.drain()
        for _ in range(2):
            assert await _response(reader) == (200, b'{"slow":true}')
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_a_connection_idle_after_an_early_answer_is_still_closed(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /refuse HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nabc")
        await writer.drain()
        assert (await _response(reader))[0] == 401
        writer.write(b"def")  # the body completes after the answer, then nothing
        await writer.drain()
        # uvicorn's keep-alive timeout, armed at the answer, was cancelled by the late body
        # bytes; without re-arming it the connection would stay open for good.
        assert await asyncio.wait_for(reader.read(), WITHIN_S) == b""
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_a_request_the_parser_refuses_is_400_in_the_common_shape(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"\x00\x01 not http\r\n\r\n")
        await writer.drain()
        status, body = await _response(reader)
        assert status == 400
        [problem] = json.loads(body)["detail"]
        assert problem["type"] == "invalid_request" and problem["loc"] == []
        assert await asyncio.wait_for(reader.read(), WITHIN_S) == b""
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_headers_over_the_limit_are_431_but_a_large_body_is_not_counted(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        body = b"x" * (4 * MAX_HEADER_BYTES)  # arrives in the same reads as the headers
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body))
        writer.write(body)
        await writer.drain()
        assert await _response(reader) == (200, b'{"bytes":%d}' % len(body))
        # Then a header that never ends, well within the header deadline.
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\nX-Filler: " + b"a" * MAX_HEADER_BYTES)
        await writer.drain()
        status, answer = await _response(reader)
        assert status == 431
        [problem] = json.loads(answer)["detail"]
        assert problem["type"] == "headers_too_large" and problem["loc"] == ["headers"]
        assert await asyncio.wait_for(reader.read(), WITHIN_S) == b""
    finally:
        writer.close()
