"""Shared fixtures: where the real services and the WM-811K files are, from settings."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
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


PREVIOUS_MODEL = Path(__file__).resolve().parents[1] / "models" / "trm-v1.0.0"


@pytest.fixture(scope="session")
def renamed_model() -> Callable[[Path, str], Path]:
    """Makes a copy of a shipped model under another version (same graph, so it loads).

    Call it with the target folder (created) and the version to write into ``model.json``.
    """

    def make(target: Path, version: str) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        for name in ("model.onnx", "model.json"):
            shutil.copy(PREVIOUS_MODEL / name, target / name)
        manifest = json.loads((target / "model.json").read_text())
        manifest["version"] = version
        (target / "model.json").write_text(json.dumps(manifest))
        return target

    return make


DEFAULT_CLASSIFIER = Path(__file__).resolve().parents[1] / "models" / "cnn-v2.0.0"


@pytest.fixture(scope="session")
def novelty_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Makes a model directory with a novelty model beside the classifier.

    Call it with the target folder (created), and optionally ``threshold=`` (the novelty
    manifest's; default 0.5) and ``size=`` (the VAE's input side; 64 shares the classifier's
    input). The VAE is small and untrained but seeded: the same call gives the same graph, so
    each (threshold, size) is exported once per session and copied.
    """
    exported: dict[tuple[float, int], Path] = {}

    def make(target: Path, *, threshold: float = 0.5, size: int = 64) -> Path:
        key = (threshold, size)
        if key not in exported:
            exported[key] = _export_novelty_model(
                tmp_path_factory.mktemp("novelty-model"), threshold, size
            )
        shutil.copytree(exported[key], target, dirs_exist_ok=True)
        return target

    return make


def _export_novelty_model(target: Path, threshold: float, size: int) -> Path:
    import torch  # the cloud tier's: imported only by the tests that build a model

    from cloud.export import export_novelty_dir
    from cloud.models.vae import VAEConfig, WaferVAE

    for name in ("model.onnx", "model.json"):
        shutil.copy(DEFAULT_CLASSIFIER / name, target / name)
    torch.manual_seed(0)
    vae = WaferVAE(VAEConfig(size=size, channels=(4, 8), latent=4)).eval()
    export_novelty_dir(
        vae, target, version="vae-v0.0.1", threshold=threshold, false_alarm_rate=0.01
    )
    return target


@pytest.fixture(scope="session")
def area_classifier() -> Callable[..., Path]:
    """Makes a model directory of a tiny untrained CNN (kind ``cnn``) on an area input.

    Call it with the target folder (created) and optionally ``version=``, ``seed=`` (of its
    weights), ``size=`` (the input's side, 16 by default), ``pooled=`` (global average pooling
    before the linear layer; False keeps each cell's position, so the eight views of a map get
    different answers), ``features=`` (expose the penultimate features), ``temperature=`` and
    ``extra=`` (the manifest's).
    """

    def make(
        target: Path,
        *,
        version: str = "cnn-v0.0.1",
        seed: int = 0,
        size: int = 16,
        pooled: bool = True,
        features: bool = False,
        temperature: float = 1.0,
        extra: dict[str, object] | None = None,
    ) -> Path:
        import torch  # the cloud tier's: imported only by the tests that build a model

        from cloud.export import export_classifier, expose_features, write_model_dir
        from wafercore.classes import NUM_CLASSES
        from wafercore.model_input import InputSpec

        spec = InputSpec(size=size, resample="area", channels=("fail", "die"))
        torch.manual_seed(seed)
        head = (
            [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, NUM_CLASSES)]
            if pooled
            else [torch.nn.Flatten(), torch.nn.Linear(4 * size * size, NUM_CLASSES)]
        )
        model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), *head).eval()
        target.mkdir(parents=True, exist_ok=True)
        graph = target / "model.onnx"
        export_classifier(model, graph, input_spec=spec)
        if features:
            graph.write_bytes(expose_features(graph.read_bytes()))
        write_model_dir(
            target,
            graph,
            version=version,
            kind="cnn",
            temperature=temperature,
            input_spec=spec,
            extra=extra,
        )
        return target

    return make
