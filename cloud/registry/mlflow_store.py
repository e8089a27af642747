"""The MLflow side of the registry: runs, registered versions and aliases of one model.

`cloud.registry.registry.ModelRegistry` decides what to store and records the history; this
module knows how MLflow stores it: one run per version (experiment
``<registered model>-registry``) holding the model folder under ``model/`` and the signed
artifact under ``artifact/``, and a registered version created from that run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.entities.model_registry import ModelVersion as MlflowModelVersion
from mlflow.exceptions import MlflowException

from cloud.registry.provenance import (
    SAFE_VERSION,
    TAG_ARTIFACT_SHA256,
    TAG_MODEL_VERSION,
    files_to_store,
)
from wafercore.artifact import SIGNATURE_SUFFIX

EXPERIMENT_SUFFIX = "-registry"
"""The runs of registered versions live in the experiment ``<registered model>-registry``."""
MODEL_DIR = "model"
"""Run folder of the model folder's files; the registered version's source."""
ARTIFACT_DIR = "artifact"
"""Run folder of the signed artifact and its signature."""
ARTIFACT_SUFFIX = ".tar"
"""The signed artifact is stored as ``<version>.tar`` (and ``<version>.tar.sig``)."""
_SEARCH_BATCH = 100
"""Run ids per ``IN (...)`` filter when reading many runs' metrics."""


def run_id_of(found: MlflowModelVersion) -> str:
    """The run a registered version was created from.

    Raises:
        RuntimeError: a version made by hand without a run (not one this registry made).
    """
    if not found.run_id:
        raise RuntimeError(f"MLflow version {found.version} was not created from a run")
    return str(found.run_id)


def _error_code(err: MlflowException) -> str:
    return str(getattr(err, "error_code", ""))


def _quiet_mlflow_client() -> None:
    # The client prints run links to stdout and draws download progress bars on stderr: noise
    # in a CLI's output and a server's log. Only defaults: an operator's setting wins.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow's client retries a down server for about four minutes by default: every API call
    # that touches the registry would hang that long before its 503.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


class MlflowStore:
    """The runs, versions and aliases of one registered model on an MLflow server."""

    def __init__(self, tracking_uri: str, registered_model: str) -> None:
        """A store on the server at ``tracking_uri`` (tracking and registry alike).

        Raises:
            ValueError: a registered model name that cannot be used in MLflow's filters.
        """
        if not SAFE_VERSION.match(registered_model):
            raise ValueError(f"registered model name {registered_model!r} is not safe")
        _quiet_mlflow_client()
        self.name = registered_model
        self._experiment_name = f"{registered_model}{EXPERIMENT_SUFFIX}"
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._experiment_id: str | None = None

    # -- writing -------------------------------------------------------------------------------

    def create_version(
        self,
        model_dir: Path,
        artifact: Path,
        *,
        version: str,
        tags: Mapping[str, str],
        metrics: Mapping[str, float],
        description: str,
    ) -> MlflowModelVersion:
        """Log the run (folder, artifact and its ``.sig``, metrics), then the version from it."""
        run_id = self._log_run(model_dir, artifact, version, tags, metrics)
        self._ensure_registered_model()
        return self._client.create_model_version(
            self.name,
            f"runs:/{run_id}/{MODEL_DIR}",
            run_id=run_id,
            tags=dict(tags),
            description=description,
            # MLflow's own server creates a version READY at once: nothing to wait (or log) for.
            await_creation_for=0,
        )

    def _log_run(
        self,
        model_dir: Path,
        artifact: Path,
        version: str,
        tags: Mapping[str, str],
        metrics: Mapping[str, float],
    ) -> str:
        """An MLflow run holding the model folder and the signed artifact; returns its id."""
        # The run carries only the keys; the version's tags hold the full provenance (a run tag
        # is cut at 8,000 characters, a version tag at 100,000).
        keys = {key: tags[key] for key in (TAG_MODEL_VERSION, TAG_ARTIFACT_SHA256) if key in tags}
        run = self._client.create_run(self._experiment(), run_name=version, tags=keys)
        run_id = str(run.info.run_id)
        signature = artifact.with_name(artifact.name + SIGNATURE_SUFFIX)
        try:
            with tempfile.TemporaryDirectory(prefix="registry-") as work:
                staged = Path(work)
                (staged / MODEL_DIR).mkdir()
                (staged / ARTIFACT_DIR).mkdir()
                for path in files_to_store(model_dir):
                    shutil.copy2(path, staged / MODEL_DIR / path.name)
                stored = f"{version}{ARTIFACT_SUFFIX}"
                shutil.copy2(artifact, staged / ARTIFACT_DIR / stored)
                shutil.copy2(signature, staged / ARTIFACT_DIR / f"{stored}{SIGNATURE_SUFFIX}")
                self._client.log_artifacts(run_id, str(staged))
            now = int(datetime.now(UTC).timestamp() * 1000)
            self._client.log_batch(
                run_id, metrics=[Metric(key, value, now, 0) for key, value in metrics.items()]
            )
        except BaseException:
            self._client.set_terminated(run_id, "FAILED")
            raise
        self._client.set_terminated(run_id)
        return run_id

    def _experiment(self) -> str:
        if self._experiment_id is None:
            found = self._client.get_experiment_by_name(self._experiment_name)
            if found is None:
                try:
                    self._experiment_id = self._client.create_experiment(self._experiment_name)
                except MlflowException as err:
                    if _error_code(err) != "RESOURCE_ALREADY_EXISTS":
                        raise
                    found = self._client.get_experiment_by_name(self._experiment_name)
            if found is not None:
                self._experiment_id = found.experiment_id
        assert self._experiment_id is not None
        return self._experiment_id

    def _ensure_registered_model(self) -> None:
        try:
            self._client.create_registered_model(
                self.name, description="Wafer defect classifier: every version the cloud built."
            )
        except MlflowException as err:
            if _error_code(err) != "RESOURCE_ALREADY_EXISTS":
                raise

    def set_alias(self, alias: str, mlflow_version: str) -> None:
        """Point ``alias`` at MLflow version ``mlflow_version``."""
        self._client.set_registered_model_alias(self.name, alias, mlflow_version)

    def delete_alias(self, alias: str) -> None:
        """Remove ``alias`` from whichever version holds it."""
        self._client.delete_registered_model_alias(self.name, alias)

    # -- reading -------------------------------------------------------------------------------

    def find(self, version: str) -> MlflowModelVersion | None:
        """The registered version tagged with our ``version`` (already a safe string)."""
        found = self._client.search_model_versions(
            f"name='{self.name}' and tags.{TAG_MODEL_VERSION}='{version}'"
        )
        # Two concurrent first registrations can both create one; the oldest is the version.
        return min(found, key=lambda mv: int(mv.version)) if found else None

    def all_versions(self) -> list[MlflowModelVersion]:
        """Every version of the registered model that carries our version tag."""
        found: list[MlflowModelVersion] = []
        token: str | None = None
        while True:
            page = self._client.search_model_versions(
                f"name='{self.name}'", order_by=["version_number DESC"], page_token=token
            )
            found.extend(page)
            token = page.token
            if not token:
                break
        return [mv for mv in found if TAG_MODEL_VERSION in mv.tags]

    def version(self, mlflow_version: str) -> MlflowModelVersion:
        """MLflow version ``mlflow_version`` of the registered model."""
        return self._client.get_model_version(self.name, mlflow_version)

    def aliases(self) -> dict[str, str]:
        """Alias -> MLflow version number (as MLflow spells it, a string); {} before any."""
        try:
            registered = self._client.get_registered_model(self.name)
        except MlflowException as err:
            if _error_code(err) == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise
        return {alias: str(number) for alias, number in registered.aliases.items()}

    def version_string(self, mlflow_version: str) -> str:
        """Our version string of MLflow version ``mlflow_version``."""
        tags = self.version(mlflow_version).tags
        return str(tags.get(TAG_MODEL_VERSION, f"mlflow-{mlflow_version}"))

    def run_metrics(self, run_ids: Iterable[str]) -> dict[str, dict[str, float]]:
        """Run id -> its metrics, in few requests (a listing needs them for every version)."""
        ids = sorted(set(run_ids))
        metrics: dict[str, dict[str, float]] = {}
        for start in range(0, len(ids), _SEARCH_BATCH):
            quoted = ", ".join(f"'{run_id}'" for run_id in ids[start : start + _SEARCH_BATCH])
            runs = self._client.search_runs(
                [self._experiment()], filter_string=f"attributes.run_id IN ({quoted})"
            )
            for run in runs:
                metrics[run.info.run_id] = dict(run.data.metrics)
        return metrics

    def run_files(self, run_id: str, folder: str) -> set[str]:
        """Paths (``model/report.json``) of the files directly in a run's ``folder``."""
        return {item.path for item in self._client.list_artifacts(run_id, folder)}

    def download(self, run_id: str, path: str, dest: Path) -> None:
        """Download a run's file or folder ``path``; a folder's files land directly in ``dest``.

        ``dest`` is created if missing; files already there are replaced.
        """
        dest.mkdir(parents=True, exist_ok=True)
        # Downloaded beside the files first, so dest never holds half a download's files.
        with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as work:
            local = Path(self._client.download_artifacts(run_id, path, work))
            for item in local.iterdir() if local.is_dir() else [local]:
                os.replace(item, dest / item.name)
