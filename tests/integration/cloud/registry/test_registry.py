"""The model registry on a real `mlflow server` and the cloud database on PostgreSQL: versions
with their provenance, aliases and their history, idempotent registration, artifacts a node
accepts, and the shipped models imported once."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloud.errors import NotFound
from cloud.registry.importer import import_model_folder, import_shipped, shipped_folders
from cloud.registry.provenance import read_manifest
from cloud.registry.registry import ModelRegistry
from cloud.settings import CloudSettings
from cloud.signing import Artifact, ensure_keypair, package_model
from cloud.storage.db import Database
from wafercore.artifact import GOLDEN_FILE, GoldenSet, check_golden, unpack_artifact
from wafercore.errors import InvalidInput
from wafercore.runtime import ModelRuntime
from wafercore.shipped import DEFAULT_MODEL_VERSION
from wafercore.signature import SignatureError, verify_artifact

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOURCE_MODEL = Path(__file__).resolve().parents[4] / "models" / "cnn-v1.1.0"
"""A small shipped model with a report and a model card; copies of it are registered."""
GOLDEN = 16
"""Golden wafers per artifact: enough to cover every class, quick to package."""


@pytest.fixture
def db(cloud_settings: CloudSettings) -> Iterator[Database]:
    database = Database(cloud_settings.db_url, cloud_settings.db_schema)
    yield database
    database.dispose()


@pytest.fixture
def registry(cloud_settings: CloudSettings, db: Database) -> ModelRegistry:
    return ModelRegistry(cloud_settings, db)


def model_copy(target: Path, version: str) -> Path:
    """The source model's folder (graph, manifest, reports, card) under another version."""
    shutil.copytree(SOURCE_MODEL, target)
    manifest = json.loads((target / "model.json").read_text())
    manifest["version"] = version
    (target / "model.json").write_text(json.dumps(manifest))
    return target


def packaged(settings: CloudSettings, folder: Path) -> Artifact:
    """The folder's signed artifact, signed with the registry's (development) key."""
    private_key, key_id = ensure_keypair(settings)
    out = folder.parent / f"{folder.name}.tar"
    return package_model(folder, out, private_key=private_key, key_id=key_id, golden=GOLDEN)


def register(
    registry: ModelRegistry,
    settings: CloudSettings,
    tmp_path: Path,
    version: str,
    alias: str | None = None,
) -> None:
    folder = model_copy(tmp_path / version, version)
    artifact = packaged(settings, folder)
    registry.register(
        folder, artifact.path, actor="test", reason=f"{version} for the test", alias=alias
    )


def test_a_registered_version_carries_its_files_provenance_metrics_and_alias(
    registry: ModelRegistry, cloud_settings: CloudSettings, tmp_path: Path
) -> None:
    folder = model_copy(tmp_path / "cnn-v9.0.0", "cnn-v9.0.0")
    artifact = packaged(cloud_settings, folder)
    model = registry.register(
        folder,
        artifact.path,
        actor="pipeline:job-1",
        reason="gate passed",
        tags={"job_id": "job-1", "gate_verdict": "passed"},
        alias="candidate",
        key_id=artifact.key_id,
    )

    extra = json.loads((SOURCE_MODEL / "model.json").read_text())["extra"]
    report = json.loads((SOURCE_MODEL / "report.json").read_text())
    assert (model.version, model.aliases) == ("cnn-v9.0.0", ("candidate",))
    assert model.artifact_sha256 == artifact.sha256 == model.tags["artifact_sha256"]
    assert model.tags["model_version"] == "cnn-v9.0.0"
    assert model.tags["data_sha256"] == extra["data"]["sha256"]
    assert model.tags["data_protocol"] == "official"
    assert model.tags["code_version"] == extra["code_version"]
    assert json.loads(model.tags["config"]) == extra["training"]
    assert (model.tags["job_id"], model.tags["gate_verdict"]) == ("job-1", "passed")
    assert model.signing_key_id == cloud_settings.signing_key_id
    assert model.metrics["macro_f1"] == pytest.approx(report["macro_f1"])
    assert model.metrics["accuracy"] == pytest.approx(report["accuracy"])
    assert model.metrics["p99_ms"] == pytest.approx(report["latency_ms"]["p99"])
    assert model.created_at.tzinfo is not None

    assert registry.versions() == [model]
    assert registry.get("cnn-v9.0.0") == model
    assert registry.by_alias("candidate") == model
    assert registry.by_alias("champion") is None
    assert registry.report("cnn-v9.0.0") == report

    downloaded = registry.download_model("cnn-v9.0.0", tmp_path / "download")
    names = {p.name for p in downloaded.iterdir()}
    assert {"model.onnx", "model.json", "report.json", "report.md", "MODEL_CARD.md"} <= names
    assert (downloaded / "model.onnx").read_bytes() == (folder / "model.onnx").read_bytes()
    assert ModelRuntime.load(downloaded).version == "cnn-v9.0.0"

    events = registry.history("cnn-v9.0.0")
    assert [(e.action, e.alias, e.actor, e.reason) for e in events] == [
        ("registered", None, "pipeline:job-1", "gate passed"),
        ("alias_set", "candidate", "pipeline:job-1", "gate passed"),
    ]


def test_registering_a_version_again_returns_it_unchanged(
    registry: ModelRegistry, cloud_settings: CloudSettings, tmp_path: Path
) -> None:
    folder = model_copy(tmp_path / "cnn-v9.0.0", "cnn-v9.0.0")
    artifact = packaged(cloud_settings, folder)
    first = registry.register(
        folder, artifact.path, actor="a", reason="first", tags={"job_id": "1"}, alias="candidate"
    )
    again = registry.register(
        folder, artifact.path, actor="b", reason="again", tags={"job_id": "2"}, alias="champion"
    )
    assert again == first
    assert again.aliases == ("candidate",) and again.tags["job_id"] == "1"
    assert [v.version for v in registry.versions()] == ["cnn-v9.0.0"]
    assert [e.action for e in registry.history()] == ["registered", "alias_set"]


def test_moving_champion_moves_the_old_one_to_previous_and_records_each_move(
    registry: ModelRegistry, cloud_settings: CloudSettings, tmp_path: Path
) -> None:
    register(registry, cloud_settings, tmp_path, "cnn-v9.0.1", alias="champion")
    register(registry, cloud_settings, tmp_path, "cnn-v9.0.2")
    register(registry, cloud_settings, tmp_path, "cnn-v9.0.3", alias="candidate")
    start = len(registry.history())

    moved = registry.set_alias("cnn-v9.0.2", "champion", actor="cli:ana", reason="better F1")
    assert moved.aliases == ("champion",)
    assert registry.get("cnn-v9.0.1").aliases == ("previous",)
    promoted = registry.set_alias("cnn-v9.0.3", "champion", actor="cli:bo", reason="canary ok")
    # Promoting the candidate takes its `candidate` alias: it is no longer waiting.
    assert promoted.aliases == ("champion",)
    aliases = {v.version: v.aliases for v in registry.versions()}
    assert aliases == {
        "cnn-v9.0.3": ("champion",),
        "cnn-v9.0.2": ("previous",),
        "cnn-v9.0.1": (),
    }
    assert registry.by_alias("candidate") is None

    moves = [
        (e.actor, e.action, e.model_version, e.alias, e.previous_version)
        for e in registry.history()[start:]
    ]
    assert moves == [
        ("cli:ana", "alias_set", "cnn-v9.0.2", "champion", "cnn-v9.0.1"),
        ("cli:ana", "alias_set", "cnn-v9.0.1", "previous", None),
        ("cli:bo", "alias_set", "cnn-v9.0.3", "champion", "cnn-v9.0.2"),
        ("cli:bo", "alias_set", "cnn-v9.0.2", "previous", "cnn-v9.0.1"),
        ("cli:bo", "alias_removed", "cnn-v9.0.3", "candidate", None),
    ]
    reasons = [e.reason for e in registry.history()[start:]]
    assert reasons[0] == "better F1" and "canary ok" in reasons[3]
    # The version that lost `previous` sees that move in its own history.
    assert registry.history("cnn-v9.0.1")[-1].model_version == "cnn-v9.0.2"

    # Setting an alias where it already is changes nothing and records nothing.
    before = registry.history()
    registry.set_alias("cnn-v9.0.3", "champion", actor="cli:ana", reason="again")
    assert registry.history() == before


def test_unknown_versions_and_aliases_are_refused(
    registry: ModelRegistry, cloud_settings: CloudSettings, tmp_path: Path
) -> None:
    assert registry.versions() == []
    with pytest.raises(NotFound):
        registry.get("cnn-v0.0.0")
    assert registry.find("cnn-v0.0.0") is None
    assert registry.by_alias("champion") is None

    register(registry, cloud_settings, tmp_path, "cnn-v9.0.0")
    with pytest.raises(NotFound):
        registry.get("cnn-v0.0.0")
    with pytest.raises(NotFound):
        registry.set_alias("cnn-v0.0.0", "champion", actor="a", reason="r")
    with pytest.raises(InvalidInput) as bad_version:
        registry.get("cnn' or name != '")
    assert bad_version.value.field == "version"
    with pytest.raises(InvalidInput) as bad_alias:
        registry.set_alias("cnn-v9.0.0", "gold", actor="a", reason="r")
    assert bad_alias.value.field == "alias"
    assert registry.get("cnn-v9.0.0").aliases == ()


def test_register_refuses_an_artifact_of_another_version_or_without_its_signature(
    registry: ModelRegistry, cloud_settings: CloudSettings, tmp_path: Path
) -> None:
    one = model_copy(tmp_path / "cnn-v9.0.1", "cnn-v9.0.1")
    two = model_copy(tmp_path / "cnn-v9.0.2", "cnn-v9.0.2")
    artifact_of_two = packaged(cloud_settings, two)
    with pytest.raises(InvalidInput, match=r"holds cnn-v9\.0\.2") as other:
        registry.register(one, artifact_of_two.path, actor="a", reason="r")
    assert other.value.field == "artifact"
    artifact_of_two.signature_path.unlink()
    with pytest.raises(InvalidInput, match=r"\.sig") as unsigned:
        registry.register(two, artifact_of_two.path, actor="a", reason="r")
    assert unsigned.value.field == "artifact"
    assert registry.versions() == [] and registry.history() == []


def test_an_artifact_fetched_from_the_registry_verifies_and_loads_on_a_node(
    registry: ModelRegistry, cloud_settings: CloudSettings, tmp_path: Path
) -> None:
    folder = model_copy(tmp_path / "cnn-v9.0.0", "cnn-v9.0.0")
    model = import_model_folder(
        registry, cloud_settings, folder, actor="test", reason="r", golden=GOLDEN
    )
    path = registry.artifact("cnn-v9.0.0", tmp_path / "fetched")
    signature = path.with_name(path.name + ".sig").read_bytes()

    # The node's side: only the public key pinned; verify, unpack, load, golden-check.
    private_key, key_id = ensure_keypair(cloud_settings)
    assert model.signing_key_id == key_id
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(private_key.with_suffix(".pub"), trusted / f"{key_id}.pub")
    verify_artifact(path, signature, key_id, trusted, expected_sha256=model.artifact_sha256)
    unpacked = unpack_artifact(path, tmp_path / "candidate")
    runtime = ModelRuntime.load(unpacked)
    assert runtime.version == "cnn-v9.0.0"
    check_golden(runtime, GoldenSet.load(unpacked / GOLDEN_FILE))

    tampered = tmp_path / "tampered.tar"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(SignatureError):
        verify_artifact(tampered, signature, key_id, trusted)


def test_a_novelty_model_travels_through_the_registry_to_a_node(
    registry: ModelRegistry,
    cloud_settings: CloudSettings,
    tmp_path: Path,
    novelty_model: Callable[..., Path],
) -> None:
    folder = novelty_model(tmp_path / "cnn-v9.1.0")
    manifest = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**manifest, "version": "cnn-v9.1.0"}))
    import_model_folder(registry, cloud_settings, folder, actor="test", reason="r", golden=GOLDEN)

    downloaded = registry.download_model("cnn-v9.1.0", tmp_path / "download")
    assert {"novelty.onnx", "novelty.json"} <= {p.name for p in downloaded.iterdir()}
    unpacked = unpack_artifact(
        registry.artifact("cnn-v9.1.0", tmp_path / "fetched"), tmp_path / "node"
    )
    runtime = ModelRuntime.load(unpacked)
    golden = GoldenSet.load(unpacked / GOLDEN_FILE)
    assert runtime.novelty is not None and golden.novelty is not None
    check_golden(runtime, golden)


def test_import_shipped_makes_the_default_model_champion_and_then_does_nothing(
    registry: ModelRegistry, cloud_settings: CloudSettings
) -> None:
    shipped = {read_manifest(folder).version for folder in shipped_folders()}
    assert DEFAULT_MODEL_VERSION in shipped and len(shipped) > 1

    imported = import_shipped(registry, cloud_settings, golden=GOLDEN)
    assert {v.version for v in imported} == shipped
    champion = registry.by_alias("champion")
    assert champion is not None and champion.version == DEFAULT_MODEL_VERSION
    assert {v.version for v in registry.versions() if v.aliases} == {DEFAULT_MODEL_VERSION}
    events = registry.history()
    assert sum(e.action == "registered" for e in events) == len(shipped)
    assert [(e.model_version, e.alias) for e in events if e.action == "alias_set"] == [
        (DEFAULT_MODEL_VERSION, "champion")
    ]

    versions = registry.versions()
    assert import_shipped(registry, cloud_settings, golden=GOLDEN) == []
    assert registry.versions() == versions
    assert registry.history() == events
