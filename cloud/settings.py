"""Settings of the cloud tier: built once by the CLI and passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class GateSettings(BaseModel):
    """The promotion gate: what a candidate must reach to be registered as ``candidate``."""

    min_macro_f1_gain: float = Field(
        default=0.005, description="Macro-F1 at least the champion's plus this."
    )
    min_accuracy: float = Field(default=0.93, ge=0, le=1, description="Accuracy at least.")
    min_class_f1: float = Field(default=0.70, ge=0, le=1, description="Every class at least.")
    max_p99_ms: float = Field(
        default=50.0, gt=0, description="Batch-1 p99 on the exported runtime."
    )


class DataChecks(BaseModel):
    """The brief's checks of the labelled data, before any training."""

    min_agreement: float = Field(
        default=0.85, ge=0, le=1, description="Inter-annotator agreement where two reviews exist."
    )
    min_per_class: int = Field(default=100, ge=0, description="Samples per class at least.")
    max_review_age_days: int = Field(default=90, ge=1, description="Reviewed labels newer than.")


class DriftSettings(BaseModel):
    """Drift monitoring (brief §4): PSI of the predicted-class mix, halting steps, KS, accuracy."""

    every_s: float = Field(default=7 * 24 * 3600.0, gt=0, description="Beat: how often (weekly).")
    window_days: float = Field(default=7.0, gt=0, description="The current window (a week).")
    psi_investigate: float = Field(default=0.10, ge=0, description="PSI from here: investigate.")
    psi_retrain: float = Field(default=0.25, ge=0, description="PSI above this: retrain.")
    min_wafers: int = Field(
        default=200, ge=1, description="Fewer wafers in the window: PSI is not computed."
    )
    halting_min_days: int = Field(
        default=3, ge=2, description="Days of steps needed to call a trend."
    )
    alpha: float = Field(default=0.05, gt=0, lt=1, description="Significance of trend tests.")
    ks_alpha: float = Field(default=0.01, gt=0, lt=1, description="KS p-value that flags drift.")
    retrain: bool = Field(default=True, description="PSI above psi_retrain starts a job.")
    retrain_config: str = Field(default="cnn64", description="Config of drift-started jobs.")


class RolloutSettings(BaseModel):
    """Canary rollouts and their A/B decision (brief §4 A/B testing; windows are settings)."""

    canary_nodes: int = Field(default=2, ge=1, description="Nodes of the canary arm.")
    trial_window_s: float = Field(
        default=7 * 24 * 3600.0, gt=0, description="Canary length; then roll back if undecided."
    )
    min_reviewed_per_arm: int = Field(
        default=2000, ge=1, description="Canary samples reviewed per arm before a decision."
    )
    alpha: float = Field(default=0.05, gt=0, lt=1, description="Significance level.")
    confidence: float = Field(default=0.95, gt=0, lt=1, description="Bootstrap interval level.")
    bootstrap_resamples: int = Field(
        default=2000, ge=100, description="Resamples of the bootstrap intervals."
    )
    max_p99_ms: float = Field(default=50.0, gt=0, description="Guardrail: p99 latency.")
    min_class_f1: float = Field(default=0.70, ge=0, le=1, description="Guardrail: class F1.")
    min_class_support: int = Field(
        default=30, ge=1, description="A class's F1 guardrail applies from this many samples."
    )
    max_review_rate_increase: float = Field(
        default=0.05, ge=0, le=1, description="Guardrail: flagged rate, canary minus control."
    )
    watch_s: float = Field(
        default=48 * 3600.0, gt=0, description="After promotion: automatic rollback window."
    )
    min_reviewed_watch: int = Field(
        default=200, ge=1, description="Reviews of the new model needed to judge the watch."
    )
    evaluate_every_s: float = Field(default=300.0, gt=0, description="Beat: how often.")


class CloudSettings(BaseSettings):
    """Environment of the cloud tier (prefix ``CLOUD_``; nested: ``CLOUD_GATE__MIN_ACCURACY``)."""

    model_config = SettingsConfigDict(
        env_prefix="CLOUD_", env_nested_delimiter="__", extra="ignore", populate_by_name=True
    )

    data_dir: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("CLOUD_DATA_DIR", "WAFER_DATA_DIR"),
        description="Folder with the WM-811K npz files; data paths in configs are relative to it.",
    )
    work_dir: Path = Field(default=Path("var/cloud"), description="Runs, checkpoints, caches.")
    torch_threads: int = Field(default=0, description="CPU threads for PyTorch; 0 = all cores.")
    configs_dir: Path = Field(
        default=REPO_CONFIGS, description="Training configs a job may name (NAME.yaml)."
    )

    # The cloud database: jobs, steps, logs, API tokens, deployment history, reviewed labels.
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default SQLite in work_dir (cloud.db)."
    )
    db_schema: str | None = Field(default=None, description="PostgreSQL schema (tests).")

    # MLflow: the registry of every model version.
    mlflow_tracking_uri: str = Field(
        default="http://127.0.0.1:5000", description="The MLflow server of the registry."
    )
    mlflow_backend_store_uri: str | None = Field(
        default=None, description="`mlflow server` store; default SQLite in work_dir."
    )
    mlflow_artifacts_destination: str | None = Field(
        default=None, description="`mlflow server` artifact root; default a folder in work_dir."
    )
    registered_model: str = Field(
        default="wafer-classifier", description="Name of the registered model in MLflow."
    )

    # Celery on Redis.
    broker_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Celery broker (Redis)."
    )
    result_backend: str = Field(
        default="redis://127.0.0.1:6379/0", description="Celery result backend (Redis)."
    )
    task_queue: str = Field(default="wafer-cloud", description="The Celery queue of the steps.")
    task_always_eager: bool = Field(
        default=False, description="Run tasks in-process (the demo without Redis)."
    )

    # The retraining pipeline: leases on running steps, recovery of lost workers, retries.
    heartbeat_s: float = Field(
        default=10.0, gt=0, description="How often a running step renews its lease."
    )
    stale_after_s: float = Field(
        default=120.0,
        gt=0,
        description="A running step whose lease is older is taken to have lost its worker.",
    )
    recover_every_s: float = Field(
        default=60.0, gt=0, description="How often `wafer-cloud beat` looks for lost steps."
    )
    step_max_attempts: int = Field(
        default=3, ge=1, description="Attempts of one step (errors, lost workers) before failing."
    )
    step_retry_delay_s: float = Field(
        default=10.0, ge=0, description="Wait before retrying a step after an error."
    )

    # The REST API.
    api_host: str = Field(default="127.0.0.1", description="Address the REST API listens on.")
    api_port: int = Field(default=8300, ge=0, le=65535, description="Its port (0: any).")
    api_url: str = Field(
        default="http://127.0.0.1:8300", description="Where `train --remote` finds the API."
    )
    api_token: str | None = Field(default=None, description="Bearer token of `train --remote`.")

    # CloudSync: the gRPC endpoint the fab servers sync with (fab tokens; TLS, mTLS optional).
    sync_enabled: bool = Field(default=True, description="`serve` starts CloudSync too.")
    sync_host: str = Field(default="127.0.0.1", description="Address CloudSync listens on.")
    sync_port: int = Field(default=50061, ge=0, le=65535, description="Its port (0: any).")
    sync_tls_cert: Path | None = Field(default=None, description="Server certificate (PEM).")
    sync_tls_key: Path | None = Field(default=None, description="Its private key (PEM).")
    sync_tls_client_ca: Path | None = Field(
        default=None, description="CA of the fabs' client certificates; set: mTLS required."
    )

    # Signing of registered artifacts.
    signing_key: Path | None = Field(default=None, description="Ed25519 private key (PEM).")
    signing_key_id: str = Field(
        default="cloud-dev", description="Id under which nodes trust the signing key."
    )

    gate: GateSettings = Field(default_factory=GateSettings)
    checks: DataChecks = Field(default_factory=DataChecks)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    rollouts: RolloutSettings = Field(default_factory=RolloutSettings)

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> CloudSettings:
        # Two missed heartbeats must not make a working step look lost.
        if self.heartbeat_s * 2 >= self.stale_after_s:
            raise ValueError(
                f"stale_after_s ({self.stale_after_s}) must exceed twice heartbeat_s "
                f"({self.heartbeat_s})"
            )
        return self

    @property
    def cache_dir(self) -> Path:
        """Where preprocessed data is cached, keyed by the source file's sha256."""
        return self.work_dir / "cache"

    @property
    def db_url(self) -> str:
        """The cloud database's URL (SQLite in ``work_dir`` unless configured)."""
        return self.database_url or f"sqlite:///{(self.work_dir / 'cloud.db').resolve()}"

    @property
    def mlflow_store(self) -> str:
        """The backend store of the MLflow server this tier starts."""
        default = f"sqlite:///{(self.work_dir / 'mlflow.db').resolve()}"
        return self.mlflow_backend_store_uri or default

    @property
    def mlflow_artifacts(self) -> str:
        """The artifact root of the MLflow server this tier starts."""
        default = str((self.work_dir / "mlflow-artifacts").resolve())
        return self.mlflow_artifacts_destination or default

    @property
    def artifact_cache_dir(self) -> Path:
        """Verified local copies of registered artifacts (the API and CloudSync serve them)."""
        return self.work_dir / "api" / "artifacts"

    @property
    def jobs_dir(self) -> Path:
        """Per-job working folders (checkpoints, exported models)."""
        return self.work_dir / "jobs"

    def environment(self) -> dict[str, str]:
        """The ``CLOUD_*`` environment that makes another process (a worker) build these
        settings: how the demo and the tests start workers on the same configuration."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            if isinstance(value, dict):
                for key, inner in value.items():
                    env[f"CLOUD_{name.upper()}__{key.upper()}"] = str(inner)
            else:
                env[f"CLOUD_{name.upper()}"] = str(value)
        return env

    def resolve_work(self, path: Path) -> Path:
        """A file the cloud made itself (pseudo-labels): absolute as given, else in ``work_dir``."""
        return path if path.is_absolute() else self.work_dir / path

    def resolve_data(self, path: Path) -> Path:
        """A config's data path: absolute as given, else relative to ``data_dir``."""
        if path.is_absolute() or self.data_dir is None:
            return path
        return self.data_dir / path
