"""``wafer-cloud models import|list|alias`` on a real `mlflow server` and PostgreSQL, and
``wafer-cloud registry`` starting a real one."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cloud.cli import main
from cloud.registry import commands
from cloud.registry.commands import models
from cloud.registry.registry import ModelRegistry
from cloud.registry.server import wait_healthy
from cloud.settings import CloudSettings
from cloud.storage.db import Database

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOURCE_MODEL = Path(__file__).resolve().parents[4] / "models" / "cnn-v1.1.0"
MLFLOW_START_S = 180.0
"""As the session's server: `mlflow server` is slow to start on a loaded 2-core machine."""


def model_copy(target: Path, version: str) -> Path:
    """The source model's folder under another version."""
    shutil.copytree(SOURCE_MODEL, target)
    manifest = json.loads((target / "model.json").read_text())
    manifest["version"] = version
    (target / "model.json").write_text(json.dumps(manifest))
    return target


def run(settings: CloudSettings, *args: str) -> Result:
    """``wafer-cloud models ARGS`` with ``settings`` as the group's settings."""
    return CliRunner().invoke(models, list(args), obj=settings, catch_exceptions=False)


def test_the_commands_are_on_the_wafer_cloud_group() -> None:
    assert main.commands["models"] is models
    assert main.commands["registry"] is commands.registry
    assert set(models.commands) == {"list", "import", "alias"}


def test_import_list_and_alias_a_model_folder(
    cloud_settings: CloudSettings, tmp_path: Path
) -> None:
    empty = run(cloud_settings, "list")
    assert empty.exit_code == 0, empty.output
    assert "no version" in empty.output

    first = model_copy(tmp_path / "cnn-v9.0.1", "cnn-v9.0.1")
    golden = ["--golden", "16"]
    imported = run(cloud_settings, "import", str(first), "--alias", "champion", *golden)
    assert imported.exit_code == 0, imported.output
    assert "cnn-v9.0.1: MLflow version 1, aliases champion" in imported.output
    second = model_copy(tmp_path / "cnn-v9.0.2", "cnn-v9.0.2")
    result = run(cloud_settings, "import", str(second), "--reason", "retrained", *golden)
    assert result.exit_code == 0, result.output
    assert "cnn-v9.0.2: MLflow version 2" in result.output
    again = run(cloud_settings, "import", str(first), *golden)
    assert again.exit_code == 0 and "cnn-v9.0.1: MLflow version 1" in again.output

    moved = run(cloud_settings, "alias", "cnn-v9.0.2", "champion", "--reason", "better F1")
    assert moved.exit_code == 0, moved.output
    assert "cnn-v9.0.2 now holds champion" in moved.output
    assert "alias_set champion -> cnn-v9.0.2 (was cnn-v9.0.1)" in moved.output
    assert "alias_set previous -> cnn-v9.0.1 (was -)" in moved.output

    listed = run(cloud_settings, "list")
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line.split() for line in listed.output.splitlines()[1:]}
    assert rows["cnn-v9.0.2"][1:3] == ["2", "champion"]
    assert rows["cnn-v9.0.1"][1:3] == ["1", "previous"]
    report = json.loads((SOURCE_MODEL / "report.json").read_text())
    assert rows["cnn-v9.0.1"][3] == f"{report['macro_f1']:.4f}"

    db = Database(cloud_settings.db_url, cloud_settings.db_schema)
    try:
        events = ModelRegistry(cloud_settings, db).history()
    finally:
        db.dispose()
    actor = f"cli:{getpass.getuser()}"
    assert [(e.actor, e.action, e.model_version, e.alias, e.reason) for e in events] == [
        (actor, "registered", "cnn-v9.0.1", None, "imported from the command line"),
        (actor, "alias_set", "cnn-v9.0.1", "champion", "imported from the command line"),
        (actor, "registered", "cnn-v9.0.2", None, "retrained"),
        (actor, "alias_set", "cnn-v9.0.2", "champion", "better F1"),
        (
            actor,
            "alias_set",
            "cnn-v9.0.1",
            "previous",
            "replaced as champion by cnn-v9.0.2: better F1",
        ),
    ]


def test_bad_requests_are_refused_with_the_reason(
    cloud_settings: CloudSettings, tmp_path: Path
) -> None:
    unknown = run(cloud_settings, "alias", "cnn-v0.0.0", "champion", "--reason", "r")
    assert unknown.exit_code == 1 and "'cnn-v0.0.0' not found" in unknown.output
    no_reason = run(cloud_settings, "alias", "cnn-v0.0.0", "champion")
    assert no_reason.exit_code == 2 and "--reason" in no_reason.output
    blank = run(cloud_settings, "alias", "cnn-v0.0.0", "champion", "--reason", " ")
    assert blank.exit_code == 2 and "reason" in blank.output
    bad_alias = run(cloud_settings, "alias", "cnn-v0.0.0", "gold", "--reason", "r")
    assert bad_alias.exit_code == 2 and "gold" in bad_alias.output
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    refused = run(cloud_settings, "import", str(not_a_model))
    assert refused.exit_code == 2 and "model.onnx" in refused.output


def test_commands_say_when_no_mlflow_server_answers(
    cloud_settings: CloudSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commands, "REACHABLE_TIMEOUT_S", 0.5)
    nowhere = cloud_settings.model_copy(
        update={"mlflow_tracking_uri": f"http://127.0.0.1:{_free_port()}"}
    )
    result = run(nowhere, "list")
    assert result.exit_code == 1
    assert "no MLflow server answers" in result.output and "wafer-cloud registry" in result.output


def test_registry_runs_mlflow_server_on_the_settings_stores(tmp_path: Path) -> None:
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "CLOUD_WORK_DIR": str(tmp_path / "cloud"),
        "CLOUD_MLFLOW_TRACKING_URI": uri,
    }
    command = [sys.executable, "-c", "from cloud.cli import main; main()", "registry"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_healthy(uri, MLFLOW_START_S, process)
        assert (tmp_path / "cloud" / "mlflow.db").is_file()
        assert (tmp_path / "cloud" / "mlflow-artifacts").is_dir()
    finally:
        process.send_signal(signal.SIGTERM)  # the server itself: the command exec'd it
        output, _ = process.communicate(timeout=MLFLOW_START_S)
    assert f"MLflow registry on {uri}" in output.decode()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
