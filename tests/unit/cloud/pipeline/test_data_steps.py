"""The collect step's pieces: reviewed labels as training rows, joined to the WM-811K data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from cloud.pipeline.context import StepFailed
from cloud.pipeline.data_steps import _concat, _reviewed_rows, parse_label
from cloud.pipeline.synthetic_data import write_tiny_dataset
from cloud.storage.labels import ReviewedLabel
from wafercore.classes import DefectClass
from wafercore.readers.npz import read_npz, write_npz

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _label(wafer: str, label: str, days: int = 0, grid: np.ndarray | None = None) -> ReviewedLabel:
    grid = np.array([[2, 0, 2], [0, 1, 0]], np.uint8) if grid is None else grid
    return ReviewedLabel(
        fab_id="fab",
        wafer_key=wafer,
        lot_key="lot",
        reviewer_key="r",
        label=label,
        reviewed_at=T0 + timedelta(days=days),
        rows=grid.shape[0],
        cols=grid.shape[1],
        map_bytes=grid.tobytes(),
    )


def test_labels_are_read_by_display_name_wm811k_label_or_enum_name() -> None:
    assert parse_label("Edge-Ring") is DefectClass.EDGE_RING
    assert parse_label("Near-full") is DefectClass.NEAR_FULL
    assert parse_label("EDGE_LOC") is DefectClass.EDGE_LOC
    with pytest.raises(KeyError, match="unknown defect class 'Blob'"):
        parse_label("Blob")


def test_each_reviewed_wafer_with_a_map_is_one_training_row_with_its_latest_label() -> None:
    rows = _reviewed_rows(
        [
            _label("w1", "Loc", days=0),
            _label("w1", "Scratch", days=1),  # the later review wins
            _label("w2", "Center"),
            ReviewedLabel("fab", "w3", "lot", "r", "Donut", T0),  # no map: not trainable
        ]
    )
    assert len(rows) == 2 and list(rows.labels) == [DefectClass.SCRATCH, DefectClass.CENTER]
    assert list(rows.split) == ["Training", "Training"] and rows.lot[0] == "fab:lot"
    assert np.array_equal(rows.map(0), [[2, 0, 2], [0, 1, 0]])


def test_a_map_that_is_not_canonical_die_values_fails_the_step() -> None:
    bad = _label("w1", "Loc", grid=np.array([[3, 0], [0, 0]], np.uint8))
    with pytest.raises(StepFailed, match="w1 is not 2x2 canonical die values"):
        _reviewed_rows([bad])
    with pytest.raises(StepFailed, match="unknown defect class 'Blob'"):
        _reviewed_rows([_label("w1", "Blob")])


def test_reviewed_rows_join_the_source_data_and_survive_the_npz_layout(tmp_path: Path) -> None:
    source = read_npz(
        write_tiny_dataset(tmp_path / "tiny.npz", train_per_class=2, test_per_class=1)
    )
    joined = _concat(source, _reviewed_rows([_label("w1", "Donut")]))
    write_npz(joined, tmp_path / "joined.npz")
    back = read_npz(tmp_path / "joined.npz")
    assert len(back) == len(source) + 1 == 9 * 3 + 1
    assert back.labels[-1] == DefectClass.DONUT and back.split[-1] == "Training"
    assert np.array_equal(back.map(0), source.map(0))
    assert np.array_equal(back.map(len(source)), [[2, 0, 2], [0, 1, 0]])
    assert set(source.split) == {"Training", "Test"}
    assert not set(source.lot[source.split == "Test"]) & set(source.lot[source.split == "Training"])
