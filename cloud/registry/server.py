"""The `mlflow server` process behind the registry: how this tier starts it and waits for it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

from cloud.settings import CloudSettings


def server_command(settings: CloudSettings, host: str, port: int) -> list[str]:
    """The command line of an MLflow tracking and registry server on the settings' stores.

    One worker and no job execution: the registry serves a handful of clients, and MLflow's
    job runner (which needs huey) has nothing to do here. ``--serve-artifacts`` proxies the
    artifact store, so clients need no credentials of S3 (or access to the folder).
    """
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    artifacts = settings.mlflow_artifacts
    if "://" not in artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
    return [
        mlflow,
        "server",
        "--backend-store-uri",
        settings.mlflow_store,
        "--artifacts-destination",
        artifacts,
        "--serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def server_env() -> dict[str, str]:
    """The server's environment: job execution off (it would need a job store and huey)."""
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def start_server(
    settings: CloudSettings, host: str, port: int, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start `mlflow server` as a child process (its SQLite folder created first), its output
    appended to ``log`` if given (else inherited)."""
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    if log is None:
        return subprocess.Popen(server_command(settings, host, port), env=server_env())
    with log.open("ab") as out:
        return subprocess.Popen(
            server_command(settings, host, port), env=server_env(), stdout=out, stderr=out
        )


def wait_healthy(
    uri: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Return once ``uri``/health answers 200.

    Raises:
        RuntimeError: the process exited, or the server did not answer in ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}")
        try:
            with urlopen(f"{uri.rstrip('/')}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"mlflow server at {uri} did not answer within {timeout_s:.0f} s")
        time.sleep(0.2)
