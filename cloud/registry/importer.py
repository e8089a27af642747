"""Bring existing model folders into the registry: one folder, or every shipped model.

A folder is packaged and signed first (`cloud.signing.package_model` with the registry's key),
so an imported version is deployable like one the pipeline built.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from cloud.registry.provenance import read_manifest
from cloud.registry.registry import CHAMPION, ModelRegistry, ModelVersion, check_alias
from cloud.settings import CloudSettings
from cloud.signing import ensure_keypair, package_model
from wafercore.runtime import MANIFEST_FILE, MODEL_FILE
from wafercore.shipped import DEFAULT_MODEL_VERSION, shipped_model_dir

log = logging.getLogger(__name__)

DEFAULT_GOLDEN = 64
"""Golden wafers in an imported model's artifact (as ``wafer-cloud package``)."""
SHIPPED_ACTOR = "system:import-shipped"
"""The actor of the shipped models' registration in the history."""


def import_model_folder(
    registry: ModelRegistry,
    settings: CloudSettings,
    folder: Path,
    *,
    actor: str,
    reason: str,
    alias: str | None = None,
    golden: int = DEFAULT_GOLDEN,
) -> ModelVersion:
    """Package, sign and register a model folder; a version already registered is returned as is.

    Args:
        registry: the registry to register into.
        settings: where the signing key is (`cloud.signing.ensure_keypair`).
        folder: a model folder (``model.onnx``, ``model.json``, reports, card).
        actor: who imports it, for the history.
        reason: why, for the history.
        alias: an alias to give the new version.
        golden: golden wafers in its artifact.

    Raises:
        InvalidInput: not a model folder, or an unknown alias.
        wafercore.runtime.ModelLoadError: the graph cannot be served.
    """
    manifest = read_manifest(folder)
    if alias is not None:
        check_alias(alias)
    existing = registry.find(manifest.version)
    if existing is not None:
        return existing
    private_key, key_id = ensure_keypair(settings)
    with tempfile.TemporaryDirectory(prefix="import-") as work:
        artifact = package_model(
            folder,
            Path(work) / f"{manifest.version}.tar",
            private_key=private_key,
            key_id=key_id,
            golden=golden,
        )
        return registry.register(
            folder,
            artifact.path,
            actor=actor,
            reason=reason,
            tags={"source": "import"},
            alias=alias,
            key_id=key_id,
        )


def shipped_folders() -> list[Path]:
    """Every shipped model folder that holds a servable model (graph and manifest), by name."""
    root = shipped_model_dir(DEFAULT_MODEL_VERSION).parent
    return sorted(
        path
        for path in root.iterdir()
        if (path / MODEL_FILE).is_file() and (path / MANIFEST_FILE).is_file()
    )


def import_shipped(
    registry: ModelRegistry, settings: CloudSettings, *, golden: int = DEFAULT_GOLDEN
) -> list[ModelVersion]:
    """Register every shipped model not registered yet; the default one as ``champion``.

    The default model becomes champion only when it is newly registered and no version holds
    ``champion`` yet, so running this again (every start) changes nothing, and never takes the
    champion alias from a model promoted since.

    Returns:
        The versions registered by this call (empty when all were there).
    """
    imported = []
    for folder in shipped_folders():
        version = read_manifest(folder).version
        if registry.find(version) is not None:
            continue
        is_default = folder.name == DEFAULT_MODEL_VERSION
        alias = CHAMPION if is_default and registry.by_alias(CHAMPION) is None else None
        reason = "shipped with the platform" + (" (the default model)" if is_default else "")
        imported.append(
            import_model_folder(
                registry,
                settings,
                folder,
                actor=SHIPPED_ACTOR,
                reason=reason,
                alias=alias,
                golden=golden,
            )
        )
        log.info("imported shipped model %s%s", version, f" as {alias}" if alias else "")
    return imported
