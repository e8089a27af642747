"""Deadlines for receiving a request, in uvicorn's httptools protocol.

uvicorn has none (``timeout_keep_alive`` covers the idle time between requests only, and any
byte resets it), and ASGI middleware runs only once the headers are in, so a client that sends
a request slowly, or nothing at all, holds a connection forever. `deadline_protocol` makes
uvicorn's httptools protocol enforce two deadlines: the headers must be complete within
``header_timeout_s`` of the request's first byte (of the connection being opened, for its first
request), the body within ``body_timeout_s`` of the headers. A late request gets a 408 (when no
response is under way) and the connection is closed; so do headers over `MAX_HEADER_BYTES`,
with a 431.
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Any, ClassVar, Literal

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from wafercore.web.errors import KINDS, error_body

logger = logging.getLogger(__name__)


MAX_HEADER_BYTES = 64 * 1024
"""Most bytes of a request line and headers: httptools, unlike h11, sets no limit at all."""

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
        self._write_error(400, error_body(msg, kind=KINDS[400]))
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
            kind = KINDS[status_code]
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
