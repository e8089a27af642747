"""The fab server's one settings object (env prefix ``FAB_``), built once and passed in."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from wafercore.review import DEFAULT_REVIEW_THRESHOLD
from wafercore.shipped import shipped_model_dir

Role = Literal["engineer", "admin"]


class ApiToken(BaseModel):
    """A bearer token of the HTTP API and who holds it."""

    token: str = Field(min_length=16)
    user: str = Field(min_length=1)
    role: Role


class AlertThresholds(BaseModel):
    """Alert thresholds from DESIGN.md §3, all configurable."""

    latency_p99_warning_ms: float = Field(
        default=45.0, description="A node's window p99 latency above this: warning."
    )
    latency_p99_critical_ms: float = Field(
        default=50.0, description="A node's window p99 latency above this: critical."
    )
    reviewed_accuracy_critical: float = Field(
        default=0.90, description="Reviewed accuracy of a model below this: critical."
    )
    review_rate_warning: float = Field(
        default=0.25, description="Share of a node's wafers flagged for review above this."
    )
    class_f1_warning: float = Field(
        default=0.70, description="A class's F1 on reviewed wafers below this: warning."
    )
    class_f1_window_days: float = Field(
        default=7.0, description="Days of reviewed wafers the class F1 is computed over."
    )
    excursion_margin: float = Field(
        default=0.30,
        description="A lot is an excursion when its failing-pattern share exceeds the recent "
        "baseline by this much (absolute).",
    )
    excursion_min_wafers: int = Field(
        default=10, description="Wafers a lot needs before it can be an excursion."
    )
    excursion_baseline_lots: int = Field(
        default=50, description="Recent lots the excursion baseline is computed over."
    )


class SyncSettings(BaseModel):
    """The fab's sync with the cloud (``FAB_SYNC__*``): what leaves the fab, where, how often.

    Nothing here is sent anywhere: the token authenticates the fab, the hash key anonymises
    identifiers and never leaves the fab.
    """

    enabled: bool = Field(default=False, description="Run the sync loop inside the fab server.")
    fab_id: str = Field(
        default="", max_length=128, description="This fab's id (the user of its cloud token)."
    )
    cloud_grpc_target: str = Field(
        default="127.0.0.1:50061", min_length=1, description="host:port of CloudSync (gRPC)."
    )
    cloud_api_url: str = Field(
        default="http://127.0.0.1:8300", min_length=1, description="The cloud REST API."
    )
    token: SecretStr | None = Field(
        default=None, description="Cloud API token of role fab (gRPC metadata and HTTP bearer)."
    )
    tls_ca: Path | None = Field(default=None, description="CA of the cloud's certificates: TLS.")
    tls_cert: Path | None = Field(default=None, description="Client certificate: mutual TLS.")
    tls_key: Path | None = Field(default=None, description="Its private key.")
    maps_leave_premises: bool = Field(
        default=False, description="Data policy: wafer maps may be uploaded with their labels."
    )
    hash_key: SecretStr | None = Field(
        default=None, description="Key of the identifiers' HMAC; unset: hash_key_file is used."
    )
    hash_key_file: Path = Field(
        default=Path("var/fab/sync-hash.key"),
        description="Key file used when hash_key is unset; created (32 random bytes, 0600).",
    )
    trusted_keys_dir: Path = Field(
        default=Path("var/fab/trusted-keys"),
        description="Ed25519 public keys <key_id>.pub (PEM) that may sign pulled models.",
    )
    interval_s: float = Field(default=300.0, gt=0, description="Seconds between sync passes.")
    batch_size: int = Field(default=500, ge=1, le=500, description="Items per upload request.")
    overlap_s: float = Field(
        default=120.0, ge=0, description="Labels resolved this recently are sent again."
    )
    timeout_s: float = Field(default=30.0, gt=0, description="Deadline of each cloud call.")

    @model_validator(mode="after")
    def _complete(self) -> SyncSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("sync.tls_cert, sync.tls_key: set both or neither")
        if self.tls_cert is not None and self.tls_ca is None:
            raise ValueError("sync.tls_ca: a client certificate needs the cloud's CA too")
        if self.enabled:
            if not self.fab_id:
                raise ValueError("sync.fab_id: must be set when sync.enabled is true")
            if self.token is None or not self.token.get_secret_value():
                raise ValueError("sync.token: must be set when sync.enabled is true")
        return self


class FabSettings(BaseSettings):
    """Everything the fab server reads from its environment (``FAB_*``).

    Defaults run on one machine with no servers: SQLite under ``var/fab`` and the
    committed default model.
    """

    model_config = SettingsConfigDict(env_prefix="FAB_", env_nested_delimiter="__", extra="ignore")

    database_url: str = Field(
        default="sqlite+aiosqlite:///var/fab/fab.db",
        description="SQLAlchemy async URL: postgresql+psycopg://... or sqlite+aiosqlite:///...",
    )
    db_schema: str | None = Field(
        default=None, description="PostgreSQL schema to use (search_path); None: the default."
    )
    grpc_host: str = Field(default="127.0.0.1", description="Address FabService listens on.")
    grpc_port: int = Field(default=50051, ge=0, le=65535, description="Its port (0: any).")
    http_host: str = Field(
        default="127.0.0.1", description="Address the HTTP API and review UI listen on."
    )
    http_port: int = Field(default=8080, ge=0, le=65535, description="Its port (0: any).")
    model_dir: Path = Field(
        default_factory=shipped_model_dir,
        description="Model of ClassifyBatch (default: the shipped default model).",
    )
    artifact_dir: Path = Field(
        default=Path("var/fab/artifacts"), description="Where signed model artifacts are kept."
    )
    review_confidence_threshold: float = Field(
        default=DEFAULT_REVIEW_THRESHOLD,
        ge=0,
        le=1,
        description="Results with a lower confidence are queued for review.",
    )
    review_novelty_threshold: float | None = Field(
        default=None,
        ge=0,
        description="Queue results whose novelty score is at least this. None: the model's own "
        "threshold decides (calibrated on validation lots; the node flags with reason novelty).",
    )
    canary_sample_rate: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="During a rollout, this share of each arm's results is queued for review "
        "(CANARY_SAMPLE), the same on canary and control nodes.",
    )
    review_lease_seconds: float = Field(
        default=900.0, gt=0, description="How long a claimed review item stays with its engineer."
    )
    classify_max_batch: int = Field(
        default=1024, ge=1, description="Most wafers per ClassifyBatch."
    )
    stream_max_batch: int = Field(
        default=5000, ge=1, description="Most results per StreamResults batch."
    )
    download_chunk_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Chunk size of model artifact downloads."
    )
    alert_interval_seconds: float = Field(
        default=60.0, gt=0, description="How often the alert loop evaluates the rules."
    )
    alerts: AlertThresholds = AlertThresholds()
    sync: SyncSettings = Field(default_factory=SyncSettings)
    api_tokens: list[ApiToken] = Field(
        default_factory=list, description="JSON list of {token, user, role}."
    )
    tls_cert: Path | None = Field(default=None, description="Server certificate (PEM).")
    tls_key: Path | None = Field(default=None, description="Server private key (PEM).")
    tls_client_ca: Path | None = Field(
        default=None, description="CA that signs edge client certificates; set: mTLS required."
    )
    grpc_allow_unauthenticated: bool = Field(
        default=False,
        description="Accept gRPC calls without credentials, trusting the node_id they claim. "
        "Only for a one-machine demo: anyone who reaches the port can write as any node.",
    )
    http_max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest HTTP request body."
    )
    http_header_timeout_s: float = Field(
        default=10.0, gt=0, description="A request's headers must arrive within this long."
    )
    http_body_timeout_s: float = Field(
        default=30.0, gt=0, description="A request's body must arrive within this long."
    )
    ui_session_secret: SecretStr | None = Field(
        default=None,
        description="Key that signs the review UI's session cookies; unset: a random one per "
        "process (sessions end when the server restarts; a warning is logged).",
    )
    ui_session_max_age_s: int = Field(
        default=12 * 3600, ge=60, description="A review UI sign-in lasts this long (one shift)."
    )
