"""The fab server process: gRPC FabService, the HTTP API and the alert loop on one database.

``FabServer`` owns the engine and the three parts' lifetimes, so a test, the CLI and the
one-machine launcher all start the same thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from dataclasses import dataclass, field

import grpc  # type: ignore[import-untyped]
import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from fab_server.api.app import create_app
from fab_server.db import current_revision_sync, head_revision, make_async_engine, session_factory
from fab_server.rpc.server import start_grpc_server
from fab_server.services.alerts import run_alert_loop
from fab_server.services.classify import Classifier
from fab_server.settings import FabSettings
from fab_server.sync.agent import run_sync_loop
from wafercore.runtime import ModelRuntime
from wafercore.web import deadline_protocol

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0


class NotMigrated(RuntimeError):  # noqa: N818 (reads as the condition it reports)
    """The database is not at this code's migration head (run ``wafer-fab migrate``)."""


@dataclass
class FabServer:
    """A running fab server; start with :meth:`start`, stop with :meth:`stop`."""

    settings: FabSettings
    runtime: ModelRuntime | None = None
    engine: AsyncEngine | None = None
    sessions: async_sessionmaker[AsyncSession] | None = None
    grpc_port: int = 0
    http_port: int = 0
    _grpc: grpc.aio.Server | None = None
    _http: uvicorn.Server | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop_alerts: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> FabServer:
        """Check the schema, then serve gRPC, HTTP and run the alert loop.

        Raises:
            NotMigrated: the database is behind (or ahead of) this code's migrations.
            ValueError: bad TLS settings.
            RuntimeError: a port cannot be bound.
        """
        self.engine = make_async_engine(self.settings.database_url, self.settings.db_schema)
        self.sessions = session_factory(self.engine)
        async with self.engine.connect() as conn:
            revision = await conn.run_sync(current_revision_sync)
        if revision != head_revision():
            await self.engine.dispose()
            raise NotMigrated(
                f"database at revision {revision}, code at {head_revision()}: "
                "run `wafer-fab migrate` first"
            )
        # One model for ClassifyBatch and the heatmaps of the HTTP API, loaded once.
        classifier = Classifier(self.settings.model_dir, self.runtime)
        self._grpc, self.grpc_port = await start_grpc_server(
            self.settings, self.sessions, classifier
        )
        # Bind the HTTP socket here, so port 0 resolves before start() returns. IPPROTO_TCP, not
        # 0: asyncio sets TCP_NODELAY only on sockets that say so, and without it every
        # response waits ~40 ms (Nagle against delayed ACK).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.http_host, self.settings.http_port))
        self.http_port = sock.getsockname()[1]
        app = create_app(self.settings, self.sessions, classifier)
        config = uvicorn.Config(
            app,
            # httptools with deadlines: slow or silent clients cannot hold connections open.
            http=deadline_protocol(
                header_timeout_s=self.settings.http_header_timeout_s,
                body_timeout_s=self.settings.http_body_timeout_s,
            ),
            log_level="warning",
            lifespan="off",
        )
        self._http = uvicorn.Server(config)
        self._tasks.append(asyncio.create_task(self._http.serve(sockets=[sock])))
        self._tasks.append(
            asyncio.create_task(run_alert_loop(self.sessions, self.settings, self._stop_alerts))
        )
        if self.settings.sync.enabled:
            self._tasks.append(
                asyncio.create_task(run_sync_loop(self.sessions, self.settings, self._stop_alerts))
            )
        while not self._http.started:
            if self._tasks[0].done():
                self._tasks[0].result()  # raises what stopped it
            await asyncio.sleep(0.01)
        log.info(
            "fab server: gRPC on %s:%d, HTTP on %s:%d",
            self.settings.grpc_host,
            self.grpc_port,
            self.settings.http_host,
            self.http_port,
        )
        return self

    async def stop(self) -> None:
        """Stop accepting work, let in-flight calls finish (up to a grace period), close."""
        self._stop_alerts.set()
        if self._http is not None:
            self._http.should_exit = True
        if self._grpc is not None:
            await self._grpc.stop(STOP_GRACE_S)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, STOP_GRACE_S * 2)
        self._tasks.clear()
        if self.engine is not None:
            await self.engine.dispose()

    async def serve_forever(self) -> None:
        """Run until SIGINT or SIGTERM (or cancelled), then stop cleanly: a container runtime
        or service manager stops the server with SIGTERM, a terminal with Ctrl-C."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self.stop()
