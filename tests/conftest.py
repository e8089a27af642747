"""Shared fixtures: where the real services and the WM-811K files are, from settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class HarnessSettings(BaseSettings):
    """Where the test suite finds real services and data (env ``TEST_*``, ``WAFER_DATA_DIR``)."""

    model_config = SettingsConfigDict(env_prefix="TEST_", extra="ignore")

    postgres_url: str = "postgresql://postgres@127.0.0.1:5432/test"
    redis_url: str = "redis://127.0.0.1:6379/0"
    wafer_data_dir: Path | None = Field(
        default=None, validation_alias=AliasChoices("WAFER_DATA_DIR", "TEST_WAFER_DATA_DIR")
    )
    hypothesis_profile: str = Field(
        default="default", description="'ci': property tests replay fixed examples (.ci/run)."
    )


settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(HarnessSettings().hypothesis_profile)


@pytest.fixture(scope="session")
def harness() -> HarnessSettings:
    """Settings of the test harness, built once."""
    return HarnessSettings()


@pytest.fixture(scope="session")
def wafer_data_dir(harness: HarnessSettings) -> Path:
    """The WM-811K folder; tests that use it skip with the reason when it is not configured."""
    path = harness.wafer_data_dir
    if path is None:
        pytest.skip("WAFER_DATA_DIR is not set: real WM-811K data not configured")
    if not (path / "labelled.npz").is_file():
        pytest.skip(f"WAFER_DATA_DIR={path} has no labelled.npz")
    return path
