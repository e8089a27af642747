"""The cloud part of the one-machine demo: registry, API and worker, and one short retraining job.

A real `mlflow server` (SQLite store, local artifact folder) holds the registry; the shipped
models are imported, the default one as ``champion``. The REST API runs in this process; the
pipeline's steps run in a real `wafer-cloud worker` process on Celery when the local Redis
answers, else in Celery's eager mode inside the API (the demo says which). An ML engineer's
token triggers the tiny config over HTTP and the demo follows the job step by step to the
gate's verdict and the registered candidate, as `wafer-cloud train --remote` would.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cloud.api.server import ApiServer
from cloud.pipeline.synthetic_data import write_tiny_dataset
from cloud.registry.importer import import_shipped
from cloud.registry.registry import ModelRegistry
from cloud.registry.server import start_server, wait_healthy
from cloud.services.tokens import add_token
from cloud.settings import CloudSettings, GateSettings
from cloud.storage.db import Database, migrate

DEMO_CONFIG = "tiny"
MLFLOW_START_S = 180.0
JOB_TIMEOUT_S = 600.0
FINISHED = ("succeeded", "rejected", "failed", "cancelled")
# The tiny model (seconds of training on synthetic wafers) is no match for the champion: the
# demo relaxes the gate so that the whole path to a registered candidate shows, and says so.
DEMO_GATE = GateSettings(min_macro_f1_gain=-1.0, min_accuracy=0.0, min_class_f1=0.0)


@dataclass
class CloudDemoOutcome:
    """What the cloud demo did, for the CLI to print and tests to check."""

    mode: str
    champion: str
    job: dict[str, Any]
    steps: list[dict[str, Any]]
    models: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def demo_settings(root: Path, broker: str) -> CloudSettings:
    """Settings of the demo's cloud tier under ``root`` (eager when Redis does not answer)."""
    return CloudSettings(
        work_dir=root,
        data_dir=root / "data",
        database_url=None,
        mlflow_tracking_uri=f"http://127.0.0.1:{_free_port()}",
        broker_url=broker,
        result_backend=broker,
        task_queue=f"wafer-cloud-demo-{secrets.token_hex(4)}",
        task_always_eager=not _redis_answers(broker),
        api_port=0,
        gate=DEMO_GATE,
    )


def _start_worker(settings: CloudSettings, log: Path) -> subprocess.Popen[bytes]:
    wafer_cloud = shutil.which("wafer-cloud", path=str(Path(sys.executable).parent))
    command = [wafer_cloud] if wafer_cloud else [sys.executable, "-m", "cloud.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUD_", "WAFER_DATA"))}
    with log.open("wb") as out:
        return subprocess.Popen(
            [*command, "worker"], env={**env, **settings.environment()}, stdout=out, stderr=out
        )


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def _follow(
    http: httpx.AsyncClient, job_id: str, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Poll the job until it finishes, reporting each step once it is done."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    reported: set[str] = set()
    while True:
        response = await http.get(f"/training/jobs/{job_id}")
        response.raise_for_status()
        detail: dict[str, Any] = response.json()
        for step in detail["steps"]:
            if step["state"] in ("done", "failed", "cancelled") and step["name"] not in reported:
                reported.add(step["name"])
                progress(f"  step {step['name']:<9} {step['state']}")
        if detail["job"]["state"] in FINISHED:
            return detail
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not finish within {JOB_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.2)


def _prepare(settings: CloudSettings) -> str:
    """Migrate the database, write the demo's data and import the shipped models."""
    migrate(settings.db_url, settings.db_schema)
    # 102 wafers a class: the data checks ask for at least 100 (settings.checks).
    write_tiny_dataset(settings.resolve_data(Path("tiny.npz")), train_per_class=90)
    db = Database(settings.db_url, settings.db_schema)
    try:
        registry = ModelRegistry(settings, db)
        import_shipped(registry, settings, golden=16)
        champion = registry.by_alias("champion")
        return champion.version if champion else "-"
    finally:
        db.dispose()


async def run_cloud_demo(
    work_dir: Path, broker_url: str, progress: Callable[[str], None]
) -> CloudDemoOutcome:
    """Start the cloud tier on fresh local state and run one tiny retraining job through it."""
    root = (work_dir / "cloud").resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    settings = demo_settings(root, broker_url)
    port = int(settings.mlflow_tracking_uri.rsplit(":", 1)[1])
    mlflow = start_server(settings, "127.0.0.1", port, log=root / "mlflow.log")
    worker: subprocess.Popen[bytes] | None = None
    api: ApiServer | None = None
    try:
        await asyncio.to_thread(wait_healthy, settings.mlflow_tracking_uri, MLFLOW_START_S, mlflow)
        champion = await asyncio.to_thread(_prepare, settings)
        progress(f"MLflow registry at {settings.mlflow_tracking_uri}: champion {champion}")
        if settings.task_always_eager:
            mode = "Celery eager mode (Redis did not answer): the steps run inside the API"
        else:
            worker = _start_worker(settings, root / "worker.log")
            mode = f"a Celery worker process on {settings.broker_url}"
        api = await ApiServer(settings).start()
        progress(f"cloud API at http://127.0.0.1:{api.port}; pipeline on {mode}")
        db = Database(settings.db_url, settings.db_schema)
        try:
            token = add_token(db, user="demo-ml-engineer", role="ml-engineer")
        finally:
            db.dispose()
        started = time.perf_counter()
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{api.port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=JOB_TIMEOUT_S,
        ) as http:
            response = await http.post(
                "/training/trigger",
                json={"config_name": DEMO_CONFIG, "reason": "demo: retrain on reviewed labels"},
            )
            response.raise_for_status()
            job_id = response.json()["job_id"]
            progress(f"POST /training/trigger {DEMO_CONFIG}: job {job_id}")
            detail = await _follow(http, job_id, progress)
            models = (await http.get("/models")).json()
        return CloudDemoOutcome(
            mode=mode,
            champion=champion,
            job=detail["job"],
            steps=detail["steps"],
            models=models,
            seconds=time.perf_counter() - started,
        )
    finally:
        if api is not None:
            await api.stop()
        _stop(worker)
        _stop(mlflow)
