"""The edge node's one settings object (env prefix ``EDGE_``), built once and passed in.

Defaults run on one machine with no fab: the committed default model, files under
``var/edge``, HTTP on localhost. Nothing else in ``edge`` reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from wafercore.review import DEFAULT_REVIEW_THRESHOLD
from wafercore.shipped import shipped_model_dir


def parse_address(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[::1]:50051`` for IPv6) into its host and port.

    Raises:
        ValueError: no host, or a port that is not a number in 1..65535.
    """
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not host:port")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: port must be a number in 1..65535")
    return host.removeprefix("[").removesuffix("]"), int(port)


class EdgeSettings(BaseSettings):
    """Everything the edge node reads from its environment (``EDGE_*``).

    ``fab_address`` unset means a node without a fab: it classifies and keeps every result in
    its outbox until a fab is configured.
    """

    model_config = SettingsConfigDict(env_prefix="EDGE_", extra="ignore")

    node_id: str = Field(
        default="edge-local",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Name of this node at the fab; with the outbox id, the key of each result.",
    )
    fab_address: str | None = Field(
        default=None, description="Fab server gRPC address, host:port; unset: no uplink."
    )
    tls_ca: Path | None = Field(default=None, description="CA that signs the fab's certificate.")
    tls_cert: Path | None = Field(default=None, description="This node's client certificate.")
    tls_key: Path | None = Field(default=None, description="This node's client private key.")
    node_token: SecretStr | None = Field(
        default=None,
        description="The credential its fab issued to this node (`wafer-fab nodes add`), sent "
        "on every gRPC call; not needed when the node has a client certificate (mTLS).",
    )
    http_host: str = Field(default="127.0.0.1", description="Address /classify listens on.")
    http_port: int = Field(default=8000, ge=0, le=65535, description="0: any free port.")
    work_dir: Path = Field(
        default=Path("var/edge"), description="Outbox and installed models live here."
    )
    default_model_dir: Path = Field(
        default_factory=shipped_model_dir,
        description="Model served until an OTA update installs another (default: the shipped "
        "default model, found from the installed package).",
    )
    runtime_threads: int = Field(default=1, ge=1, le=64, description="ONNX Runtime threads.")
    review_threshold: float = Field(
        default=DEFAULT_REVIEW_THRESHOLD,
        ge=0,
        le=1,
        description="Results below this confidence are flagged.",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest request body.")
    http_header_timeout_s: float = Field(
        default=10.0, gt=0, description="A request's headers must arrive within this long."
    )
    http_body_timeout_s: float = Field(
        default=30.0, gt=0, description="A request's body must arrive within this long."
    )
    idempotency_retention_s: float = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description="How long a station's request (wafer, timestamp) is remembered, so that a "
        "retry returns the stored answer instead of storing a second result.",
    )
    outbox_max_bytes: int = Field(
        default=1 << 30, ge=1 << 16, description="Disk the outbox may use before refusing work."
    )
    outbox_sync: Literal["full", "normal"] = Field(
        default="full",
        description="full: every result survives power loss; normal: survives a process crash.",
    )
    uplink_batch: int = Field(
        default=2000,
        ge=1,
        description="Results per StreamResults batch: the fab commits (fsyncs) once per batch, "
        "so bigger batches drain a backlog faster (500: ~15k/s, 2000: ~24k/s on the bench).",
    )
    uplink_batch_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Most bytes of results per batch (maps up to 512x512 are big), well under "
        "the fab's 64 MiB message limit; a batch always carries at least one result.",
    )
    uplink_backoff_initial_s: float = Field(
        default=0.5, gt=0, description="First wait before reconnecting to the fab (doubles)."
    )
    uplink_backoff_max_s: float = Field(
        default=30.0, gt=0, description="Longest wait between reconnection attempts."
    )
    metrics_interval_s: float = Field(
        default=60.0, gt=0, description="How often the node pushes a metrics window to the fab."
    )
    ota_poll_interval_s: float = Field(
        default=300.0, gt=0, description="How often the node asks the fab for its assigned model."
    )
    trusted_keys_dir: Path | None = Field(
        default=None, description="Ed25519 public keys <key_id>.pub (PEM) that may sign models."
    )
    max_batch: int = Field(
        default=256, ge=1, le=4096, description="Most wafers per /classify/batch or G85 body."
    )
    warmup_predictions: int = Field(
        default=3, ge=0, description="Dummy predictions run when a model is loaded."
    )

    @field_validator("fab_address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_address(value)
        return value.strip()

    @property
    def outbox_path(self) -> Path:
        """The outbox's SQLite file."""
        return self.work_dir / "outbox.db"

    @property
    def models_root(self) -> Path:
        """Where installed models and the pointer to the current one are kept."""
        return self.work_dir / "models"
