"""Request body limits counted on the bytes received (chunked bodies included)."""

from __future__ import annotations

from fastapi import HTTPException, status
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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
