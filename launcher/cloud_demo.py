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
from cloud.settings import CloudSettings, DriftSettings, GateSettings, RolloutSettings
from cloud.storage.db import Database, migrate
from launcher import loop_demo

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
    drift: dict[str, Any] | None = None
    rollout: dict[str, Any] | None = None


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
    api_port = _free_port()
    return CloudSettings(
        work_dir=root,
        data_dir=root / "data",
        database_url=None,
        mlflow_tracking_uri=f"http://127.0.0.1:{_free_port()}",
        broker_url=broker,
        result_backend=broker,
        task_queue=f"wafer-cloud-demo-{secrets.token_hex(4)}",
        task_always_eager=not _redis_answers(broker),
        api_port=api_port,
        api_url=f"http://127.0.0.1:{api_port}",
        sync_port=_free_port(),
        gate=DEMO_GATE,
        # The demo streams a few hundred wafers, and a drift job retrains the tiny config.
        drift=DriftSettings(min_wafers=50, retrain_config=DEMO_CONFIG),
        # A trial window of seconds, so that the demo shows the canary's decision.
        rollouts=RolloutSettings(trial_window_s=3.0),
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
    work_dir: Path,
    broker_url: str,
    progress: Callable[[str], None],
    *,
    fab_db: Path | None = None,
) -> CloudDemoOutcome:
    """Start the cloud tier on fresh local state and run one tiny retraining job through it.

    With ``fab_db`` (the fab the demo filled), the loop closes around the job: the fab syncs,
    a drift report starts the job (or, with a stable mix, an ML engineer does), and the
    candidate goes through a canary rollout to its decision (`launcher.loop_demo`).
    """
    # Under the demo's own folder: ``work_dir/cloud`` is the cloud tier's own default work dir
    # (runs, checkpoints, pseudo-labels, its registry), which a demo must never wipe.
    root = (work_dir / "demo" / "cloud").resolve()
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
        progress(
            f"cloud API at {settings.api_url}, CloudSync on port {settings.sync_port}; "
            f"pipeline on {mode}"
        )
        outcome = await _drive(settings, _issue_tokens(settings), root, fab_db, progress)
        outcome.mode, outcome.champion = mode, champion
        return outcome
    finally:
        if api is not None:
            await api.stop()
        _stop(worker)
        _stop(mlflow)


def _issue_tokens(settings: CloudSettings) -> dict[str, str]:
    db = Database(settings.db_url, settings.db_schema)
    try:
        return {
            "ml-engineer": add_token(db, user="demo-ml-engineer", role="ml-engineer"),
            "admin": add_token(db, user="demo-admin", role="admin"),
            "fab": add_token(db, user=loop_demo.DEMO_FAB, role="fab"),
        }
    finally:
        db.dispose()


def _client(settings: CloudSettings, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=settings.api_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=JOB_TIMEOUT_S,
    )


async def _drive(
    settings: CloudSettings,
    tokens: dict[str, str],
    root: Path,
    fab_db: Path | None,
    progress: Callable[[str], None],
) -> CloudDemoOutcome:
    """Sync and drift (with a fab), the retraining job, then the canary (with a fab)."""
    link = loop_demo.open_fab(fab_db, settings, tokens["fab"]) if fab_db else None
    outcome = CloudDemoOutcome(mode="", champion="", job={}, steps=[])
    try:
        async with _client(settings, tokens["ml-engineer"]) as http:
            job_id = None
            if link is not None:
                outcome.drift = await loop_demo.sync_and_drift(link, http, root, progress)
                job_id = next(iter(outcome.drift["job_ids"]), None)
            started = time.perf_counter()
            if job_id is None:
                job_id = await _trigger(http, progress)
            detail = await _follow(http, job_id, progress)
            outcome.seconds = time.perf_counter() - started
            outcome.job, outcome.steps = detail["job"], detail["steps"]
            progress(job_line(outcome.job, outcome.seconds))
            version = outcome.job.get("model_version")
            if link is not None and outcome.job["state"] == "succeeded" and version:
                async with _client(settings, tokens["admin"]) as admin:
                    outcome.rollout = await loop_demo.canary_decision(
                        admin, settings, link, version, progress
                    )
            outcome.models = (await http.get("/models")).json()
    finally:
        if link is not None:
            await link.close()
    return outcome


def job_line(job: dict[str, Any], seconds: float) -> str:
    """A finished job and the gate's verdict, in one line."""
    verdict = (job.get("verdict") or {}).get("summary", job.get("error"))
    return f"job {job['id']} {job['state']} in {seconds:.1f} s: {verdict}"


async def _trigger(http: httpx.AsyncClient, progress: Callable[[str], None]) -> str:
    response = await http.post(
        "/training/trigger",
        json={"config_name": DEMO_CONFIG, "reason": "demo: retrain on reviewed labels"},
    )
    response.raise_for_status()
    job_id = str(response.json()["job_id"])
    progress(f"POST /training/trigger {DEMO_CONFIG}: job {job_id}")
    return job_id
