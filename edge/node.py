"""The edge node process: model store, outbox, metrics, the HTTP API and, with a fab, the uplink,
the metrics push and the OTA agent.

``EdgeNode`` owns every part's lifetime, so the CLI, the one-machine launcher and the tests all
start the same thing. The HTTP socket is bound here, so port 0 resolves before `start` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import grpc  # type: ignore[import-untyped]
import uvicorn

from edge.app import create_app
from edge.classify import ClassifyService
from edge.fab_client import open_channel
from edge.metrics import EdgeMetrics
from edge.metrics_push import MetricsPusher
from edge.model_store import ModelStore
from edge.ota import OtaAgent
from edge.outbox import Outbox, clock_first_id
from edge.settings import EdgeSettings
from edge.uplink import Uplink
from wafercore.web import deadline_protocol

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
"""How long each part may take to finish its work on stop."""


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handlers: whoever runs the node decides when it stops.

    (uvicorn's handlers would stop only the HTTP server, then re-raise the signal.)
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class EdgeNode:
    """A running edge node; start with `start` (once), stop with `stop`.

    Args:
        settings: the node's settings (one object for the whole tier).

    Attributes:
        settings: as given.
        http_port: the bound HTTP port, after `start`.
        store: the model store, after `start`.
        outbox: the outbox, after `start`.
        metrics: the node's measurements, after `start`.
        uplink: the uplink to the fab, after `start` when ``fab_address`` is set.
    """

    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self.http_port = 0
        self.store: ModelStore | None = None
        self.outbox: Outbox | None = None
        self.metrics: EdgeMetrics | None = None
        self.uplink: Uplink | None = None
        self._channel: grpc.aio.Channel | None = None
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> EdgeNode:
        """Load and warm up the model, open the outbox, serve HTTP, connect to the fab.

        Raises:
            ModelLoadError: no model can be served.
            ValueError: bad TLS settings.
            OSError: the work directory or the HTTP port cannot be used.
        """
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "edge node %s: HTTP on %s:%d, model %s, fab %s",
            self.settings.node_id,
            self.settings.http_host,
            self.http_port,
            self.store.current.version if self.store else "?",
            self.settings.fab_address or "none",
        )
        return self

    async def _start(self) -> None:
        settings = self.settings
        settings.work_dir.mkdir(parents=True, exist_ok=True)
        # Loading and warming up the model takes a while: keep the event loop free.
        store = await asyncio.to_thread(
            ModelStore,
            settings.models_root,
            default_model=settings.default_model_dir,
            threads=settings.runtime_threads,
            warmup=settings.warmup_predictions,
        )
        self.store = store
        outbox = Outbox(
            settings.outbox_path,
            max_bytes=settings.outbox_max_bytes,
            sync=settings.outbox_sync,
            first_id=clock_first_id(),
            request_retention_s=settings.idempotency_retention_s,
        )
        self.outbox = outbox
        metrics = EdgeMetrics(
            model_version=lambda: store.current.version, outbox_depth=outbox.depth
        )
        self.metrics = metrics
        if settings.fab_address:
            self._channel = open_channel(settings)
            uplink = Uplink(settings, outbox, self._channel, registry=metrics.registry)
            self.uplink = uplink
            pusher = MetricsPusher(settings, metrics, outbox, self._channel)
            ota = OtaAgent(settings, store, self._channel, registry=metrics.registry)
            for part in (uplink, pusher, ota):
                name = type(part).__name__
                self._tasks.append(asyncio.create_task(part.run(self._stop), name=name))
        service = ClassifyService(
            store=store,
            outbox=outbox,
            metrics=metrics,
            review_threshold=settings.review_threshold,
            max_batch=settings.max_batch,
        )
        app = create_app(
            settings=settings,
            service=service,
            store=store,
            outbox=outbox,
            metrics=metrics,
            uplink_connected=self._uplink_connected,
        )
        # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only
        # when the socket says it is TCP. Without it uvicorn's separate header and body writes
        # meet Nagle and the client's delayed ACK: 40 ms added to every response.
        family = socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((settings.http_host, settings.http_port))
        except OSError:
            sock.close()
            raise
        self.http_port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            # httptools with deadlines: slow or silent clients cannot hold connections open.
            http=deadline_protocol(
                header_timeout_s=settings.http_header_timeout_s,
                body_timeout_s=settings.http_body_timeout_s,
            ),
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
        self._http = _EmbeddedServer(config)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]))
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()  # raises what stopped it
                raise OSError(f"HTTP server on port {self.http_port} stopped while starting")
            await asyncio.sleep(0.01)

    def _uplink_connected(self) -> bool | None:
        return None if self.uplink is None else self.uplink.status.connected

    async def stop(self) -> None:
        """Stop taking requests, let the uplink deliver what it can, close the outbox.

        Safe to call more than once and after a failed `start`.
        """
        if self._http is not None:
            self._http.should_exit = True
        if self._http_task is not None:
            await _finish(self._http_task, "HTTP server")
        self._http = self._http_task = None
        self._stop.set()
        for task in self._tasks:
            await _finish(task, task.get_name())
        self._tasks.clear()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        if self.outbox is not None:
            self.outbox.close()

    async def run_until(self, stop: asyncio.Event) -> None:
        """Start, serve until ``stop`` is set, then stop cleanly."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()


async def _finish(task: asyncio.Task[None], name: str) -> None:
    """Wait for a part to end (cancelled after the grace period); log what it raised."""
    try:
        await asyncio.wait_for(task, STOP_GRACE_S)
    except TimeoutError:
        log.warning("%s did not stop within %.0f s; cancelled", name, STOP_GRACE_S)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # stop() itself is being cancelled
    except Exception:
        log.exception("%s failed", name)
