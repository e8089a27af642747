"""A job's config: a named config of configs_dir with dotted overrides, validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.pipeline.job_config import apply_overrides, available_configs, resolve_config
from cloud.settings import CloudSettings
from wafercore.errors import InvalidInput

SETTINGS = CloudSettings()


def _field(name: str, overrides: dict[str, object] | None = None, **kw: object) -> tuple[str, str]:
    settings = SETTINGS.model_copy(update=kw) if kw else SETTINGS
    with pytest.raises(InvalidInput) as caught:
        resolve_config(settings, name, overrides)
    return caught.value.field, caught.value.reason


def test_overrides_set_dotted_paths_and_the_result_is_validated() -> None:
    config = resolve_config(SETTINGS, "tiny", {"optim.epochs": 2, "cnn.channels": [4, 8, 8]})
    assert config.optim.epochs == 2 and config.cnn.channels == (4, 8, 8)
    assert config.optim.batch_size == 32  # the rest as the file says
    assert "tiny" in available_configs(SETTINGS) and "cnn64" in available_configs(SETTINGS)


def test_a_missing_section_is_created_so_an_override_can_turn_it_on() -> None:
    raw = {"semi": None, "optim": {"epochs": 3}}
    assert apply_overrides(raw, {"semi.ratio": 2}) == {"semi": {"ratio": 2}, "optim": {"epochs": 3}}
    assert raw["semi"] is None  # the input is not changed


def test_a_bad_override_is_named_with_its_path() -> None:
    field, reason = _field("tiny", {"optim.epochs": 0})
    assert field == "overrides.optim.epochs" and "greater than or equal to 1" in reason
    assert _field("tiny", {"optim.bogus": 1})[0] == "overrides.optim.bogus"
    assert _field("tiny", {"optim": {"epochs": "many"}})[0] == "overrides.optim"
    field, reason = _field("tiny", {"optim.epochs.deeper": 1})
    assert field == "overrides.optim.epochs.deeper" and "is a value, not a section" in reason
    assert _field("tiny", {"optim..epochs": 1})[0] == "overrides.optim..epochs"
    assert _field("tiny", {"kind": "rules"})[0] == "overrides.kind"


def test_an_unknown_or_malformed_config_name_is_refused() -> None:
    field, reason = _field("nope")
    assert field == "config_name" and reason.startswith("no config 'nope' (known: ")
    assert _field("../configs/tiny")[0] == "config_name"
    assert _field("tiny.yaml")[0] == "config_name"


def test_an_invalid_config_file_is_the_config_names_fault(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("kind: cnn\nversion: not-a-version\n")
    (tmp_path / "rules.yaml").write_text("kind: rules\nversion: rules-v1.0.0\n")
    field, reason = _field("broken", configs_dir=tmp_path)
    assert field == "config_name" and reason.startswith("version: ")
    field, reason = _field("rules", configs_dir=tmp_path)
    assert field == "config_name" and "exports no ONNX graph" in reason
