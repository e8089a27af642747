"""``wafer-fab models register`` and ``assign`` on an embedded SQLite database."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from fab_server.cli import main


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = {
        "FAB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'fab.db'}",
        "FAB_ARTIFACT_DIR": str(tmp_path / "store"),
    }
    migrated = CliRunner().invoke(main, ["migrate"], env=env)
    assert migrated.exit_code == 0, migrated.output
    return env


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "trm-v1.1.0.tar"
    path.write_bytes(b"artifact bytes" * 1000)
    (tmp_path / "trm-v1.1.0.tar.sig").write_bytes(b"\x05" * 64)
    return path


def _rows(env: dict[str, str], query: str) -> list[tuple[object, ...]]:
    db = env["FAB_DATABASE_URL"].removeprefix("sqlite+aiosqlite:///")
    with sqlite3.connect(db) as conn:
        return conn.execute(query).fetchall()


def test_register_then_assign_publishes_a_signed_model(env: dict[str, str], artifact: Path) -> None:
    runner = CliRunner()
    args = ["models", "register", "--artifact", str(artifact), "--version", "trm-v1.1.0"]
    registered = runner.invoke(main, [*args, "--key-id", "registry-1"], env=env)
    assert registered.exit_code == 0, registered.output
    sha = hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert sha in registered.output and "14000 bytes" in registered.output
    query = (
        "SELECT version, artifact_format, sha256, signature, signing_key_id FROM model_artifacts"
    )
    assert _rows(env, query) == [("trm-v1.1.0", "onnx", sha, b"\x05" * 64, "registry-1")]

    assigned = runner.invoke(
        main, ["models", "assign", "--node", "*", "--version", "trm-v1.1.0"], env=env
    )
    assert assigned.exit_code == 0, assigned.output
    assert "node * should run trm-v1.1.0" in assigned.output
    back = runner.invoke(
        main,
        ["models", "assign", "--node", "edge-3", "--version", "trm-v1.1.0", "--rollback"],
        env=env,
    )
    assert back.exit_code == 0 and "edge-3 should roll back to trm-v1.1.0" in back.output
    rows = _rows(env, "SELECT node_id, version, rollback FROM model_assignments ORDER BY node_id")
    assert rows == [("*", "trm-v1.1.0", 0), ("edge-3", "trm-v1.1.0", 1)]


def test_register_needs_the_signature_beside_the_artifact(
    env: dict[str, str], artifact: Path
) -> None:
    Path(f"{artifact}.sig").unlink()
    args = ["models", "register", "--artifact", str(artifact), "--version", "trm-v1.1.0"]
    result = CliRunner().invoke(main, [*args, "--key-id", "registry-1"], env=env)
    assert result.exit_code == 2 and "no signature" in result.output
    assert _rows(env, "SELECT count(*) FROM model_artifacts") == [(0,)]


def test_bad_requests_exit_with_the_service_message(env: dict[str, str], artifact: Path) -> None:
    runner = CliRunner()
    unknown = runner.invoke(
        main, ["models", "assign", "--node", "edge-1", "--version", "trm-v9.0.0"], env=env
    )
    assert unknown.exit_code == 1 and "trm-v9.0.0" in unknown.output
    assert "not found" in unknown.output
    args = ["models", "register", "--artifact", str(artifact), "--key-id", "registry-1"]
    bad = runner.invoke(main, [*args, "--version", "v1"], env=env)
    assert bad.exit_code == 1 and "version" in bad.output
    Path(f"{artifact}.sig").write_bytes(b"short")
    short = runner.invoke(main, [*args, "--version", "trm-v1.1.0"], env=env)
    assert short.exit_code == 1 and "64" in short.output
