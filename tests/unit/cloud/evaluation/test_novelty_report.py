"""The novelty section of an evaluation on synthetic wafers: a tiny area classifier with an
untrained tiny VAE beside it. Every figure is checked against the runtime's own scores."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cloud.evaluation.evaluate import evaluate_model
from cloud.evaluation.novelty_report import evaluate_novelty
from cloud.export import export_novelty_dir
from cloud.models.vae import VAEConfig, WaferVAE
from cloud.pipeline.synthetic_data import write_tiny_dataset
from cloud.training.data import evaluation_part
from wafercore.classes import CLASS_NAMES
from wafercore.model_input import InputSpec
from wafercore.novelty import NoveltyRuntime

AREA = InputSpec(size=16, resample="area", channels=("fail", "die"))
THRESHOLD = 0.69
REPORT_KEYS = {
    "model_version",
    "novelty_version",
    "threshold",
    "false_alarm_rate",
    "data",
    "test",
    "misclassification",
    "unlabelled",
    "loco",
    "edge",
}


@pytest.fixture(scope="module")
def dirs(
    tmp_path_factory: pytest.TempPathFactory, area_classifier: Callable[..., Path]
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("novelty")
    plain = area_classifier(root / "plain", extra={"params": 46, "gflops_per_step": 0.0})
    attached = root / "attached"
    shutil.copytree(plain, attached)
    torch.manual_seed(0)
    vae = WaferVAE(VAEConfig(size=32, channels=(8, 16), latent=4)).eval()
    export_novelty_dir(
        vae, attached, version="vae-v0.0.1", threshold=THRESHOLD, false_alarm_rate=0.01
    )
    data = write_tiny_dataset(root / "tiny.npz", train_per_class=4, test_per_class=8)
    loco = root / "loco.json"
    record = {
        "metrics": {"auroc": 0.9, "auprc": 0.5, "fnr_at_5pct_fpr": 0.3},
        "calibrated": {"miss_rate": 0.4, "false_alarm_rate": 0.01, "threshold": 1.0},
    }
    mean = {"n_classes": 1, "auroc": 0.9, "auprc": 0.5, "fnr_at_5pct_fpr": 0.3, "miss_rate": 0.4}
    loco.write_text(json.dumps({"classes": {"Scratch": record}, "mean": mean}))
    return {"plain": plain, "attached": attached, "data": data, "loco": loco, "root": root}


@pytest.fixture(scope="module")
def report(dirs: dict[str, Path]) -> dict[str, Any]:
    return evaluate_novelty(
        dirs["attached"],
        dirs["data"],
        dirs["root"] / "report",
        unlabelled=dirs["data"],
        unlabelled_limit=30,
        loco=dirs["loco"],
    )


def test_the_report_is_written_and_its_figures_are_the_runtimes(
    dirs: dict[str, Path], report: dict[str, Any]
) -> None:
    out = dirs["root"] / "report"
    assert set(report) == REPORT_KEYS
    assert json.loads((out / "novelty_report.json").read_text()) == report
    assert (out / "novelty_scores.png").stat().st_size > 0
    assert "Leave-one-class-out" in (out / "novelty_report.md").read_text()
    assert report["model_version"] == "cnn-v0.0.1" and report["novelty_version"] == "vae-v0.0.1"
    part = evaluation_part(dirs["data"], "official", 0.1, 0)
    runtime = NoveltyRuntime.load(dirs["attached"])
    scores = runtime.score(runtime.prepare([part.raw.map(i) for i in range(len(part))])).score
    overall = report["test"]["all"]
    assert overall["n"] == len(part)
    assert overall["flagged"] == pytest.approx(np.mean(scores > THRESHOLD))
    assert overall["mean"] == pytest.approx(float(scores.mean()), rel=1e-5)
    per_class = report["test"]["per_class"]
    assert list(per_class) == list(CLASS_NAMES)
    for i, name in enumerate(CLASS_NAMES):
        mine = scores[part.labels == i]
        assert per_class[name]["n"] == len(mine)
        assert per_class[name]["flagged"] == pytest.approx(np.mean(mine > THRESHOLD))
        q = per_class[name]["quantiles"]
        assert q["0.5"] <= q["0.95"] <= q["0.99"] <= q["0.999"]


def test_misclassification_unlabelled_loco_and_edge_sections(report: dict[str, Any]) -> None:
    mis = report["misclassification"]
    assert mis["n"] == report["test"]["all"]["n"]
    assert 0 <= mis["misclassified"] <= mis["n"]
    if 0 < mis["misclassified"] < mis["n"]:  # an untrained classifier is mostly wrong
        assert 0.0 <= mis["auroc_doubt"] <= 1.0 and 0.0 <= mis["auroc_doubt_and_novelty"] <= 1.0
    unlabelled = report["unlabelled"]
    assert unlabelled["n"] == 30 and 0.0 <= unlabelled["flagged"] <= 1.0
    assert report["loco"]["mean"]["auroc"] == 0.9
    assert report["loco"]["classes"]["Scratch"]["at_threshold_miss_rate"] == 0.4
    edge = report["edge"]
    assert edge["n"] == report["test"]["all"]["n"] and edge["threads"] == 1
    assert edge["novelty_ms"]["mean"] > 0 and edge["classifier_ms"]["mean"] > 0


def test_evaluate_adds_the_section_only_for_a_model_with_a_novelty_model(
    dirs: dict[str, Path], tmp_path: Path
) -> None:
    evaluate_model(dirs["attached"], dirs["data"], "official", tmp_path / "with")
    evaluate_model(dirs["plain"], dirs["data"], "official", tmp_path / "without")
    with_novelty = json.loads((tmp_path / "with" / "novelty_report.json").read_text())
    assert with_novelty["novelty_version"] == "vae-v0.0.1"
    assert with_novelty["unlabelled"] is None and with_novelty["loco"] is None
    assert (tmp_path / "with" / "report.json").is_file()
    assert not (tmp_path / "without" / "novelty_report.json").exists()
    with pytest.raises(ValueError, match="no novelty model"):
        evaluate_novelty(dirs["plain"], dirs["data"], tmp_path / "plain")


def test_evaluating_into_the_model_s_own_folder_keeps_its_novelty_manifest(
    dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Training evaluates into the model folder: the report must not replace novelty.json."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(dirs["attached"], folder)
    manifest = (folder / "novelty.json").read_bytes()
    evaluate_model(folder, dirs["data"], "official", folder)
    assert (folder / "novelty.json").read_bytes() == manifest
    assert NoveltyRuntime.load(folder).manifest.version == "vae-v0.0.1"
