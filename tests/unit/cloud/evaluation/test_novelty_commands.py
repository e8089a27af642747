"""``wafer-cloud novelty``: attach makes a model directory the runtime loads with its novelty
model and refuses bad input with a message; evaluate writes its report; loco hands its options
to `run_loco`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cloud.cli import main
from cloud.evaluation import loco as loco_module
from cloud.export import export_novelty_dir
from cloud.models.vae import VAEConfig, WaferVAE
from cloud.pipeline.synthetic_data import write_tiny_dataset
from cloud.settings import CloudSettings
from wafercore.model_input import InputSpec
from wafercore.runtime import ModelRuntime

AREA = InputSpec(size=16, resample="area", channels=("fail", "die"))
CONFIGS = Path(__file__).resolve().parents[4] / "configs"


@pytest.fixture(scope="module")
def dirs(
    tmp_path_factory: pytest.TempPathFactory, area_classifier: Callable[..., Path]
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("attach")
    classifier = area_classifier(root / "classifier", version="cnn-v1.0.0", extra={"params": 46})
    torch.manual_seed(0)
    vae = WaferVAE(VAEConfig(size=32, channels=(8, 16), latent=4)).eval()
    novelty = root / "novelty"
    export_novelty_dir(vae, novelty, version="vae-v1.0.0", threshold=0.7, false_alarm_rate=0.01)
    return {"classifier": classifier, "novelty": novelty, "root": root}


def _attach(dirs: dict[str, Path], out: Path, version: str = "cnn-v1.1.0", **paths: Path) -> Any:
    args = [
        "novelty",
        "attach",
        "--classifier",
        str(paths.get("classifier", dirs["classifier"])),
        "--novelty",
        str(paths.get("novelty", dirs["novelty"])),
        "--version",
        version,
        "--out",
        str(out),
    ]
    return CliRunner().invoke(main, args)


def test_attach_makes_a_model_the_runtime_loads_with_its_novelty_model(
    dirs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "attached"
    result = _attach(dirs, out)
    assert result.exit_code == 0, result.output
    runtime = ModelRuntime.load(out)
    assert runtime.novelty is not None
    assert runtime.version == "cnn-v1.1.0" and runtime.novelty.manifest.version == "vae-v1.0.0"
    assert runtime.manifest.extra == {"params": 46, "novelty_model": "vae-v1.0.0"}
    # The classifier's graph gains its penultimate features as an output, nothing else.
    assert runtime.output_names == ("logits", "features")
    plain = ModelRuntime.load(dirs["classifier"])
    maps = [np.full((26, 26), 0, dtype=np.uint8), np.eye(26, dtype=np.uint8)]
    np.testing.assert_array_equal(
        runtime.predict(runtime.prepare(maps)).probabilities,
        plain.predict(plain.prepare(maps)).probabilities,
    )
    for name in ("novelty.onnx", "novelty.json"):
        assert (out / name).read_bytes() == (dirs["novelty"] / name).read_bytes()
    classifier = json.loads((dirs["classifier"] / "model.json").read_text())
    assert classifier["version"] == "cnn-v1.0.0"  # the input is left as it was
    assert "novelty_model" not in classifier["extra"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("non-empty out", "not an empty folder"),
        ("classifier without model.json", "lacks model.json"),
        ("novelty without novelty.json", "lacks novelty.json"),
        ("malformed version", "cnn-v1.2.0"),
        ("another kind's version", "cnn-v1.2.0"),
        ("the classifier's own version", "new one"),
    ],
)
def test_attach_refuses_bad_input_with_a_message(
    dirs: dict[str, Path], tmp_path: Path, case: str, message: str
) -> None:
    out = tmp_path / "out"
    paths: dict[str, Path] = {}
    version = "cnn-v1.1.0"
    if case == "non-empty out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "classifier without model.json":
        paths["classifier"] = tmp_path / "bare"
        paths["classifier"].mkdir()
        (paths["classifier"] / "model.onnx").write_bytes(b"")
    elif case == "novelty without novelty.json":
        paths["novelty"] = tmp_path / "half"
        paths["novelty"].mkdir()
        (paths["novelty"] / "novelty.onnx").write_bytes(b"")
    else:
        version = {
            "malformed version": "cnn-1.1",
            "another kind's version": "vae-v1.1.0",
            "the classifier's own version": "cnn-v1.0.0",
        }[case]
    result = _attach(dirs, out, version, **paths)
    assert result.exit_code == 2, result.output
    assert message in result.output
    if case == "non-empty out":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    else:
        assert not out.exists()


def test_evaluate_writes_the_report_and_refuses_a_model_without_novelty(
    dirs: dict[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "attached"
    assert _attach(dirs, model).exit_code == 0
    data = write_tiny_dataset(tmp_path / "tiny.npz", train_per_class=2, test_per_class=3)
    out = tmp_path / "report"
    args = ["novelty", "evaluate", "--model", str(model), "--data", str(data), "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "27 test wafers" in result.output
    assert {p.name for p in out.iterdir()} == {
        "novelty_report.json",
        "novelty_report.md",
        "novelty_scores.png",
    }
    args[3] = str(dirs["classifier"])
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1 and "no novelty model" in refused.output


def test_loco_hands_its_options_to_run_loco(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []

    def fake(config: Any, settings: Any, out: Path, **kwargs: Any) -> dict[str, Any]:
        calls.append({"config": config, "settings": settings, "out": out, **kwargs})
        mean = {"n_classes": 2, "auroc": 0.9, "auprc": 0.5, "fnr_at_5pct_fpr": 0.2}
        return {"mean": mean}

    monkeypatch.setattr(loco_module, "run_loco", fake)
    config = CONFIGS / "vae_loco.yaml"
    out = tmp_path / "loco"
    args = ["novelty", "loco", "--config", str(config), "--out", str(out)]
    args += ["--class", "Donut", "--class", "Scratch", "--known-sample", "500"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "mean AUROC 0.9000" in result.output
    (call,) = calls
    assert call["config"].kind == "vae" and call["out"] == out
    assert isinstance(call["settings"], CloudSettings)
    assert call["classes"] == ("Donut", "Scratch") and call["known_sample"] == 500
    assert call["command"].startswith(f"wafer-cloud -v novelty loco --config {config} ")
    assert "--class Scratch" in call["command"]
    refused = CliRunner().invoke(
        main, ["novelty", "loco", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(out)]
    )
    assert refused.exit_code == 2 and "config" in refused.output
    assert len(calls) == 1
