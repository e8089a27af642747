"""The model registry: every model version as a registered version of one MLflow model.

Each version is an MLflow run holding the model folder (graph, manifest, reports, figures,
card) and the signed artifact (``<version>.tar`` and its ``.sig``), and a registered version of
``settings.registered_model`` created from that run (`cloud.registry.mlflow_store`). Our
version string (``cnn-v2.0.0``) is the version's ``model_version`` tag, so MLflow's numbers
never leak out. Aliases (``champion``, ``candidate``, ``previous``) are MLflow aliases; every
move of one, and every registration and deployment request, is also an event of the deployment
history in the cloud database, which MLflow lacks.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.entities.model_registry import ModelVersion as MlflowModelVersion
from sqlalchemy.orm import Session

from cloud.errors import NotFound
from cloud.registry import provenance
from cloud.registry.mlflow_store import (
    ARTIFACT_DIR,
    ARTIFACT_SUFFIX,
    MODEL_DIR,
    MlflowStore,
    run_id_of,
)
from cloud.registry.provenance import (
    TAG_ARTIFACT_SHA256,
    TAG_MODEL_VERSION,
    TAG_SIGNING_KEY_ID,
    check_version,
)
from cloud.settings import CloudSettings
from cloud.storage import history
from cloud.storage.db import Database
from cloud.storage.history import DeploymentEvent
from wafercore.artifact import SIGNATURE_SUFFIX
from wafercore.errors import InvalidInput
from wafercore.runtime import ModelManifest, file_sha256

CHAMPION, CANDIDATE, PREVIOUS = "champion", "candidate", "previous"
ALIASES = (CHAMPION, CANDIDATE, PREVIOUS)
"""The aliases a version may hold: what serves, what waits for promotion, what served before."""


@dataclass(frozen=True)
class ModelVersion:
    """A registered model version.

    Attributes:
        version: our version string, from ``model.json`` (``cnn-v2.0.0``); unique.
        mlflow_version: MLflow's number of the version of the registered model.
        aliases: the aliases it holds now.
        tags: provenance (data sha256, config, code version, job id), gate verdict, digests.
        metrics: from ``report.json``: macro_f1, accuracy, ece, p99_ms, gflops_per_wafer.
        artifact_sha256: sha256 of the signed artifact file.
        created_at: when it was registered (aware, UTC).
    """

    version: str
    mlflow_version: int
    aliases: tuple[str, ...]
    tags: dict[str, str]
    metrics: dict[str, float]
    artifact_sha256: str
    created_at: datetime

    @property
    def signing_key_id(self) -> str | None:
        """Id of the key that signed the artifact (nodes pin ``<key id>.pub``), if recorded."""
        return self.tags.get(TAG_SIGNING_KEY_ID)


def check_alias(alias: str) -> str:
    """``alias`` if it is one of `ALIASES`.

    Raises:
        InvalidInput: naming ``alias``.
    """
    if alias not in ALIASES:
        raise InvalidInput("alias", f"{alias!r} is not one of {list(ALIASES)}")
    return alias


def _held_aliases(aliases: Mapping[str, str], number: str) -> tuple[str, ...]:
    """The aliases pointing at MLflow version ``number``: ours in `ALIASES` order, then others."""
    held = [alias for alias, holder in aliases.items() if holder == number]
    return tuple(
        sorted(held, key=lambda a: (ALIASES.index(a) if a in ALIASES else len(ALIASES), a))
    )


class ModelRegistry:
    """The registered versions of ``settings.registered_model`` and their deployment history."""

    def __init__(self, settings: CloudSettings, db: Database) -> None:
        """A registry on the settings' MLflow server and the cloud database ``db`` (migrated).

        Raises:
            ValueError: a registered model name that cannot be used in MLflow's filters.
        """
        self._db = db
        self._store = MlflowStore(settings.mlflow_tracking_uri, settings.registered_model)
        self.name = settings.registered_model

    # -- registering ---------------------------------------------------------------------------

    def register(
        self,
        model_dir: Path,
        artifact: Path,
        *,
        actor: str,
        reason: str,
        tags: Mapping[str, str] | None = None,
        alias: str | None = None,
        key_id: str | None = None,
    ) -> ModelVersion:
        """Register a model folder and its signed artifact as a version of the registered model.

        Idempotent per version string: registering a version again returns it unchanged (its
        aliases untouched). A registration interrupted after MLflow created the version but
        before the history recorded it is completed instead (alias set, events recorded).

        Args:
            model_dir: the model folder (``model.onnx``, ``model.json``, reports, card).
            artifact: its signed artifact (``cloud.signing.package_model``), ``.sig`` beside it.
            actor: who registers it (``cli:alice``, ``pipeline:<job id>``).
            reason: why, for the history.
            tags: more tags of the version (job id, gate verdict); ours win on a clash.
            alias: an alias to give it (`ALIASES`), as `set_alias` would.
            key_id: id of the key that signed the artifact, kept as the ``signing_key_id`` tag.

        Raises:
            InvalidInput: a folder that is not a model, a missing artifact or signature, an
                artifact of another version, or an unknown alias.
        """
        manifest = provenance.read_manifest(model_dir)
        version = manifest.version
        if alias is not None:
            check_alias(alias)
        with self._db.session() as session:
            found = self._store.find(version)
            complete = history.has_event(session, model_version=version, action=history.REGISTERED)
            if found is not None and complete:
                return self._one(found)
            if found is None:
                found = self._create(model_dir, manifest, artifact, tags or {}, key_id)
            history.record_event(
                session,
                actor=actor,
                action=history.REGISTERED,
                model_version=version,
                reason=reason,
            )
            if alias is not None:
                self._move_alias(session, found, alias, actor=actor, reason=reason)
        return self.get(version)

    def _create(
        self,
        model_dir: Path,
        manifest: ModelManifest,
        artifact: Path,
        extra_tags: Mapping[str, str],
        key_id: str | None,
    ) -> MlflowModelVersion:
        """Log the run and create the registered version from it."""
        signature = artifact.with_name(artifact.name + SIGNATURE_SUFFIX)
        if not artifact.is_file():
            raise InvalidInput("artifact", f"{artifact} does not exist")
        if not signature.is_file():
            raise InvalidInput(
                "artifact", f"{artifact} has no signature {signature.name} beside it"
            )
        inside = provenance.artifact_version(artifact)
        if inside != manifest.version:
            raise InvalidInput(
                "artifact", f"{artifact} holds {inside}, the model folder is {manifest.version}"
            )
        tags = {key: str(value) for key, value in extra_tags.items()}
        tags.update(provenance.provenance_tags(manifest))
        tags[TAG_MODEL_VERSION] = manifest.version
        tags[TAG_ARTIFACT_SHA256] = file_sha256(artifact)
        if key_id is not None:
            tags[TAG_SIGNING_KEY_ID] = key_id
        metrics = provenance.report_metrics(provenance.read_report(model_dir))
        return self._store.create_version(
            model_dir,
            artifact,
            version=manifest.version,
            tags=tags,
            metrics=metrics,
            description=f"{manifest.version} ({manifest.kind})",
        )

    # -- reading -------------------------------------------------------------------------------

    def versions(self) -> list[ModelVersion]:
        """Every registered version, newest first."""
        found = self._store.all_versions()
        if not found:
            return []
        aliases = self._store.aliases()
        metrics = self._store.run_metrics([run_id_of(mv) for mv in found])
        versions = [self._to_domain(mv, aliases, metrics) for mv in found]
        return sorted(versions, key=lambda v: v.mlflow_version, reverse=True)

    def get(self, version: str) -> ModelVersion:
        """The registered version ``version``.

        Raises:
            InvalidInput: ``version`` is not a version string.
            NotFound: no such version is registered.
        """
        found = self._require(version)
        return self._one(found)

    def find(self, version: str) -> ModelVersion | None:
        """The registered version ``version``, or None (no `NotFound`)."""
        found = self._store.find(check_version(version))
        if found is None:
            return None
        return self._one(found)

    def by_alias(self, alias: str) -> ModelVersion | None:
        """The version holding ``alias``, or None when none does.

        Raises:
            InvalidInput: an unknown alias.
        """
        holder = self._store.aliases().get(check_alias(alias))
        if holder is None:
            return None
        found = self._store.version(holder)
        return self._one(found)

    def report(self, version: str) -> dict[str, Any] | None:
        """The version's ``report.json``, or None when it was registered without one.

        Raises:
            InvalidInput, NotFound: as `get`.
        """
        found = self._require(version)
        wanted = f"{MODEL_DIR}/{provenance.REPORT_FILE}"
        if wanted not in self._store.run_files(run_id_of(found), MODEL_DIR):
            return None
        with tempfile.TemporaryDirectory(prefix="registry-") as work:
            self._store.download(run_id_of(found), wanted, Path(work))
            return provenance.read_report(Path(work))

    def history(self, version: str | None = None) -> list[DeploymentEvent]:
        """The deployment history, oldest first: all of it, or the events about ``version``."""
        if version is not None:
            check_version(version)
        with self._db.session() as session:
            return history.list_events(session, model_version=version)

    # -- files ---------------------------------------------------------------------------------

    def download_model(self, version: str, dest: Path) -> Path:
        """Download the version's model folder into ``dest`` (created if missing).

        Returns:
            ``dest``, holding ``model.onnx``, ``model.json`` and the reports and card.

        Raises:
            InvalidInput, NotFound: as `get`.
        """
        found = self._require(version)
        self._store.download(run_id_of(found), MODEL_DIR, dest)
        return dest

    def artifact(self, version: str, dest: Path) -> Path:
        """Download the version's signed artifact (and its ``.sig`` beside it) into ``dest``.

        Returns:
            The artifact file, ``dest / "<version>.tar"``, its sha256 checked against the tag.

        Raises:
            InvalidInput, NotFound: as `get`.
            RuntimeError: the stored artifact is not the one registered (its sha256 differs).
        """
        found = self._require(version)
        self._store.download(run_id_of(found), ARTIFACT_DIR, dest)
        path = dest / f"{version}{ARTIFACT_SUFFIX}"
        expected = found.tags.get(TAG_ARTIFACT_SHA256)
        if file_sha256(path) != expected:
            raise RuntimeError(f"the stored artifact of {version} does not have sha256 {expected}")
        return path

    # -- aliases and deployment ----------------------------------------------------------------

    def set_alias(self, version: str, alias: str, *, actor: str, reason: str) -> ModelVersion:
        """Point ``alias`` at ``version``; a no-op when it already does.

        Moving ``champion`` moves the old champion to ``previous``, and takes ``candidate`` from
        a version promoted to champion; each move is an event of the history.

        Raises:
            InvalidInput: ``version`` is not a version string, or ``alias`` is unknown.
            NotFound: no such version is registered.
        """
        check_alias(alias)
        target = self._require(version)
        with self._db.session() as session:
            self._move_alias(session, target, alias, actor=actor, reason=reason)
        return self.get(version)

    def _move_alias(
        self, session: Session, target: MlflowModelVersion, alias: str, *, actor: str, reason: str
    ) -> None:
        """Move the alias in MLflow and record each move (committed with ``session``)."""
        holders = self._store.aliases()
        version = target.tags[TAG_MODEL_VERSION]
        held = holders.get(alias)
        if held == str(target.version):
            return
        holder = self._store.version_string(held) if held is not None else None
        self._store.set_alias(alias, str(target.version))
        history.record_event(
            session,
            actor=actor,
            action=history.ALIAS_SET,
            model_version=version,
            alias=alias,
            previous_version=holder,
            reason=reason,
        )
        if alias != CHAMPION:
            return
        if held is not None and holder is not None and holders.get(PREVIOUS) != held:
            before = holders.get(PREVIOUS)
            self._store.set_alias(PREVIOUS, held)
            history.record_event(
                session,
                actor=actor,
                action=history.ALIAS_SET,
                model_version=holder,
                alias=PREVIOUS,
                previous_version=self._store.version_string(before) if before is not None else None,
                reason=f"replaced as champion by {version}: {reason}",
            )
        if holders.get(CANDIDATE) == str(target.version):
            self._store.delete_alias(CANDIDATE)
            history.record_event(
                session,
                actor=actor,
                action=history.ALIAS_REMOVED,
                model_version=version,
                alias=CANDIDATE,
                reason=f"promoted to champion: {reason}",
            )

    def _require(self, version: str) -> MlflowModelVersion:
        found = self._store.find(check_version(version))
        if found is None:
            raise NotFound("model version", version)
        return found

    def _one(self, found: MlflowModelVersion) -> ModelVersion:
        """One version, with its aliases and metrics fetched for it alone."""
        return self._to_domain(
            found, self._store.aliases(), self._store.run_metrics([run_id_of(found)])
        )

    def _to_domain(
        self,
        found: MlflowModelVersion,
        aliases: Mapping[str, str],
        metrics: Mapping[str, Mapping[str, float]],
    ) -> ModelVersion:
        tags = dict(found.tags)
        number = str(found.version)
        return ModelVersion(
            # A version made by hand in MLflow has no tag of ours: named after its number.
            version=tags.get(TAG_MODEL_VERSION, f"mlflow-{number}"),
            mlflow_version=int(number),
            aliases=_held_aliases(aliases, number),
            tags=tags,
            metrics=dict(metrics.get(run_id_of(found), {})),
            artifact_sha256=tags.get(TAG_ARTIFACT_SHA256, ""),
            created_at=datetime.fromtimestamp(found.creation_timestamp / 1000, UTC),
        )
