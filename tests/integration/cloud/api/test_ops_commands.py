"""``wafer-cloud rollout start|status|stop`` and ``wafer-cloud drift report`` against the
running API (served on the test's settings), as a user runs them: CLOUD_API_URL and
CLOUD_API_TOKEN in the environment."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cloud.api.ops_commands import drift, rollout
from cloud.cli import main
from cloud.registry.registry import ModelRegistry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHAMPION, CANDIDATE = "cnn-v1.0.0", "cnn-v1.1.0"
NODES = ("node-a", "node-b", "node-c", "node-d")


@pytest.fixture
def registered(two_versions: ModelRegistry, report_day: Callable[..., None]) -> None:
    """The champion and a candidate registered; fab-1 reported four nodes today, predicting
    every class alike (far from the champion's mix: a drift report says retrain)."""
    report_day("fab-1", NODES, (100,) * 9, flagged=20, reviewed=10, correct=9)


@pytest.fixture
def cli(api_url: str, issue: Callable[..., str]) -> Callable[..., Result]:
    """``cli(role, *args)``: ``wafer-cloud ARGS`` with a new token of ``role`` (None: no
    token) against the served API."""

    def run(role: str | None, *args: str, url: str = api_url) -> Result:
        env = {"CLOUD_API_URL": url, "CLOUD_API_TOKEN": issue(role) if role else None}
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    return run


def test_the_commands_are_on_the_wafer_cloud_group() -> None:
    assert main.commands["rollout"] is rollout and main.commands["drift"] is drift
    assert set(rollout.commands) == {"start", "status", "stop"}
    assert set(drift.commands) == {"report"}


def test_a_rollout_is_started_followed_and_stopped_from_the_command_line(
    cli: Callable[..., Result], registered: None
) -> None:
    started = cli(
        "admin",
        *("rollout", "start", "--fab", "fab-1", "--version", CANDIDATE),
        *("--node", "node-c", "--node", "node-a", "--reason", "canary on line 3", "--json"),
    )
    assert started.exit_code == 0, started.output
    body = json.loads(started.output)
    rollout_id = body["id"]
    assert (body["stage"], body["canary_nodes"], body["baseline_version"]) == (
        "canary",
        ["node-a", "node-c"],
        CHAMPION,
    )

    shown = cli("viewer", "rollout", "status", rollout_id)
    assert shown.exit_code == 0, shown.output
    assert f"rollout {rollout_id}: {CANDIDATE} in fab fab-1 (canary); baseline {CHAMPION}" in (
        shown.output
    )
    assert "canary: node-a, node-c" in shown.output
    assert "control: node-b, node-d" in shown.output
    listed = cli("viewer", "rollout", "status", "--fab", "fab-1", "--active", "--json")
    assert listed.exit_code == 0, listed.output
    assert [r["id"] for r in json.loads(listed.output)] == [rollout_id]
    assert "no rollouts" in cli("viewer", "rollout", "status", "--fab", "fab-9").output

    busy = cli(
        "admin",
        *("rollout", "start", "--fab", "fab-1", "--version", CANDIDATE, "--reason", "again"),
    )
    assert busy.exit_code == 1 and "HTTP 409" in busy.output and "under way" in busy.output

    stopped = cli("admin", "rollout", "stop", rollout_id, "--reason", "alarm on line 3")
    assert stopped.exit_code == 0, stopped.output
    assert "(stopped)" in stopped.output and "emergency stop by admin-user" in stopped.output
    again = cli("admin", "rollout", "stop", rollout_id, "--reason", "again")
    assert again.exit_code == 1 and "HTTP 409" in again.output
    assert cli("viewer", "rollout", "status", "--fab", "fab-1", "--active").output.strip() == (
        "no rollouts"
    )


def test_refused_rollout_commands_say_why(
    cli: Callable[..., Result], registered: None, api_url: str
) -> None:
    start = ("rollout", "start", "--fab", "fab-1", "--version", CANDIDATE, "--reason", "r")
    viewer = cli("viewer", *start)
    assert viewer.exit_code == 1 and "HTTP 403" in viewer.output and "admin" in viewer.output
    unknown = cli("admin", *start, "--node", "node-a", "--node", "node-zz")
    assert unknown.exit_code == 1 and "HTTP 422" in unknown.output
    assert "nodes[1]" in unknown.output and "node-zz" in unknown.output
    missing = cli("viewer", "rollout", "status", "00000000-0000-0000-0000-000000000000")
    assert missing.exit_code == 1 and "HTTP 404" in missing.output
    no_token = cli(None, "rollout", "status")
    assert no_token.exit_code == 2 and "CLOUD_API_TOKEN" in no_token.output
    nobody = cli("viewer", "rollout", "status", url="http://127.0.0.1:9")
    assert nobody.exit_code == 1 and "cannot reach" in nobody.output


def test_the_drift_report_is_computed_shown_and_plotted(
    cli: Callable[..., Result], registered: None, tmp_path: Path
) -> None:
    none = cli("viewer", "drift", "report")
    assert none.exit_code == 1 and "HTTP 404" in none.output
    refused = cli("viewer", "drift", "report", "--compute")
    assert refused.exit_code == 1 and "HTTP 403" in refused.output

    png = tmp_path / "drift.png"
    computed = cli("ml-engineer", "drift", "report", "--compute", "--png", str(png))
    assert computed.exit_code == 0, computed.output
    lines = computed.output.splitlines()
    assert lines[0].startswith("drift report ")
    assert any("fab fab-1: PSI" in line and "(retrain)" in line for line in lines), lines
    assert any("retraining started: job" in line for line in lines), lines
    assert lines[-1] == f"plot: {png}"
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    shown = cli("viewer", "drift", "report", "--json")
    assert shown.exit_code == 0, shown.output
    stored = json.loads(shown.output)
    assert lines[0] == f"drift report {stored['id']} of {stored['computed_at']}"
    assert stored["report"]["retrain"][0]["fab_id"] == "fab-1"
    assert len(stored["job_ids"]) == 1
