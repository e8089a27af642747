"""The cloud settings travel to another process (a worker) through the environment intact."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.settings import CloudSettings, GateSettings


def test_a_worker_rebuilds_the_same_settings_from_their_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = CloudSettings(
        work_dir=tmp_path / "cloud",
        data_dir=tmp_path / "data",
        database_url="postgresql+psycopg://postgres@127.0.0.1/test",
        db_schema="cloud_x",
        task_queue="q-1",
        task_always_eager=True,
        gate=GateSettings(min_accuracy=0.5, max_p99_ms=12.5),
    )
    for key, value in settings.environment().items():
        monkeypatch.setenv(key, value)
    rebuilt = CloudSettings()
    assert rebuilt == settings
    assert rebuilt.data_dir == tmp_path / "data"
    assert rebuilt.gate.min_accuracy == 0.5


def test_data_dir_is_taken_by_name_too(tmp_path: Path) -> None:
    assert CloudSettings(data_dir=tmp_path).data_dir == tmp_path
