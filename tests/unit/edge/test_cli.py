"""``wafer-edge``: ``serve`` as a real process, ``replay`` against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.replay import classify_bodies
from edge.schemas import ClassifyRequest
from wafercore.readers.npz import read_npz, write_npz
from wafercore.shipped import DEFAULT_MODEL_VERSION
from wafercore.synthetic import generate_dataset

DEFAULT = Path(__file__).resolve().parents[3] / "models" / "trm-v1.0.0"
STOP_TIMEOUT_S = 30


class Served:
    """A ``wafer-edge serve`` process and its base URL."""

    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url

    def close(self) -> None:
        """Kill the process if it still runs; release its pipe."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def health(self) -> dict[str, object]:
        answer = httpx.get(f"{self.url}/healthz", timeout=10)
        assert answer.status_code == 200, answer.text
        body: dict[str, object] = answer.json()
        return body


def _serve(
    work: Path,
    *,
    model: Path | None = DEFAULT,
    cwd: Path | None = None,
    version: str = "trm-v1.0.0",
) -> Served:
    """Start ``wafer-edge serve`` on a free port; flags override the EDGE_* environment."""
    env = {
        **os.environ,
        "EDGE_WORK_DIR": str(work),
        "EDGE_OUTBOX_SYNC": "normal",
        "EDGE_NODE_ID": "from-env",
    }
    env.pop("EDGE_DEFAULT_MODEL_DIR", None)
    if model is not None:
        env["EDGE_DEFAULT_MODEL_DIR"] = str(model)
    command = [sys.executable, "-c", "from edge.cli import main; main()", "serve"]
    log = work / "serve.log"  # a file, not a pipe nobody drains
    with log.open("w") as err:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [*command, "--port", "0", "--node-id", "cli-node"],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert process.stdout is not None
    line = process.stdout.readline()  # the node prints one line once it serves
    if not line:
        process.kill()
        pytest.fail(f"wafer-edge serve did not start: {log.read_text()}")
    assert f"serving model {version} on http://127.0.0.1:" in line
    return Served(process, line.rsplit(" ", 1)[1].strip())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    node = _serve(tmp_path_factory.mktemp("edge"))
    yield node
    node.close()


def test_serve_finds_the_shipped_default_model_from_any_folder(tmp_path: Path) -> None:
    # No --model-dir, no EDGE_DEFAULT_MODEL_DIR, and a working directory far from the
    # repository: the default model comes from the installed package.
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    (tmp_path / "edge").mkdir()
    node = _serve(tmp_path / "edge", model=None, cwd=elsewhere, version=DEFAULT_MODEL_VERSION)
    try:
        assert node.health()["model_version"] == DEFAULT_MODEL_VERSION
    finally:
        node.close()


def test_serve_answers_with_flags_overriding_the_environment(served: Served) -> None:
    health = served.health()
    assert health["node_id"] == "cli-node"  # --node-id beat EDGE_NODE_ID
    assert health["model_version"] == "trm-v1.0.0"


def test_replay_streams_real_maps_and_prints_a_latency_summary(
    served: Served, tmp_path: Path
) -> None:
    data = tmp_path / "maps.npz"
    write_npz(generate_dataset(2, np.random.default_rng(0)), data)  # 18 maps, WM-811K encoded
    before = served.health()["outbox_depth"]
    assert isinstance(before, int)
    result = CliRunner().invoke(
        main,
        ["replay", "--data", str(data), "--rate", "200", "--target", served.url, "--limit", "12"],
    )
    assert result.exit_code == 0, result.output
    assert "sent 12 wafers" in result.output and "12 ok, 0 errors" in result.output
    assert "client latency ms: p50" in result.output
    assert "server inference ms: p50" in result.output
    assert served.health()["outbox_depth"] == before + 12

    raw = CliRunner().invoke(
        main, ["replay", "--data", str(data), "--rate", "200", "--target", served.url, "--wm811k"]
    )
    assert raw.exit_code == 0, raw.output
    assert "18 ok, 0 errors" in raw.output
    assert served.health()["outbox_depth"] == before + 30


def test_replay_counts_failures_and_exits_1(tmp_path: Path) -> None:
    data = tmp_path / "maps.npz"
    write_npz(generate_dataset(1, np.random.default_rng(0)), data)
    result = CliRunner().invoke(
        main,
        ["replay", "--data", str(data), "--rate", "500", "--target", "http://127.0.0.1:9"],
    )
    assert result.exit_code == 1
    assert "0 ok, 9 errors" in result.output and "ConnectError: 9" in result.output


def test_serve_refuses_bad_flags_before_starting() -> None:
    result = CliRunner().invoke(main, ["serve", "--fab", "no-port-here"])
    assert result.exit_code == 2
    assert "fab_address" in result.output and "host:port" in result.output


def test_sigterm_stops_serve_cleanly(tmp_path: Path) -> None:
    node = _serve(tmp_path)
    try:
        assert node.health()["outbox_depth"] == 0
        node.process.send_signal(signal.SIGTERM)
        assert node.process.wait(timeout=STOP_TIMEOUT_S) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{node.url}/healthz", timeout=5)
    finally:
        node.close()


def test_the_replay_bodies_match_the_api(tmp_path: Path) -> None:
    data = tmp_path / "maps.npz"
    dataset = generate_dataset(1, np.random.default_rng(2))
    write_npz(dataset, data)
    loaded = read_npz(data)
    canonical, raw = (list(classify_bodies(loaded, limit=2, wm811k=flag)) for flag in (False, True))
    assert len(canonical) == 2
    for body in canonical + raw:
        ClassifyRequest.model_validate(json.loads(json.dumps(body)))
    assert canonical[0]["wafer_map"] == dataset.map(0).tolist()
    assert raw[0]["encoding"] == "wm811k" and "encoding" not in canonical[0]
