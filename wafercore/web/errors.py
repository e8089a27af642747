"""One error shape for every error response of the edge's and the fab's HTTP APIs.

Every error response has FastAPI's validation shape, `ErrorResponse`
(``{"detail": [{"type", "loc", "msg"}]}``), so a client parses one format whatever went wrong;
``type`` says what kind of error it is (``not_found``, ``request_timeout``, ...), ``loc`` where
(``["body", "wafer_map[3][7]"]``; empty when nothing in the request is to blame).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from wafercore.errors import InvalidInput

MAX_REPORTED_ERRORS = 20
"""A 422 lists at most this many problems (a body can hold thousands)."""

KINDS: dict[int, str] = {
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
    body = error_body(msg, kind=kind or KINDS.get(status_code, "error"), loc=loc)
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


def install_error_handlers(app: FastAPI, *, on_error: Callable[[int], None] | None = None) -> None:
    """Make FastAPI's and Starlette's own errors (422, 404, 405, 413, ...) the common shape, and
    `wafercore.errors.InvalidInput` a 422 naming its field (an app may install its own instead).

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

    async def invalid_input(_: Request, exc: Exception) -> JSONResponse:
        # The shared validators' error (and every service error derived from it).
        assert isinstance(exc, InvalidInput)
        observe(status.HTTP_422_UNPROCESSABLE_CONTENT)
        return error_response(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            exc.reason,
            kind="invalid_argument",
            loc=[exc.field],
        )

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
    app.add_exception_handler(InvalidInput, invalid_input)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(Exception, unexpected)
