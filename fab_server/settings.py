"""The fab server's one settings object (env prefix ``FAB_``), built once and passed in."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
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

    latency_p99_warning_ms: float = 45.0
    latency_p99_critical_ms: float = 50.0
    reviewed_accuracy_critical: float = 0.90
    review_rate_warning: float = 0.25
    class_f1_warning: float = 0.70
    class_f1_window_days: float = 7.0
    # A lot is an excursion when its failing-pattern share exceeds the recent baseline by
    # this much (absolute), over at least ``excursion_min_wafers`` wafers.
    excursion_margin: float = 0.30
    excursion_min_wafers: int = 10
    excursion_baseline_lots: int = 50


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
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    model_dir: Path = Field(
        default_factory=shipped_model_dir,
        description="Model of ClassifyBatch (default: the shipped default model).",
    )
    artifact_dir: Path = Field(
        default=Path("var/fab/artifacts"), description="Where signed model artifacts are kept."
    )
    review_confidence_threshold: float = Field(default=DEFAULT_REVIEW_THRESHOLD, ge=0, le=1)
    review_novelty_threshold: float = Field(default=0.5, ge=0)
    review_lease_seconds: float = Field(default=900.0, gt=0)
    classify_max_batch: int = Field(default=1024, ge=1)
    stream_max_batch: int = Field(default=5000, ge=1)
    download_chunk_bytes: int = Field(default=256 * 1024, ge=1024)
    alert_interval_seconds: float = Field(default=60.0, gt=0)
    alerts: AlertThresholds = AlertThresholds()
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
