"""``wafer-platform up``: every tier answers its health check, Ctrl-C stops them all, and a tier
that fails stops the others.

The first test runs the real command on embedded defaults (SQLite, folders under tmp_path; the
Celery worker and beat too when the local Redis answers), on ports the OS says are free.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from launcher.tiers import Supervisor, Tier, TierFailed, run_tiers

pytestmark = pytest.mark.integration

WAFER_PLATFORM = Path(sys.executable).parent / "wafer-platform"
UP_S = 150.0  # each tier's health timeout (MLflow's first start is the slowest)
STOP_S = 60.0
HEALTH_URL = re.compile(r"(http://127\.0\.0\.1:\d+/health\w*)")


def _free_ports(count: int) -> list[int]:
    """``count`` ports free now, the last two consecutive (the edges' --edge-port and +1)."""
    while True:
        socks = []
        try:
            for _ in range(count - 1):
                sock = socket.socket()
                sock.bind(("127.0.0.1", 0))
                socks.append(sock)
            last = socks[-1].getsockname()[1]
            if last == 65535:
                continue
            follower = socket.socket()
            socks.append(follower)
            try:
                follower.bind(("127.0.0.1", last + 1))
            except OSError:
                continue
            return [s.getsockname()[1] for s in socks]
        finally:
            for sock in socks:
                sock.close()


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without the tiers' settings (embedded defaults), plus ``extra``."""
    prefixes = ("FAB_", "CLOUD_", "EDGE_", "WAFER_WORK_DIR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return {**env, **extra}


def _live_processes(groups: set[int]) -> list[str]:
    """Processes (not zombies) whose process group is one of ``groups``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ")".
        state, _, pgrp = text.rpartition(")")[2].split()[:3]
        if int(pgrp) in groups and state != "Z":
            found.append(text.split(" ", 1)[0])
    return found


class Output:
    """The lines a child process writes, read by a thread (the pipe never fills)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert process.stdout is not None
        stdout = process.stdout
        self._thread = threading.Thread(target=lambda: self.lines.extend(stdout), daemon=True)
        self._thread.start()

    def join(self) -> None:
        """Wait for the rest of the output (the process has exited)."""
        self._thread.join(5)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, needle: str, process: subprocess.Popen[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while needle not in self.text:
            if process.poll() is not None:
                self.join()
                pytest.fail(f"exited with {process.returncode} before {needle!r}:\n{self.text}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {needle!r} within {timeout_s:.0f} s:\n{self.text}")
            time.sleep(0.2)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """Started ``wafer-platform`` processes, stopped afterwards if a test left one running."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # it stops its tiers
            try:
                process.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _up(
    tmp_path: Path, ports: list[int], env: dict[str, str], *options: str
) -> subprocess.Popen[str]:
    http, grpc, mlflow, cloud, sync, edge, _ = ports
    command = [
        str(WAFER_PLATFORM),
        "up",
        "--work-dir",
        str(tmp_path / "platform"),
        *("--http-port", str(http), "--grpc-port", str(grpc), "--mlflow-port", str(mlflow)),
        *("--cloud-port", str(cloud), "--sync-port", str(sync), "--edge-port", str(edge)),
        *("--edges", "2", "--grace", "10", "--health-timeout", str(UP_S)),
        *options,
    ]
    return subprocess.Popen(
        command,
        env=env,
        cwd=tmp_path,  # any folder: nothing may depend on the repository's
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # SIGINT below reaches the launcher only, as Ctrl-C would
    )


def test_every_tier_answers_and_ctrl_c_stops_them_all(
    tmp_path: Path, launch: list[subprocess.Popen[str]]
) -> None:
    # --eager: no Celery worker and beat even where the local Redis answers (the test stays
    # under a minute on two busy cores; `make serve` starts them when Redis answers).
    process = _up(tmp_path, _free_ports(7), _clean_env(), "--eager")
    launch.append(process)
    output = Output(process)
    output.wait_for("Ctrl-C stops every tier.", process, UP_S * 2)

    header = next(i for i, line in enumerate(output.lines) if line.startswith("tier "))
    rows = [line.split() for line in output.lines[header + 1 :] if line.strip()]
    rows = rows[: next(i for i, row in enumerate(rows) if row[0] == "logs")]
    tiers = {row[0]: int(row[-1]) for row in rows}
    assert set(tiers) == {"fab", "registry", "cloud-api", "edge-1", "edge-2"}, output.text
    health = HEALTH_URL.findall("".join(output.lines[header : header + 1 + len(rows)]))
    assert len(health) == 5, output.text  # fab, registry, cloud API, two edges
    with httpx.Client(timeout=5.0) as http:
        for url in health:
            deadline = time.monotonic() + 30
            while (code := _status(http, url)) != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert code == 200, f"{url}: {code}"
    for name in tiers:
        assert (tmp_path / "platform" / "logs" / f"{name}.log").stat().st_size > 0, name
    assert re.search(r"sign in as engineer / \S{8,}", output.text), output.text

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=STOP_S) == 0, output.text
    output.join()
    assert "stopped every tier" in output.text
    assert _live_processes(set(tiers.values())) == []  # the tiers' groups: workers included


def _status(http: httpx.Client, url: str) -> int | None:
    try:
        return http.get(url).status_code
    except httpx.HTTPError:
        return None


def test_a_tier_that_fails_stops_the_started_ones_and_exits_1(
    tmp_path: Path, launch: list[subprocess.Popen[str]]
) -> None:
    # The registry cannot make its artifact folder: it exits while the fab is already up.
    env = _clean_env(CLOUD_MLFLOW_ARTIFACTS_DESTINATION="/proc/no-such/artifacts")
    process = _up(tmp_path, _free_ports(7), env)
    launch.append(process)
    output = Output(process)
    assert process.wait(timeout=UP_S) == 1, output.text
    output.join()
    assert "registry exited with status 1" in output.text
    assert "stopped fab" in output.text
    assert "Every tier is up" not in output.text
    assert (tmp_path / "platform" / "logs" / "registry.log").read_text()  # its tail was shown


def _serving(root: Path, name: str, port: int) -> Tier:
    """A tier that answers /healthz on ``port``: a static file server."""
    folder = root / name
    folder.mkdir()
    (folder / "healthz").write_text("ok")
    return Tier(
        name,
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        {},
        health_url=f"http://127.0.0.1:{port}/healthz",
    )


def test_supervisor_stops_every_started_tier_when_one_fails(tmp_path: Path) -> None:
    first, second, never = _free_ports(3)
    lines: list[str] = []
    supervisor = Supervisor(tmp_path, lines.append, health_timeout_s=30, grace_s=5)
    good = _serving(tmp_path, "good", first)
    good.command += ["--directory", str(tmp_path / "good")]
    other = _serving(tmp_path, "other", second)
    other.command += ["--directory", str(tmp_path / "other")]
    broken = Tier(
        "broken",
        [sys.executable, "-c", "import sys; print('FAB_X: not a number'); sys.exit(3)"],
        health_url=f"http://127.0.0.1:{never}/healthz",
    )
    with pytest.raises(TierFailed, match=r"broken exited with status 3"):
        run_tiers(supervisor, [lambda: [good], lambda: [other, broken]], lambda: None)
    assert supervisor.running == []
    assert "stopped broken (exit status 3)" in lines
    assert [line for line in lines if line.startswith("stopped ")][1:] == [
        "stopped other (ended by SIGTERM)",
        "stopped good (ended by SIGTERM)",
    ]
    assert any("FAB_X: not a number" in line for line in lines)  # the log's tail
    with httpx.Client(timeout=2) as http:
        assert _status(http, f"http://127.0.0.1:{first}/healthz") is None


def test_supervisor_gives_up_on_a_tier_that_never_answers(tmp_path: Path) -> None:
    (port,) = _free_ports(2)[:1]
    lines: list[str] = []
    supervisor = Supervisor(tmp_path, lines.append, health_timeout_s=1.5, grace_s=5)
    silent = Tier(
        "silent",
        [sys.executable, "-c", "import time; time.sleep(60)"],
        health_url=f"http://127.0.0.1:{port}/healthz",
    )
    started = time.monotonic()
    with pytest.raises(TierFailed, match=r"silent did not answer its health check"):
        run_tiers(supervisor, [lambda: [silent]], lambda: None)
    assert time.monotonic() - started < 15
    assert lines[-1] == "stopped silent (ended by SIGTERM)"
