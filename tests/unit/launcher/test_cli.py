from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from launcher.cli import main
from wafercore.classes import CLASS_NAMES
from wafercore.dataset import WaferDataset
from wafercore.readers.npz import write_npz


@pytest.mark.parametrize("name", ["wafer-edge", "wafer-fab", "wafer-cloud", "wafer-platform"])
def test_every_console_entry_point_answers_help(name: str) -> None:
    (ep,) = entry_points(group="console_scripts", name=name)
    result = CliRunner().invoke(ep.load(), ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_data_stats_counts_classes_per_split(tmp_path: Path) -> None:
    maps = [np.zeros((3, 3), np.uint8)] * 5
    ds = WaferDataset.from_maps(
        maps,
        labels=[0, 0, 8, 8, 1],
        split=["Training", "Test", "Test", "Test", "Training"],
        lot=["a", "b", "b", "b", "a"],
    )
    path = tmp_path / "tiny.npz"
    write_npz(ds, path)
    result = CliRunner().invoke(main, ["data", "stats", "--data", str(path)])
    assert result.exit_code == 0, result.output
    lines = _class_rows(result.output)
    assert lines["None"][-3:] == ["1", "1", "2"]  # Test, Training, total
    assert lines["Scratch"][-3:] == ["2", "0", "2"]
    assert "5 maps, 2 lots" in result.output


def test_data_stats_matches_the_wm811k_readme(wafer_data_dir: Path) -> None:
    result = CliRunner().invoke(
        main, ["data", "stats", "--data", str(wafer_data_dir / "labelled.npz")]
    )
    assert result.exit_code == 0, result.output
    totals = {name: row[-1] for name, row in _class_rows(result.output).items()}
    assert totals == {
        "None": "125,390",
        "Center": "4,116",
        "Donut": "514",
        "Edge-Loc": "4,671",
        "Edge-Ring": "9,461",
        "Loc": "3,161",
        "Near-Full": "121",
        "Random": "767",
        "Scratch": "1,072",
    }
    assert "94,918" in result.output and "54,355" in result.output


def test_data_stats_names_a_missing_file() -> None:
    result = CliRunner().invoke(main, ["data", "stats", "--data", "/nonexistent.npz"])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def _class_rows(output: str) -> dict[str, list[str]]:
    rows = [line.split() for line in output.splitlines()]
    return {r[1]: r for r in rows if len(r) > 2 and r[0].isdigit() and r[1] in CLASS_NAMES}
