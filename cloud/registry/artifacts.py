"""A local copy of each registered version's signed artifact, for the API to stream.

An artifact never changes once registered, so the copy is kept by its SHA-256 (the registry's
record of it): the first download fetches it from the registry's store (which checks it against
that digest); later downloads stream the copy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wafercore.artifact import SIGNATURE_SUFFIX

if TYPE_CHECKING:
    from cloud.registry.registry import ModelRegistry, ModelVersion

logger = logging.getLogger(__name__)


class CorruptArtifactError(RuntimeError):
    """The registry's store holds an artifact without its signature."""


@dataclass(frozen=True)
class LocalArtifact:
    """A verified local copy of a version's signed artifact and its detached signature."""

    model: ModelVersion
    path: Path
    signature_path: Path


class ArtifactCache:
    """Verified copies of signed artifacts in ``root``, one folder per SHA-256."""

    def __init__(self, root: Path) -> None:
        """Keep copies under ``root`` (created on first use)."""
        self.root = root

    def fetch(self, registry: ModelRegistry, version: str) -> LocalArtifact:
        """The local copy of ``version``'s artifact, downloaded and checked the first time.

        Raises:
            cloud.errors.NotFound: no such version.
            CorruptArtifactError: the registry holds no signature of it.
            RuntimeError: the stored bytes are not the ones the registry recorded.
        """
        model = registry.get(version)
        folder = self.root / model.artifact_sha256
        found = _artifact_in(folder)
        if found is None:
            self._download(registry, model, folder)
            found = _artifact_in(folder)
            assert found is not None  # just downloaded and checked
        return LocalArtifact(model, found, found.with_name(found.name + SIGNATURE_SUFFIX))

    def _download(self, registry: ModelRegistry, model: ModelVersion, folder: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".download-"))
        try:
            # The registry checks the downloaded bytes against the sha256 it recorded.
            path = registry.artifact(model.version, staging)
            if not path.with_name(path.name + SIGNATURE_SUFFIX).is_file():
                raise CorruptArtifactError(f"the registry holds no signature of {model.version}")
            # A rename publishes the folder whole; another request that got there first wins.
            with contextlib.suppress(OSError):
                os.rename(path.parent, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _artifact_in(folder: Path) -> Path | None:
    """The artifact in a published cache folder (the one file with its signature beside it)."""
    if not folder.is_dir():
        return None
    for path in folder.iterdir():
        if path.is_file() and path.with_name(path.name + SIGNATURE_SUFFIX).is_file():
            return path
    return None
