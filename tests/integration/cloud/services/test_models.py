"""The model services on a real `mlflow server` and PostgreSQL: detail with report and history,
validated alias moves."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.errors import NotFound
from cloud.registry.importer import import_model_folder
from cloud.registry.registry import ModelRegistry
from cloud.services import models
from cloud.settings import CloudSettings
from cloud.storage.db import Database
from wafercore.errors import InvalidInput

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOURCE_MODEL = Path(__file__).resolve().parents[4] / "models" / "cnn-v1.1.0"
VERSION = "cnn-v9.0.0"


@pytest.fixture
def registry(cloud_settings: CloudSettings, tmp_path: Path) -> Iterator[ModelRegistry]:
    """A registry holding a copy of the source model as ``VERSION``."""
    db = Database(cloud_settings.db_url, cloud_settings.db_schema)
    registry = ModelRegistry(cloud_settings, db)
    folder = tmp_path / VERSION
    shutil.copytree(SOURCE_MODEL, folder)
    manifest = json.loads((folder / "model.json").read_text())
    manifest["version"] = VERSION
    (folder / "model.json").write_text(json.dumps(manifest))
    import_model_folder(registry, cloud_settings, folder, actor="cli:ana", reason="r", golden=16)
    yield registry
    db.dispose()


def test_get_model_returns_the_version_its_report_and_history(registry: ModelRegistry) -> None:
    detail = models.get_model(registry, VERSION)
    assert detail.model == registry.get(VERSION)
    assert detail.report == json.loads((SOURCE_MODEL / "report.json").read_text())
    assert [(e.action, e.actor) for e in detail.history] == [("registered", "cli:ana")]
    assert models.list_models(registry) == [detail.model]
    with pytest.raises(NotFound):
        models.get_model(registry, "cnn-v0.0.0")


def test_set_alias_names_the_field_at_fault(registry: ModelRegistry) -> None:
    for alias, actor, reason, field in [
        ("gold", "cli:ana", "r", "alias"),
        ("champion", "", "r", "actor"),
        ("champion", "cli:ana", "  ", "reason"),
    ]:
        with pytest.raises(InvalidInput) as refused:
            models.set_alias(registry, VERSION, alias, actor=actor, reason=reason)
        assert refused.value.field == field
    assert registry.get(VERSION).aliases == ()

    moved = models.set_alias(registry, VERSION, "champion", actor="cli:ana", reason=" best ")
    assert moved.aliases == ("champion",)
    assert registry.history(VERSION)[-1].reason == "best"
