"""``wafer-platform demo --serve``: every tier keeps serving, the review UI signs the printed
demo user in, and Ctrl-C (SIGINT) stops everything cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx

STARTUP_S = 600.0  # the demo replays wafers and trains a tiny model first
STOP_S = 60.0


def _read_until_serving(proc: subprocess.Popen[str]) -> str:
    """The demo's output up to the line with the fab's gRPC address (the last one printed)."""
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if line.lstrip().startswith("fab gRPC"):
            break
    return "".join(lines)


def test_demo_serve_keeps_the_ui_up_with_a_demo_login_until_ctrl_c(tmp_path: Path) -> None:
    env = {**os.environ, "WAFER_DATA_DIR": "", "WAFER_WORK_DIR": str(tmp_path)}
    script = Path(sys.executable).parent / "wafer-platform"
    proc = subprocess.Popen(
        [str(script), "demo", "--serve", "--http-port", "0", "--per-class", "6", "--wafers", "54"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        # Ctrl-C's signal must reach it even when the test runner ignores SIGINT.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    timer = threading.Timer(STARTUP_S, proc.kill)
    timer.start()
    try:
        output = _read_until_serving(proc)
    finally:
        timer.cancel()
    ui = re.search(r"review UI +(http://\S+/ui/)", output)
    login = re.search(r"sign in as +(\S+) / (\S+)", output)
    assert ui and login, output
    with httpx.Client(base_url=ui.group(1), timeout=30) as http:
        page = http.get("login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token, page.text
        form = {"user": login.group(1), "password": login.group(2), "csrf_token": token.group(1)}
        signed = http.post("login", data=form)
        assert signed.status_code == 303, signed.text
        queue = http.get("queue")
        assert queue.status_code == 200 and "Review queue" in queue.text
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=STOP_S)
    assert proc.returncode == 0, rest
    assert "stopped every tier" in rest
