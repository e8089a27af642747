"""``wafer-fab``: migrate, seed and certs on an embedded SQLite database."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from fab_server.cli import main
from fab_server.settings import FabSettings


def test_migrate_then_seed_stores_classified_synthetic_wafers(tmp_path: Path) -> None:
    db = tmp_path / "fab.db"
    env = {"FAB_DATABASE_URL": f"sqlite+aiosqlite:///{db}"}
    runner = CliRunner()
    migrated = runner.invoke(main, ["migrate"], env=env)
    assert migrated.exit_code == 0, migrated.output
    first = runner.invoke(main, ["seed", "--synthetic", "30"], env=env)
    assert first.exit_code == 0, first.output
    assert "stored 30 synthetic results" in first.output
    again = runner.invoke(main, ["seed", "--synthetic", "20", "--seed", "1"], env=env)
    assert "up to sequence 50" in again.output  # seeding again adds, never collides
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM results").fetchone() == (50,)
        assert conn.execute("SELECT count(DISTINCT lot_id) FROM results").fetchone()[0] >= 2
        assert conn.execute("SELECT count(*) FROM wafer_maps").fetchone() == (50,)
        versions = conn.execute("SELECT DISTINCT model_version FROM results").fetchall()
        assert versions == [(FabSettings().model_dir.name,)]  # the default model


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    env = {"FAB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'new.db'}", "FAB_GRPC_PORT": "0"}
    result = CliRunner().invoke(main, ["serve"], env=env)
    assert result.exit_code != 0
    assert "wafer-fab migrate" in result.output


def test_certs_writes_a_ca_server_and_client_certificates(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["certs", "--out", str(tmp_path), "--client", "edge-01", "--client", "edge-02"]
    )
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(
        f"{name}.{ext}" for name in ("ca", "server", "edge-01", "edge-02") for ext in ("pem", "key")
    )
    assert "FAB_TLS_CLIENT_CA=" in result.output
    bad = CliRunner().invoke(main, ["certs", "--out", str(tmp_path), "--client", "ca"])
    assert bad.exit_code == 2 and "ca" in bad.output


def test_sigterm_stops_serve_cleanly(tmp_path: Path) -> None:
    """A container runtime or service manager stops the server with SIGTERM: it must close
    its ports and exit 0, as on Ctrl-C, not die mid-request."""
    env = {
        **os.environ,
        "FAB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'fab.db'}",
        "FAB_GRPC_PORT": "0",
        "FAB_HTTP_PORT": "0",
    }
    script = Path(sys.executable).with_name("wafer-fab")
    process = subprocess.Popen(
        [str(script), "-v", "serve", "--migrate"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # until it says it serves (or exits: the loop ends)
            if "fab server: gRPC on" in line:
                break
        assert process.poll() is None, "the fab server exited before serving"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
