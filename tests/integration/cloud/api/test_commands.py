"""``wafer-cloud tokens add|list|revoke`` on PostgreSQL, and ``wafer-cloud serve`` as a real
process: it imports the shipped models on its first start and serves the API until SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
from click.testing import CliRunner, Result

from cloud.api.commands import EXIT_CODES, serve, tokens
from cloud.cli import main
from cloud.pipeline.synthetic_data import TINY_FILE, write_tiny_dataset
from cloud.registry.importer import shipped_folders
from cloud.services.tokens import add_token, authenticate
from cloud.services.training import cancel, list_jobs
from cloud.settings import CloudSettings, DataChecks, GateSettings
from cloud.storage.db import Database
from wafercore.shipped import DEFAULT_MODEL_VERSION

pytestmark = pytest.mark.integration

SERVE_START_S = 240.0
"""Migrating, importing six shipped models and starting, on a loaded 2-core machine."""
SERVE_STOP_S = 60.0
JOB_DEADLINE_S = 300.0
"""A tiny job from trigger to registered candidate (~20 s on an idle machine)."""


def run_tokens(settings: CloudSettings, *args: str) -> Result:
    """``wafer-cloud tokens ARGS`` with ``settings`` as the group's settings."""
    return CliRunner().invoke(tokens, list(args), obj=settings, catch_exceptions=False)


def test_the_commands_are_on_the_wafer_cloud_group() -> None:
    assert main.commands["serve"] is serve
    assert main.commands["tokens"] is tokens
    assert set(tokens.commands) == {"add", "list", "revoke"}


def test_a_token_is_printed_once_listed_without_itself_and_revoked(
    cloud_settings: CloudSettings, cloud_db: Database
) -> None:
    added = run_tokens(cloud_settings, "add", "--user", "eng-ana", "--role", "ml-engineer")
    assert added.exit_code == 0, added.output
    token = added.output.strip()
    assert authenticate(cloud_db, token) is not None
    assert authenticate(cloud_db, token).user == "eng-ana"  # type: ignore[union-attr]

    listed = run_tokens(cloud_settings, "list")
    assert listed.exit_code == 0, listed.output
    (line,) = [row for row in listed.output.splitlines() if "eng-ana" in row]
    assert "ml-engineer" in line and token not in listed.output
    token_id = line.split()[0]

    revoked = run_tokens(cloud_settings, "revoke", token_id)
    assert revoked.exit_code == 0, revoked.output
    assert "revoked" in revoked.output
    assert authenticate(cloud_db, token) is None
    assert "eng-ana" not in run_tokens(cloud_settings, "list").output
    assert "eng-ana" in run_tokens(cloud_settings, "list", "--all").output


def test_a_fab_sync_token_is_issued_to_the_fab_id(
    cloud_settings: CloudSettings, cloud_db: Database
) -> None:
    added = run_tokens(cloud_settings, "add", "--user", "fab-1", "--role", "fab")
    assert added.exit_code == 0, added.output
    holder = authenticate(cloud_db, added.output.strip())
    assert holder is not None and (holder.user, holder.role) == ("fab-1", "fab")


def test_bad_token_commands_say_what_is_wrong(cloud_settings: CloudSettings) -> None:
    role = run_tokens(cloud_settings, "add", "--user", "ana", "--role", "root")
    assert role.exit_code == 2 and "--role" in role.output
    user = run_tokens(cloud_settings, "add", "--user", " ", "--role", "viewer")
    assert user.exit_code == 2 and "--user" in user.output
    unknown = run_tokens(cloud_settings, "revoke", "4242")
    assert unknown.exit_code == 1 and "4242" in unknown.output


def _environment(settings: CloudSettings) -> dict[str, str]:
    """The settings as the ``CLOUD_*`` environment a deployed process gets."""
    names = (
        "work_dir", "database_url", "db_schema", "mlflow_tracking_uri", "registered_model",
        "broker_url", "result_backend", "task_queue", "api_host", "api_port",
    )  # fmt: skip
    return {f"CLOUD_{name.upper()}": str(getattr(settings, name)) for name in names}


def _wait_healthy(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + SERVE_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"wafer-cloud serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"wafer-cloud serve did not answer within {SERVE_START_S:.0f} s")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_serve_imports_the_shipped_models_and_serves_until_sigterm(
    cloud_settings: CloudSettings, cloud_db: Database, tmp_path: Path
) -> None:
    settings = cloud_settings.model_copy(update={"api_port": _free_port()})
    url = f"http://127.0.0.1:{settings.api_port}"
    viewer = {"Authorization": f"Bearer {add_token(cloud_db, user='ana', role='viewer')}"}
    command = shutil.which("wafer-cloud", path=str(Path(sys.executable).parent))
    assert command is not None
    process = subprocess.Popen(
        [command, "serve"],
        env={**os.environ, **_environment(settings)},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_healthy(url, process)
        listed = httpx.get(f"{url}/models", headers=viewer, timeout=60).json()
        versions = {m["version"]: m["aliases"] for m in listed}
        assert versions[DEFAULT_MODEL_VERSION] == ["champion"]
        assert len(versions) == len(shipped_folders())
        assert httpx.get(f"{url}/training/jobs", timeout=60).status_code == 401
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=SERVE_STOP_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # uvicorn stops gracefully, then re-raises the signal it caught (as systemd expects).
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert f"registered {DEFAULT_MODEL_VERSION} (champion)" in output


def _train_remote(api_url: str, token: str, *args: str) -> subprocess.Popen[str]:
    """``wafer-cloud train --remote ARGS`` as a user runs it, against ``api_url``."""
    command = shutil.which("wafer-cloud", path=str(Path(sys.executable).parent))
    assert command is not None
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLOUD_")}
    env.update({"CLOUD_API_URL": api_url, "CLOUD_API_TOKEN": token, "PYTHONUNBUFFERED": "1"})
    return subprocess.Popen(
        [command, "train", "--remote", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_train_remote_follows_its_job_until_cancelled_and_exits_with_its_state(
    api_url: str, cloud_settings: CloudSettings, cloud_db: Database
) -> None:
    token = add_token(cloud_db, user="eng-ana", role="ml-engineer")
    follower = _train_remote(
        api_url, token, "--config", "configs/tiny.yaml", "--set", "optim.epochs=1",
        "--reason", "new labels from fab 3",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + SERVE_START_S
        while not (found := list_jobs(cloud_db)):
            assert follower.poll() is None, follower.communicate()
            assert time.monotonic() < deadline, "the job was never triggered"
            time.sleep(0.1)
        (job,) = found
        assert (job.config_name, job.overrides) == ("tiny", {"optim.epochs": 1})
        assert (job.requested_by, job.reason) == ("eng-ana", "new labels from fab 3")
        cancel(cloud_db, job.id, requested_by="eng-bo")
        out, err = follower.communicate(timeout=SERVE_STOP_S)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == EXIT_CODES["cancelled"], out + err
    assert f"job {job.id} queued" in out
    assert f"job {job.id}: cancelled" in out
    redis.Redis.from_url(cloud_settings.broker_url).delete(cloud_settings.task_queue)


def test_train_remote_says_what_the_api_refused(api_url: str, cloud_db: Database) -> None:
    engineer = add_token(cloud_db, user="eng-ana", role="ml-engineer")
    unknown = _train_remote(api_url, engineer, "--config", "no-such-config", "--reason", "r")
    _, err = unknown.communicate(timeout=SERVE_STOP_S)
    assert unknown.returncode == 1
    assert "HTTP 422" in err and "config_name" in err

    viewer = add_token(cloud_db, user="ana", role="viewer")
    refused = _train_remote(api_url, viewer, "--config", "tiny", "--reason", "r")
    _, err = refused.communicate(timeout=SERVE_STOP_S)
    assert refused.returncode == 1 and "HTTP 403" in err and "ml-engineer" in err

    nobody = _train_remote("http://127.0.0.1:9", engineer, "--config", "tiny")
    _, err = nobody.communicate(timeout=SERVE_STOP_S)
    assert nobody.returncode == 1 and "cannot reach the cloud API" in err


@pytest.mark.slow
def test_train_remote_runs_a_tiny_job_to_a_registered_candidate_and_prints_the_verdict(
    cloud_settings: CloudSettings,
    cloud_db: Database,
    serve_api: Callable[[CloudSettings], str],
    tmp_path: Path,
) -> None:
    # Celery in eager mode (the demo's): the API runs the job's steps as it triggers it.
    write_tiny_dataset(tmp_path / "data" / TINY_FILE)
    settings = cloud_settings.model_copy(
        update={
            "task_always_eager": True,
            "data_dir": tmp_path / "data",
            "torch_threads": 1,
            "gate": GateSettings(min_accuracy=0.0, min_class_f1=0.0),
            "checks": DataChecks(min_per_class=20),
        }
    )
    api_url = serve_api(settings)
    token = add_token(cloud_db, user="eng-ana", role="ml-engineer")
    follower = _train_remote(api_url, token, "--config", "tiny", "--set", "optim.epochs=1")
    out, err = follower.communicate(timeout=JOB_DEADLINE_S)
    assert follower.returncode == 0, out + err
    (job,) = list_jobs(cloud_db)
    assert job.state == "succeeded" and job.model_version
    assert f"job {job.id}: succeeded" in out
    assert "gate: passed" in out and "pass  accuracy: accuracy" in out
    assert f"model version: {job.model_version}" in out
