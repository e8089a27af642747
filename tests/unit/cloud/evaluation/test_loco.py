"""Leave-one-class-out on synthetic wafers with a tiny VAE: two held-out classes, each trained
without its class, scored by its exported graph; the summary agrees with the runs, the
fail-rate-corrected variant is reported beside the score, and a second call resumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cloud.evaluation import loco as loco_module
from cloud.evaluation.loco import (
    DEFECT_CLASSES,
    held_out_config,
    known_and_novel,
    run_loco,
    summarise,
)
from cloud.pipeline.synthetic_data import write_tiny_dataset
from cloud.settings import CloudSettings
from cloud.training.config import TrainConfig
from cloud.training.data import prepare
from wafercore.classes import CLASS_NAMES
from wafercore.novelty import NoveltyRuntime

HELD_OUT = ("Near-Full", "Center")
KNOWN_SAMPLE = 40


def _config(data: Path) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "kind": "vae",
            "version": "vae-v0.0.1",
            "device": "cpu",
            "data": {"path": str(data), "protocol": "official", "val_fraction": 0.2},
            "input": {"size": 32, "resample": "area", "channels": ["fail", "die"]},
            "vae": {"channels": [8, 16], "latent": 4},
            "optim": {
                "epochs": 1,
                "samples_per_epoch": 128,
                "batch_size": 32,
                "lr": 0.01,
                "warmup_steps": 1,
                "size_balanced": False,
            },
            "augment": {"flips_rotations": False, "noise": False, "resolution_scale": None},
        }
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("loco")
    data = write_tiny_dataset(root / "tiny.npz", train_per_class=16, test_per_class=8)
    config = _config(data)
    settings = CloudSettings(work_dir=root / "work")
    out = root / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads only contend on a busy machine
    try:
        summary = run_loco(
            config, settings, out, classes=HELD_OUT, known_sample=KNOWN_SAMPLE, command="cmd"
        )
    finally:
        torch.set_num_threads(threads)
    prepared = prepare(config.data, data, settings.cache_dir, config.seed)
    return {
        "config": config,
        "settings": settings,
        "out": out,
        "summary": summary,
        "data": prepared,
    }


def test_the_summary_agrees_with_each_held_out_run(setup: dict[str, Any]) -> None:
    out, summary, data = setup["out"], setup["summary"], setup["data"]
    assert json.loads((out / "loco.json").read_text()) == json.loads(json.dumps(summary))
    for name in ("loco.md", "loco_roc.png"):
        assert (out / name).stat().st_size > 0
    assert "cmd" in (out / "loco.md").read_text()
    assert list(summary["classes"]) == list(HELD_OUT)
    test_labels = data.test.labels
    for name, record in summary["classes"].items():
        cls = CLASS_NAMES.index(name)
        run = out / "runs" / name.lower()
        assert json.loads((run / "loco.json").read_text()) == record
        assert record["version"] == f"vae-v0.{cls}.0"
        assert record["n"]["test_novel"] == int(np.sum(test_labels == cls))
        assert record["n"]["test_known"] == min(KNOWN_SAMPLE, int(np.sum(test_labels != cls)))
        assert record["n"]["train_known"] == int(np.sum(data.train_raw.labels != cls))
        assert record["metrics"]["novel"] == record["n"]["test_novel"]
        assert 0.0 <= record["metrics"]["auroc"] <= 1.0
        # The class never reached the exported model: its config excludes it.
        manifest = NoveltyRuntime.load(run / "model").manifest
        assert manifest.extra["training"]["novelty"]["exclude"] == [name]
        assert record["calibrated"]["threshold"] == manifest.threshold
    mean = summary["mean"]
    assert mean["n_classes"] == len(HELD_OUT)
    aurocs = [r["metrics"]["auroc"] for r in summary["classes"].values()]
    assert mean["auroc"] == pytest.approx(np.mean(aurocs))
    assert mean["meets_target"] == (mean["auroc"] >= 0.9)


def test_the_corrected_variant_subtracts_each_map_s_fail_rate_entropy(
    setup: dict[str, Any],
) -> None:
    """The corrected variant is the score less the binary entropy of the map's fail rate: its
    AUROC is that of those differences, map by map."""
    from sklearn.metrics import roc_auc_score

    out, data = setup["out"], setup["data"]
    name = "Near-Full"
    record = setup["summary"]["classes"][name]
    saved = np.load(out / "runs" / name.lower() / "scores.npz")
    known, novel = known_and_novel(data.test, name, KNOWN_SAMPLE, setup["config"].seed)

    def entropy(raw: Any) -> np.ndarray:
        rates = []
        for i in range(len(raw)):
            wafer = raw.map(i)
            rates.append(np.mean(wafer[wafer != 2] == 1))
        rate = np.clip(np.array(rates), 1e-6, 1 - 1e-6)
        return -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))

    corrected = np.concatenate(
        [saved["known"] - entropy(known.raw), saved["novel"] - entropy(novel.raw)]
    )
    truth = np.r_[np.zeros(len(known)), np.ones(len(novel))]
    expected = roc_auc_score(truth, corrected)
    assert record["metrics_rate_corrected"]["auroc"] == pytest.approx(expected, abs=1e-6)
    assert setup["summary"]["mean"]["auroc_rate_corrected"] == pytest.approx(
        np.mean(
            [r["metrics_rate_corrected"]["auroc"] for r in setup["summary"]["classes"].values()]
        )
    )


def test_a_second_call_reuses_finished_classes(
    setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = setup["out"]
    done = {name: (out / "runs" / name.lower() / "loco.json") for name in HELD_OUT}
    before = {name: (p.read_text(), p.stat().st_mtime_ns) for name, p in done.items()}

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished class was trained again")

    monkeypatch.setattr(loco_module, "train_vae", must_not_run)
    monkeypatch.setattr(loco_module, "finalize_vae", must_not_run)
    again = run_loco(
        setup["config"], setup["settings"], out, classes=HELD_OUT, known_sample=KNOWN_SAMPLE
    )
    assert again["classes"] == setup["summary"]["classes"]
    assert {name: (p.read_text(), p.stat().st_mtime_ns) for name, p in done.items()} == before
    with pytest.raises(ValueError, match="another config or known sample"):
        run_loco(setup["config"], setup["settings"], out, classes=HELD_OUT, known_sample=7)


def test_the_known_sample_is_seeded_and_never_holds_the_novel_class(
    setup: dict[str, Any],
) -> None:
    test = setup["data"].test
    known, novel = known_and_novel(test, "Center", 10, seed=3)
    again, _ = known_and_novel(test, "Center", 10, seed=3)
    center = CLASS_NAMES.index("Center")
    assert len(known) == 10 and not np.any(known.labels == center)
    assert np.all(novel.labels == center) and len(novel) == np.sum(test.labels == center)
    assert np.array_equal(known.labels, again.labels)
    assert np.array_equal(known.raw.values, again.raw.values)


def test_bad_requests_are_refused_before_any_work(tmp_path: Path) -> None:
    config = _config(tmp_path / "missing.npz")
    settings = CloudSettings(work_dir=tmp_path)
    with pytest.raises(ValueError, match="among"):
        run_loco(config, settings, tmp_path / "out", classes=("None",))
    cnn = TrainConfig.model_validate({"kind": "cnn", "version": "cnn-v0.0.1"})
    with pytest.raises(ValueError, match="vae config"):
        run_loco(cnn, settings, tmp_path / "out")
    assert held_out_config(config, "Scratch").novelty.exclude == ("Scratch",)
    assert len(DEFECT_CLASSES) == 8 and "None" not in DEFECT_CLASSES
    assert summarise({}) == {"n_classes": 0}
