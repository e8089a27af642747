"""Settings of the one-machine launcher (``wafer-platform``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from wafercore.shipped import shipped_model_dir


class PlatformSettings(BaseSettings):
    """What ``wafer-platform`` needs to run every tier on one machine.

    Built once in the CLI and passed down; nothing else reads the environment.
    """

    model_config = SettingsConfigDict(env_prefix="WAFER_", extra="ignore")

    data_dir: Path | None = Field(
        default=None,
        description="Folder with WM-811K npz files (WAFER_DATA_DIR); synthetic data when unset.",
    )
    work_dir: Path = Field(
        default=Path("var"),
        description="Where the embedded defaults keep their files (SQLite databases, outboxes).",
    )
    broker_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis of the demo's Celery worker; eager mode when it does not answer.",
    )
    model_dir: Path = Field(
        default_factory=shipped_model_dir, description="The default model the demo serves."
    )
