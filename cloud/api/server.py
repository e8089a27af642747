"""The cloud API served by uvicorn, with request deadlines, in the foreground or embedded.

``wafer-cloud serve`` runs `serve_forever` (uvicorn's own signal handling: Ctrl-C and SIGTERM
stop it cleanly); tests and ``wafer-platform`` embed it with `ApiServer.start` and `stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import uvicorn

from cloud.api.app import BODY_TIMEOUT_S, HEADER_TIMEOUT_S, create_app
from cloud.settings import CloudSettings
from wafercore.web import deadline_protocol

STOP_GRACE_S = 10.0
"""In-flight requests get this long to finish when the server stops."""


def uvicorn_config(settings: CloudSettings, *, log_level: str = "info") -> uvicorn.Config:
    """uvicorn's configuration of the API: httptools with deadlines, the app's lifespan on."""
    return uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        # Slow or silent clients cannot hold connections open (wafercore.web.protocol).
        http=deadline_protocol(header_timeout_s=HEADER_TIMEOUT_S, body_timeout_s=BODY_TIMEOUT_S),
        # The lifespan migrates the database and opens the registry and the dispatcher.
        lifespan="on",
        log_level=log_level,
        timeout_graceful_shutdown=int(STOP_GRACE_S),
    )


def serve_forever(settings: CloudSettings) -> None:
    """Serve on ``settings.api_host:api_port`` until Ctrl-C or SIGTERM.

    Raises:
        RuntimeError: the app did not start (its database or registry is unreachable).
    """
    server = uvicorn.Server(uvicorn_config(settings))
    server.run()
    if not server.started:
        raise RuntimeError("the API did not start; see the log above")


class ApiServer:
    """The API embedded in a running event loop (port 0: the OS picks one, see `port`)."""

    def __init__(self, settings: CloudSettings) -> None:
        """Serve ``settings``' API once started."""
        self.settings = settings
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> ApiServer:
        """Bind, start the app (its lifespan) and return once it serves.

        Raises:
            RuntimeError: the app did not start, or the port cannot be bound.
        """
        # Bound here so port 0 resolves before start() returns. IPPROTO_TCP: asyncio sets
        # TCP_NODELAY only on sockets that say they are TCP (else ~40 ms per response).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.api_host, self.settings.api_port))
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn_config(self.settings, log_level="warning"))
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it, if anything did
                raise RuntimeError("the API did not start (its lifespan failed)")
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        """Stop accepting requests, let in-flight ones finish, close the app's resources."""
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, STOP_GRACE_S * 2)
            self._task = None
