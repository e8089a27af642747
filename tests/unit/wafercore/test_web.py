"""The shared HTTP pieces on a small app of their own: error shape, body limit, local docs."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from wafercore.web import (
    BodyLimit,
    ErrorResponse,
    error_responses,
    install_error_handlers,
    mount_docs,
)

LIMIT = 1024


def _app(seen: list[int]) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, max_body_bytes=LIMIT)
    install_error_handlers(app, on_error=seen.append)
    mount_docs(app)

    @app.post("/echo", responses=error_responses((413, 422)))
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.post("/items")
    async def items(item: dict[str, int]) -> dict[str, int]:
        return item

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    return app


def _client(app: FastAPI) -> httpx.AsyncClient:
    # raise_app_exceptions=False: a bug's 500 is the response, as a real server sends it.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def _problems(answer: httpx.Response) -> list[dict[str, Any]]:
    """The problems of an error response, which must be exactly the common shape."""
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert ErrorResponse.model_validate(body).model_dump() == body
    return list(body["detail"])


@pytest.mark.asyncio
async def test_the_body_limit_counts_bytes_with_and_without_a_content_length() -> None:
    seen: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(LIMIT // 100 + 1):
            yield b"x" * 100

    async with _client(_app(seen)) as http:
        assert (await http.post("/echo", content=b"x" * LIMIT)).json() == {"bytes": LIMIT}
        for content in (b"x" * (LIMIT + 1), chunks()):
            answer = await http.post("/echo", content=content)
            assert answer.status_code == 413
            [problem] = _problems(answer)
            assert problem == {
                "type": "content_too_large",
                "loc": ["body"],
                "msg": f"the body is larger than {LIMIT:,} bytes",
            }
    assert seen == [413, 413]


@pytest.mark.asyncio
async def test_every_error_is_the_common_shape() -> None:
    seen: list[int] = []
    async with _client(_app(seen)) as http:
        missing = await http.get("/nothing-here")
        wrong_method = await http.get("/echo")
        invalid = await http.post("/items", json={"a": "not a number", "b": "x" * 500})
        unparsable = await http.post(
            "/items", content=b"[" * 100, headers={"content-type": "application/json"}
        )
        bug = await http.get("/boom")
    assert missing.status_code == 404 and _problems(missing)[0]["type"] == "not_found"
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert _problems(wrong_method)[0]["type"] == "method_not_allowed"
    assert invalid.status_code == 422
    assert [p["loc"] for p in _problems(invalid)] == [["body", "a"], ["body", "b"]]
    assert "x" * 500 not in invalid.text  # the input is not echoed back
    assert unparsable.status_code == 422 and _problems(unparsable)[0]["loc"][0] == "body"
    assert bug.status_code == 500 and _problems(bug)[0]["type"] == "internal_error"
    assert seen == [404, 405, 422, 422, 500]


def test_documented_errors_use_the_common_model() -> None:
    schema = _app([]).openapi()
    responses = schema["paths"]["/echo"]["post"]["responses"]
    # Listing 422 replaces FastAPI's own HTTPValidationError (a second error shape).
    for code in ("413", "422"):
        assert responses[code]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
    assert responses["422"]["description"] == "A field is invalid; the body names it."


@pytest.mark.asyncio
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_pages_allow_only_their_own_scripts(page: str) -> None:
    async with _client(_app([])) as http:
        html = await http.get(page)
        policy = html.headers["content-security-policy"]
        scripts = re.findall(r"<script>(.*?)</script>", html.text, re.DOTALL)
        for script in scripts:  # Swagger UI's initialiser; ReDoc has none
            digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in policy
        sources = re.findall(r'src="([^"]+)"', html.text)
        assert sources and all(s.startswith("/docs/static/") for s in sources)
        for source in sources:
            asset = await http.get(source)
            assert asset.status_code == 200 and "javascript" in asset.headers["content-type"]
        assert (await http.get("/docs/static/no-such-file.js")).status_code == 404
