"""The one-machine demo end to end: every tier it starts, the real contracts between them."""

import asyncio
import re
from pathlib import Path

from click.testing import CliRunner

from launcher.cli import main
from launcher.cloud_demo import run_cloud_demo
from wafercore.classes import DefectClass
from wafercore.shipped import DEFAULT_MODEL_VERSION

STEPS = ("collect", "validate", "train", "evaluate", "export", "latency", "sign", "register")


def test_demo_replays_wafers_through_the_edge_and_fab_then_retrains_in_the_cloud(
    tmp_path: Path,
) -> None:
    env = {"WAFER_DATA_DIR": "", "WAFER_WORK_DIR": str(tmp_path)}
    result = CliRunner().invoke(main, ["demo", "--per-class", "6", "--wafers", "54"], env=env)
    assert result.exit_code == 0, result.output
    for cls in DefectClass:
        assert f"{int(cls):>3} {cls.display_name:<10}       6" in result.output
    assert "#" in result.output  # the drawn examples
    # Every wafer sent to the two edge nodes reaches the fab once, in its lot (25 per lot).
    assert "54 wafers classified at the edge, 54 stored at the fab" in result.output
    assert "station-1: sent 29 wafers" in result.output  # lots 1 and 3
    assert "station-2: sent 25 wafers" in result.output
    assert re.search(r"DEMO-001 +25 ", result.output)
    assert re.search(r"DEMO-003 +4 ", result.output)
    assert (tmp_path / "demo" / "fab.db").exists()
    assert result.output.count(" ok, 0 errors") == 2  # both stations
    # The cloud: the fab syncs its verdicts and aggregates, a drift report measures its mix.
    assert "pipeline on a Celery worker process on redis://" in result.output
    assert re.search(
        r"sync demo-fab: [1-9]\d* reviewed labels .* [1-9] daily aggregates", result.output
    )
    drift = re.search(
        r"fab demo-fab: PSI ([0-9.]+) \((stable|investigate|retrain)\)", result.output
    )
    assert drift is not None, result.output
    # A worker process on the local Redis runs one tiny job to a registered candidate (started
    # by the drift report when the mix is far from the champion's, else by hand).
    started_by_drift = "the report started job" in result.output
    assert started_by_drift == (float(drift[1]) > 0.25)
    for step in STEPS:
        assert re.search(rf"step {step} +done", result.output), step
    assert re.search(r"job [0-9a-f-]{36} succeeded in [0-9.]+ s: gate passed", result.output)
    assert re.search(r"cnn-v0\.1\.0 +aliases: candidate", result.output)
    assert re.search(rf"{re.escape(DEFAULT_MODEL_VERSION)} +aliases: champion", result.output)
    # Its canary on one of the two stations ends with a decision and the reason for it.
    assert re.search(r"cnn-v0\.1\.0 on station-\d \(canary\)", result.output)
    assert "decision: rollback (rolled_back): trial window ended" in result.output


def test_cloud_demo_runs_the_steps_in_process_when_redis_does_not_answer(tmp_path: Path) -> None:
    lines: list[str] = []
    own = tmp_path / "cloud" / "pseudo" / "cnn-v2.0.0.npz"  # the cloud tier's own work dir
    own.parent.mkdir(parents=True)
    own.write_bytes(b"kept")
    # Port 1: nothing listens there, so the demo falls back to Celery's eager mode.
    outcome = asyncio.run(run_cloud_demo(tmp_path, "redis://127.0.0.1:1/0", lines.append))
    assert own.read_bytes() == b"kept", "the demo must not wipe the cloud's own work dir"
    assert (tmp_path / "demo" / "cloud").is_dir()
    assert outcome.mode.startswith("Celery eager mode")
    assert outcome.job["state"] == "succeeded", outcome.job
    assert [s["name"] for s in outcome.steps] == list(STEPS)
    assert all(s["state"] == "done" for s in outcome.steps)
    candidates = [m["version"] for m in outcome.models if "candidate" in m["aliases"]]
    assert candidates == [outcome.job["model_version"]]
