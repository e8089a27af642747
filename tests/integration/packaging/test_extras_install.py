"""Each tier installs alone, from the repository, into a fresh virtual environment, and its
entry point works there from an unrelated folder: what an edge image, a fab image or a cloud
worker gets (DESIGN.md §2: one distribution, one extra per tier).

Slow (a pip install per extra, about 20 s to 90 s here), so one test per extra, each doing
`--help` and one real command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
INSTALL_S = 900
RUN_S = 120


def _install(extra: str, where: Path) -> Path:
    """A fresh virtual environment with only ``.[extra]`` installed; its bin folder."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=RUN_S)
    pip = [str(where / "bin" / "python"), "-m", "pip", "install", "-q"]
    done = subprocess.run(
        [*pip, "-c", str(REPO / "constraints.txt"), f"{REPO}[{extra}]"],
        capture_output=True,
        text=True,
        timeout=INSTALL_S,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    return where / "bin"


def _run(command: list[str], cwd: Path, **env: str) -> str:
    # A clean environment: nothing of this checkout's settings or virtualenv leaks in.
    clean = {"PATH": os.environ["PATH"], "HOME": str(cwd), **env}
    done = subprocess.run(
        command, cwd=cwd, env=clean, capture_output=True, text=True, timeout=RUN_S
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    return done.stdout


def test_the_edge_extra_alone_serves_the_shipped_model(tmp_path: Path) -> None:
    bin_dir = _install("edge", tmp_path / "venv")
    assert "Edge node" in _run([str(bin_dir / "wafer-edge"), "--help"], tmp_path)
    process = subprocess.Popen(
        [str(bin_dir / "wafer-edge"), "serve", "--port", "0", "--work-dir", str(tmp_path / "w")],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the node prints one line once it serves
        assert "serving model" in line and "http://127.0.0.1:" in line, line
        process.send_signal(signal.SIGTERM)
        assert process.wait(RUN_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_the_fab_extra_alone_migrates_and_enrols_a_node(tmp_path: Path) -> None:
    bin_dir = _install("fab", tmp_path / "venv")
    fab = str(bin_dir / "wafer-fab")
    assert "migrate" in _run([fab, "--help"], tmp_path)
    db = {"FAB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'fab.db'}"}
    # The migrations are package data of the installed copy, not files of this checkout.
    assert "migrated to head" in _run([fab, "migrate"], tmp_path, **db)
    assert "wfn_" in _run([fab, "nodes", "add", "station-1"], tmp_path, **db)


def test_the_cloud_extra_alone_signs_a_shipped_model(tmp_path: Path) -> None:
    bin_dir = _install("cloud", tmp_path / "venv")
    cloud = str(bin_dir / "wafer-cloud")
    assert "train" in _run([cloud, "--help"], tmp_path)
    _run([cloud, "keys", "--out", str(tmp_path / "keys"), "--key-id", "rel-1"], tmp_path)
    model = _run(
        [
            str(bin_dir / "python"),
            "-c",
            "from wafercore.shipped import shipped_model_dir as d; print(d())",
        ],
        tmp_path,
    ).strip()
    assert "site-packages" in model  # the installed copy's models, not this checkout's
    signed = _run(
        [
            *(cloud, "package", "--model", model, "--key", str(tmp_path / "keys" / "rel-1.key")),
            *("--key-id", "rel-1", "--out", str(tmp_path / "model.tar")),
        ],
        tmp_path,
    )
    assert "sha256:" in signed and (tmp_path / "model.tar.sig").stat().st_size == 64
