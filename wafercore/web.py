"""What the edge node's and the fab server's HTTP APIs share: one error shape, deadlines for
receiving a request, a body limit, and API docs served from local files.

Only the edge and fab tiers import this module: it needs FastAPI, uvicorn and httptools, which
the cloud tier does not install.

Errors: every error response has FastAPI's validation shape, `ErrorResponse`
(``{"detail": [{"type", "loc", "msg"}]}``), so a client parses one format whatever went wrong;
``type`` says what kind of error it is (``not_found``, ``request_timeout``, ...), ``loc`` where
(``["body", "wafer_map[3][7]"]``; empty when nothing in the request is to blame).

Deadlines: uvicorn has none for receiving a request (``timeout_keep_alive`` covers the idle time
between requests only, and any byte resets it), and ASGI middleware runs only once the headers
are in, so a client that sends a request slowly, or nothing at all, holds a connection forever.
`deadline_protocol` makes uvicorn's httptools protocol enforce two deadlines: the headers must
be complete within ``header_timeout_s`` of the request's first byte (of the connection being
opened, for its first request), the body within ``body_timeout_s`` of the headers. A late
request gets a 408 (when no response is under way) and the connection is closed; so do headers
over `MAX_HEADER_BYTES`, with a 431.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from http import HTTPStatus
from importlib.resources import files
from pathlib import Path
from typing import Any, ClassVar, Literal

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 20
"""A 422 lists at most this many problems (a body can hold thousands)."""

MAX_HEADER_BYTES = 64 * 1024
"""Most bytes of a request line and headers: httptools, unlike h11, sets no limit at all."""

DOCS_STATIC_PATH = "/docs/static"
"""Where Swagger UI's and ReDoc's files are served."""

_KINDS: dict[int, str] = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    431: "headers_too_large",
    409: "conflict",
    413: "content_too_large",
    422: "invalid",
    500: "internal_error",
    503: "unavailable",
}
"""``type`` of an error that does not name its own, by status."""

_LOCS: dict[int, tuple[str, ...]] = {
    401: ("header", "authorization"),
    403: ("header", "authorization"),
    413: ("body",),
}
"""``loc`` of an error that does not name its own, by status."""

_DESCRIPTIONS: dict[int, str] = {
    401: "No valid bearer token.",
    403: "The token's role is too low for this operation.",
    404: "No such resource.",
    408: "The request was not received in time; the connection is closed.",
    409: "The resource's state does not allow this.",
    413: "The body is larger than the server accepts.",
    422: "A field is invalid; the body names it.",
    503: "The server cannot do this now; retry later (see Retry-After).",
}


class ErrorItem(BaseModel):
    """One problem with a request (FastAPI's validation error item, without the input)."""

    type: str = Field(description="What kind of problem: invalid, not_found, conflict, ...")
    loc: list[str | int] = Field(description="Where: [location, field, ...]; may be empty.")
    msg: str = Field(description="What is wrong, for a person.")


class ErrorResponse(BaseModel):
    """The body of every error response: the problems found, at least one."""

    detail: list[ErrorItem] = Field(min_length=1)


def error_body(msg: str, *, kind: str, loc: Sequence[str | int] = ()) -> dict[str, Any]:
    """An `ErrorResponse` body with one problem."""
    return {"detail": [{"type": kind, "loc": list(loc), "msg": msg}]}


def error_response(
    status_code: int,
    msg: str,
    *,
    kind: str | None = None,
    loc: Sequence[str | int] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """An error response in the common shape; ``kind`` defaults to the status's (404: not_found)."""
    body = error_body(msg, kind=kind or _KINDS.get(status_code, "error"), loc=loc)
    return JSONResponse(body, status_code, headers=dict(headers) if headers else None)


def error_responses(
    statuses: Iterable[int], descriptions: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` documenting ``statuses`` with the `ErrorResponse` model.

    Args:
        statuses: the error statuses an operation can return.
        descriptions: per status, a description other than the default one.
    """
    described = {**_DESCRIPTIONS, **(descriptions or {})}
    return {
        code: {"model": ErrorResponse, "description": described.get(code, HTTPStatus(code).phrase)}
        for code in statuses
    }


class BodyTooLarge(HTTPException):
    """A request body over the limit (declared or counted): a 413 in the common shape."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            status.HTTP_413_CONTENT_TOO_LARGE, f"the body is larger than {limit:,} bytes"
        )


class BodyLimit:
    """ASGI middleware: a body larger than ``max_body_bytes`` is a 413 when the app reads it.

    Counted on the bytes received, so a chunked body (no Content-Length) is stopped too; a
    larger Content-Length is refused before a byte of the body is read. The 413 is raised from
    ``receive``, so it reaches the app's exception handlers (and is counted there); a route that
    never reads the body answers as usual, and the server discards the body (within the body
    deadline of `deadline_protocol`).
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with a ``receive`` that counts the body."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _content_length(scope)
        received = 0

        async def limited() -> Message:
            nonlocal received
            if declared is not None and declared > limit:
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited, send)


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    # The HTTP parser already refused a malformed Content-Length; be safe anyway.
    return int(value) if value is not None and value.isdigit() else None


def install_error_handlers(app: FastAPI, *, on_error: Callable[[int], None] | None = None) -> None:
    """Make FastAPI's and Starlette's own errors (422, 404, 405, 413, ...) the common shape.

    Args:
        app: the app.
        on_error: called with the status of each error response these handlers make (metrics).
    """
    observe = on_error or (lambda _: None)

    async def validation_failed(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        observe(status.HTTP_422_UNPROCESSABLE_CONTENT)
        # Without "input": a bad 1 MB map must not come back in the response.
        detail = [
            {"type": e["type"], "loc": list(e["loc"]), "msg": e["msg"]}
            for e in exc.errors()[:MAX_REPORTED_ERRORS]
        ]
        return JSONResponse({"detail": detail}, status.HTTP_422_UNPROCESSABLE_CONTENT)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code, headers = exc.status_code, exc.headers
        if isinstance(exc.__cause__, ClientDisconnect):
            # The client is gone (or its body deadline closed the connection): nobody reads this.
            return Response(status_code=code)
        if code == status.HTTP_400_BAD_REQUEST:
            # FastAPI's answer to a body its JSON parser gave up on (nested too deep, not UTF-8).
            observe(status.HTTP_422_UNPROCESSABLE_CONTENT)
            return error_response(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                "cannot be parsed as JSON",
                kind="json_invalid",
                loc=["body", "body"],
            )
        observe(code)
        if isinstance(exc.detail, list):  # already the common shape
            return JSONResponse({"detail": exc.detail}, code, headers=headers)
        return error_response(code, str(exc.detail), loc=_LOCS.get(code, ()), headers=headers)

    async def client_gone(_: Request, exc: Exception) -> Response:
        # A route reading the body itself learns here that the client left (or that its body
        # deadline closed the connection); nobody is there to read an answer.
        return Response(status_code=status.HTTP_400_BAD_REQUEST)

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the exception and re-raises it after this response is sent.
        observe(status.HTTP_500_INTERNAL_SERVER_ERROR)
        return error_response(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal server error")

    app.add_exception_handler(RequestValidationError, validation_failed)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(Exception, unexpected)


def _docs_assets() -> Path:
    # fastapi-offline ships Swagger UI's and ReDoc's release files; only the files are used.
    return Path(str(files("fastapi_offline") / "static"))


_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _content_security_policy(page: bytes) -> str:
    """Scripts from this server only, plus the page's own inline scripts, by their hashes."""
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(page.decode())
    ]
    return "; ".join(
        [
            "default-src 'none'",
            " ".join(["script-src 'self'", *hashes]),
            # ReDoc builds its search index in a worker made from a blob of its own code.
            "worker-src 'self' blob:",
            # Both set styles from script (ReDoc through <style> elements it adds).
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "font-src 'self' data:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def _with_policy(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = _content_security_policy(bytes(page.body))
    return page


def mount_docs(app: FastAPI) -> None:
    """Serve Swagger UI at ``/docs`` and ReDoc at ``/redoc`` from this server's own files.

    The app must be made with ``docs_url=None, redoc_url=None`` (FastAPI's pages load their
    scripts from a CDN: a fab is often offline, and third-party code would run on its address).
    The pages carry a Content-Security-Policy that lets only this server's scripts run.
    """
    app.mount(DOCS_STATIC_PATH, StaticFiles(directory=_docs_assets()), name="docs-static")
    title = app.title
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_policy(
            get_swagger_ui_html(
                openapi_url=root + openapi_url,
                title=f"{title} - Swagger UI",
                swagger_js_url=f"{root}{DOCS_STATIC_PATH}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{DOCS_STATIC_PATH}/swagger-ui.css",
                swagger_favicon_url=f"{root}{DOCS_STATIC_PATH}/favicon.png",
                oauth2_redirect_url=None,
                swagger_ui_parameters=app.swagger_ui_parameters,
            )
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_policy(
            get_redoc_html(
                openapi_url=root + openapi_url,
                title=f"{title} - ReDoc",
                redoc_js_url=f"{root}{DOCS_STATIC_PATH}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{DOCS_STATIC_PATH}/favicon.png",
                with_google_fonts=False,
            )
        )


Phase = Literal["headers", "body"]


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines for receiving each request.

    A deadline is armed whenever part of a request may still be on its way: from the
    connection's opening (a client that sends nothing is closed too) or from the first byte
    after the previous request was received, ``header_timeout_s`` for the headers; from the end
    of the headers, ``body_timeout_s`` for the body. It is disarmed once the request is
    received, so a slow response is never cut, and on a protocol upgrade. Between requests
    uvicorn's ``timeout_keep_alive`` closes an idle connection.

    When a deadline passes, the client gets a 408 in the common error shape, unless a response
    is already under way on the connection, and the connection is closed. A deadline that
    passes while the server itself stopped reading (flow control: a pipelined request waits for
    the previous response, or the app has not taken the body so far) is extended: that delay
    is not the client's. A request line and headers over `MAX_HEADER_BYTES` get a 431, the same
    way.

    Use `deadline_protocol` for a class with the timeouts set; pass it as ``uvicorn.Config(
    http=...)``.
    """

    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """As uvicorn's protocol (uvicorn makes one per connection)."""
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: Phase = "headers"
        self._header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the header deadline: a connection must bring a request."""
        super().connection_made(transport)
        self._arm("headers")

    def data_received(self, data: bytes) -> None:
        """Bytes after a received request start the next request's header deadline."""
        if self._deadline is None:
            self._arm("headers")
        super().data_received(data)
        if self._deadline is not None and self._phase == "headers":
            # A read that leaves the headers incomplete is all headers (the httptools parser
            # keeps them, however many, until the end of the headers).
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._give_up(431, f"the request's headers exceed {MAX_HEADER_BYTES:,} bytes")

    def on_message_begin(self) -> None:
        """Parser callback: a request starts (also the next one in the same read)."""
        super().on_message_begin()
        if self._deadline is None:
            self._arm("headers")

    def on_headers_complete(self) -> None:
        """Parser callback: the headers are in; the body's deadline starts."""
        super().on_headers_complete()
        if self.parser.should_upgrade() and self._should_upgrade():
            return  # handle_websocket_upgrade follows; the deadline stays until then
        self._arm("body")

    def on_message_complete(self) -> None:
        """Parser callback: the request is received; no deadline until the next byte."""
        super().on_message_complete()
        self._disarm()
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and self.timeout_keep_alive_task is None:
            # Answered before its body was in (a 401 or 413): uvicorn armed the keep-alive
            # timeout at the response and every body byte since cancelled it. Re-arm it, or the
            # connection would stay open, idle, with no timeout at all.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def handle_websocket_upgrade(self) -> None:
        """The connection is another protocol's from here: no request deadline on it."""
        self._disarm()
        super().handle_websocket_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the deadline with the connection."""
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """A request the parser refuses: 400 in the common shape (uvicorn's is plain text)."""
        self._disarm()
        self._write_error(400, error_body(msg, kind=_KINDS[400]))
        self.transport.close()

    def _arm(self, phase: Phase) -> None:
        self._disarm()
        self._phase = phase
        self._header_bytes = 0
        timeout = self.header_timeout_s if phase == "headers" else self.body_timeout_s
        self._deadline = self.loop.call_later(timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            self._arm(self._phase)
            return
        timeout = self.header_timeout_s if self._phase == "headers" else self.body_timeout_s
        self._give_up(408, f"the request's {self._phase} did not arrive within {timeout:g} s")

    def _give_up(self, status_code: int, msg: str) -> None:
        """Answer ``status_code`` if no response is under way, and close the connection."""
        self._disarm()
        prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
        logger.warning("%sclosing the connection: %s", prefix, msg)
        if self._may_answer():
            kind = _KINDS[status_code]
            self._write_error(status_code, error_body(msg, kind=kind, loc=[self._phase]))
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app may still be waiting for the body: it gets http.disconnect now, and
            # whatever it sends later is dropped instead of following this answer.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def _may_answer(self) -> bool:
        """Whether an answer can be written without cutting into another response."""
        if self.pipeline:
            return False  # queued requests: an earlier one is being answered
        cycle = self.cycle
        if cycle is None:
            return True
        if self._phase == "headers":
            return cycle.response_complete  # the cycle is the previous request's
        return not cycle.response_started

    def _write_error(self, status_code: int, body: dict[str, Any]) -> None:
        content = json.dumps(body).encode()
        head = [f"HTTP/1.1 {status_code} {HTTPStatus(status_code).phrase}\r\n".encode()]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(content),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + content)


def deadline_protocol(
    *, header_timeout_s: float, body_timeout_s: float
) -> type[DeadlineHttpToolsProtocol]:
    """A `DeadlineHttpToolsProtocol` class with these timeouts, for ``uvicorn.Config(http=...)``.

    Args:
        header_timeout_s: a request's headers must be in within this long of its first byte
            (of the connection's opening, for the first request).
        body_timeout_s: its body must be in within this long of its headers.
    """

    class Configured(DeadlineHttpToolsProtocol):
        pass

    Configured.header_timeout_s = header_timeout_s
    Configured.body_timeout_s = body_timeout_s
    return Configured
