"""The one-machine demo end to end: every tier it starts, the real contracts between them."""

import re
from pathlib import Path

from click.testing import CliRunner

from launcher.cli import main
from wafercore.classes import DefectClass


def test_demo_replays_wafers_through_two_edge_nodes_into_a_fab_server(tmp_path: Path) -> None:
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
