"""The model store: default model, activate, rollback, the persisted pointer, in-flight models."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.model_store import POINTER_FILE, STAGING_DIR, ModelStore, NoPreviousModel
from wafercore.encoding import TOKENS
from wafercore.runtime import MANIFEST_FILE, ModelLoadError, ModelManifest, ModelRuntime

DEFAULT = Path(__file__).resolve().parents[3] / "models" / "trm-v1.0.0"


def _store(root: Path) -> ModelStore:
    return ModelStore(root, default_model=DEFAULT, threads=1, warmup=1)


def _candidate(store: ModelStore, version: str) -> tuple[Path, ModelRuntime]:
    """The default model re-labelled ``version``, unpacked in a staging dir, loaded."""
    staged = store.staging_dir()
    shutil.copy(DEFAULT / "model.onnx", staged / "model.onnx")
    manifest = ModelManifest.from_json((DEFAULT / MANIFEST_FILE).read_text())
    relabelled = dataclasses.replace(manifest, version=version)
    (staged / MANIFEST_FILE).write_text(relabelled.to_json())
    return staged, ModelRuntime.load(staged, threads=1)


def _predict(store_model: ModelRuntime) -> int:
    return int(store_model.predict(np.zeros((1, TOKENS), dtype=np.uint8)).prediction[0])


def test_a_new_store_serves_the_default_model(tmp_path: Path) -> None:
    store = _store(tmp_path / "models")
    assert store.current.version == "trm-v1.0.0"
    assert store.current.path == DEFAULT
    assert store.previous_version is None
    with pytest.raises(NoPreviousModel):
        store.rollback()


def test_staging_dirs_are_fresh_and_inside_the_root(tmp_path: Path) -> None:
    store = _store(tmp_path / "models")
    first, second = store.staging_dir(), store.staging_dir()
    assert first != second
    assert first.is_dir() and not any(first.iterdir())
    assert first.parent == store.root / STAGING_DIR
    (first / "partial.tar").write_bytes(b"half a download")
    _store(tmp_path / "models")  # a restart drops what was never activated
    assert not first.exists()


def test_activate_swaps_keeps_the_previous_and_survives_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "models"
    store = _store(root)
    staged, runtime = _candidate(store, "trm-v1.1.0")
    store.activate(staged, runtime)
    assert store.current.version == "trm-v1.1.0"
    assert store.current.runtime is runtime
    assert store.current.path.parent == store.root and not staged.exists()
    assert store.previous_version == "trm-v1.0.0"
    pointer = json.loads((store.root / POINTER_FILE).read_text())
    assert pointer == {"current": store.current.path.name, "previous": str(DEFAULT)}

    restarted = _store(root)
    assert restarted.current.version == "trm-v1.1.0"
    assert restarted.current.path == store.current.path
    assert restarted.previous_version == "trm-v1.0.0"


def test_only_current_and_previous_are_kept_on_disk(tmp_path: Path) -> None:
    store = _store(tmp_path / "models")
    for version in ("trm-v1.1.0", "trm-v1.2.0", "trm-v1.3.0"):
        store.activate(*_candidate(store, version))
    installed = sorted(
        p.name.rsplit("-", 1)[0]
        for p in store.root.iterdir()
        if p.is_dir() and p.name != STAGING_DIR
    )
    assert installed == ["trm-v1.2.0", "trm-v1.3.0"]
    assert store.previous_version == "trm-v1.2.0"
    assert DEFAULT.is_dir()  # the shipped default is never deleted


def test_rollback_serves_the_previous_and_forgets_the_bad_one(tmp_path: Path) -> None:
    root = tmp_path / "models"
    store = _store(root)
    store.activate(*_candidate(store, "trm-v1.1.0"))
    bad_dir = store.current.path
    assert store.rollback() == "trm-v1.0.0"
    assert store.current.version == "trm-v1.0.0"
    assert store.previous_version is None
    assert not bad_dir.exists()
    with pytest.raises(NoPreviousModel):
        store.rollback()  # a second rollback cannot bring the bad model back
    assert _store(root).current.version == "trm-v1.0.0"


def test_rollback_after_a_restart_loads_the_previous_from_disk(tmp_path: Path) -> None:
    root = tmp_path / "models"
    store = _store(root)
    store.activate(*_candidate(store, "trm-v1.1.0"))
    store.activate(*_candidate(store, "trm-v1.2.0"))
    restarted = _store(root)
    assert restarted.rollback() == "trm-v1.1.0"
    assert _predict(restarted.current.runtime) == _predict(store.current.runtime)
    assert _store(root).current.version == "trm-v1.1.0"


def test_a_request_keeps_the_model_it_started_with(tmp_path: Path) -> None:
    """The swap is a reference assignment; a replaced model's directory may even be deleted."""
    store = _store(tmp_path / "models")
    store.activate(*_candidate(store, "trm-v1.1.0"))
    in_flight = store.current  # what a request read when it began
    expected = _predict(in_flight.runtime)
    store.activate(*_candidate(store, "trm-v1.2.0"))
    store.activate(*_candidate(store, "trm-v1.3.0"))
    assert not in_flight.path.exists()
    assert in_flight.version == "trm-v1.1.0"
    assert _predict(in_flight.runtime) == expected
    assert store.current.version == "trm-v1.3.0"


def test_activate_refuses_a_runtime_of_another_version(tmp_path: Path) -> None:
    store = _store(tmp_path / "models")
    staged, _ = _candidate(store, "trm-v1.1.0")
    other = ModelRuntime.load(DEFAULT, threads=1)
    with pytest.raises(ValueError, match=r"does not hold model trm-v1\.0\.0"):
        store.activate(staged, other)
    assert store.current.version == "trm-v1.0.0"
    assert store.previous_version is None


def test_an_unloadable_current_model_falls_back_to_the_previous(tmp_path: Path) -> None:
    root = tmp_path / "models"
    store = _store(root)
    store.activate(*_candidate(store, "trm-v1.1.0"))
    (store.current.path / "model.onnx").write_bytes(b"corrupted on disk")
    restarted = _store(root)
    assert restarted.current.version == "trm-v1.0.0"
    assert restarted.previous_version is None


def test_an_unreadable_pointer_serves_the_default(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (root / POINTER_FILE).write_text("{not json")
    assert _store(root).current.version == "trm-v1.0.0"


def test_no_loadable_model_at_all_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no model can be served"):
        ModelStore(tmp_path / "models", default_model=tmp_path / "missing", threads=1)
