"""Settings of the cloud tier: built once by the CLI and passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CloudSettings(BaseSettings):
    """Environment of the cloud tier (prefix ``CLOUD_``)."""

    model_config = SettingsConfigDict(env_prefix="CLOUD_", extra="ignore")

    data_dir: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("CLOUD_DATA_DIR", "WAFER_DATA_DIR"),
        description="Folder with the WM-811K npz files; data paths in configs are relative to it.",
    )
    work_dir: Path = Field(default=Path("var/cloud"), description="Runs, checkpoints, caches.")
    torch_threads: int = Field(default=0, description="CPU threads for PyTorch; 0 = all cores.")

    @property
    def cache_dir(self) -> Path:
        """Where preprocessed data is cached, keyed by the source file's sha256."""
        return self.work_dir / "cache"

    def resolve_data(self, path: Path) -> Path:
        """A config's data path: absolute as given, else relative to ``data_dir``."""
        if path.is_absolute() or self.data_dir is None:
            return path
        return self.data_dir / path
