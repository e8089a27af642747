"""Integration fixtures of the cloud tier: a real `mlflow server` (one per session), the cloud
database on its own migrated PostgreSQL schema per test, settings that point at both, and real
`wafer-cloud worker` / `beat` processes on those settings (synthetic WM-811K-format data for the
tiny config).

Each test gets its own registered model name and Celery queue, so tests sharing the server
and the Redis broker never see each other's versions or tasks. A worker's environment is built
from the test's `CloudSettings`, so the worker and the test see the same database, queue,
registry and folders.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cloud.pipeline.synthetic_data import TINY_FILE, write_tiny_dataset
from cloud.registry.server import start_server, wait_healthy
from cloud.settings import CloudSettings, DataChecks, GateSettings
from cloud.storage.db import Database, migrate

MLFLOW_START_S = 180.0
"""`mlflow server` takes ~15 s to start on an idle machine; far more on a loaded 2-core one."""


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _psycopg_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URI of a real `mlflow server` (SQLite store, local artifact root), for the session."""
    work = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    process = start_server(CloudSettings(work_dir=work), "127.0.0.1", port)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(uri, MLFLOW_START_S, process)
        yield uri
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except Exception:
            process.kill()
            process.wait()


@pytest.fixture
def cloud_schema(harness: Any) -> Iterator[str]:
    """A fresh, migrated cloud schema in the real test database, dropped afterwards."""
    schema = f"cloud_{uuid.uuid4().hex[:12]}"
    migrate(_psycopg_url(harness.postgres_url), schema=schema)
    yield schema
    with psycopg.connect(harness.postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def cloud_settings(
    harness: Any, cloud_schema: str, mlflow_uri: str, tmp_path: Path
) -> CloudSettings:
    """Settings of a cloud tier on PostgreSQL, the session's MLflow server and the local Redis,
    with a registered model and a Celery queue of its own."""
    tag = uuid.uuid4().hex[:8]
    return CloudSettings(
        work_dir=tmp_path / "cloud",
        database_url=_psycopg_url(harness.postgres_url),
        db_schema=cloud_schema,
        mlflow_tracking_uri=mlflow_uri,
        registered_model=f"wafer-classifier-{tag}",
        broker_url=harness.redis_url,
        result_backend=harness.redis_url,
        task_queue=f"wafer-cloud-test-{tag}",
        api_port=0,
        sync_port=0,
    )


WORKER_START_S = 120.0
"""A worker imports Celery and migrates before it consumes; slow on a loaded 2-core machine."""
JOB_DEADLINE_S = 240.0
WAFER_CLOUD = shutil.which("wafer-cloud", path=str(Path(sys.executable).parent)) or "wafer-cloud"
"""Longest a tiny job may take here (it takes ~20 s on an idle machine)."""


def wait_for(
    condition: Callable[[], Any], what: str, timeout_s: float = JOB_DEADLINE_S, every_s: float = 0.2
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


class CloudProcess:
    """A `wafer-cloud` subprocess (``worker``, ``beat``; its own process group), its output in
    a file."""

    def __init__(self, settings: CloudSettings, log_path: Path, command: str) -> None:
        self.log_path = log_path
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("CLOUD_", "WAFER_DATA_DIR"))
        }
        env.update(settings.environment())
        env["PYTHONUNBUFFERED"] = "1"
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [WAFER_CLOUD, command, "--loglevel", "INFO"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        """What the worker printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout_s: float = WORKER_START_S) -> None:
        """Return once the process printed ``text`` (fail if it exits first)."""

        def printed() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"process exited with {self.process.returncode}:\n{self.output()}")
            return text in self.output()

        wait_for(printed, f"{text!r} in {self.log_path.name}", timeout_s)

    def kill(self) -> None:
        """SIGKILL the process and its children at once: no chance to clean up."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL if it lingers)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


@pytest.fixture
def pipeline_settings(cloud_settings: CloudSettings, tmp_path: Path) -> CloudSettings:
    """The test's cloud settings for the tiny config: synthetic data, a gate the tiny model
    passes, data checks sized for it, fast heartbeats and a short lease."""
    data_dir = tmp_path / "data"
    write_tiny_dataset(data_dir / TINY_FILE)
    return cloud_settings.model_copy(
        update={
            "data_dir": data_dir,
            "torch_threads": 1,
            "heartbeat_s": 0.5,
            "stale_after_s": 4.0,
            "recover_every_s": 1.0,
            "step_retry_delay_s": 1.0,
            "gate": GateSettings(min_accuracy=0.0, min_class_f1=0.0),
            "checks": DataChecks(min_per_class=20),
        }
    )


@pytest.fixture
def database(pipeline_settings: CloudSettings) -> Iterator[Database]:
    """The test's cloud database."""
    db = Database(pipeline_settings.db_url, pipeline_settings.db_schema)
    yield db
    db.dispose()


@pytest.fixture
def start_cloud(tmp_path: Path) -> Iterator[Callable[[CloudSettings, str], CloudProcess]]:
    """Starts `wafer-cloud worker` (returned once it consumes) or `wafer-cloud beat` on given
    settings; all stopped at teardown."""
    started: list[CloudProcess] = []

    def start(settings: CloudSettings, command: str) -> CloudProcess:
        process = CloudProcess(settings, tmp_path / f"{command}-{len(started)}.log", command)
        started.append(process)
        if command == "worker":
            process.wait_for_output(" ready.")
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def start_worker(
    start_cloud: Callable[[CloudSettings, str], CloudProcess],
) -> Callable[[CloudSettings], CloudProcess]:
    """Starts a worker on given settings; returns once it consumes."""
    return lambda settings: start_cloud(settings, "worker")


@pytest.fixture
def wait() -> Callable[..., Any]:
    """`wait_for`, for the tests (conftest modules are not importable under importlib)."""
    return wait_for
