"""Training the novelty VAE: config rules, resumable epochs, calibration on known classes only,
and, on real WM-811K maps, a class the VAE never saw coming out flagged ``novel``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cloud.training.config import TrainConfig
from cloud.training.data import Part, PreparedData, prepare
from cloud.training.trainer import BEST, LAST
from cloud.training.vae import finalize_vae, known_part, train_vae
from wafercore.classes import DefectClass
from wafercore.novelty import NoveltyManifest
from wafercore.pipeline import classify_maps
from wafercore.readers.npz import read_npz
from wafercore.runtime import ModelRuntime
from wafercore.splits import TEST
from wafercore.synthetic import generate_dataset

CLASSIFIER = Path(__file__).resolve().parents[4] / "models" / "cnn-v2.0.0"


def _config(epochs: int = 2, **changes: Any) -> TrainConfig:
    raw: dict[str, Any] = {
        "kind": "vae",
        "version": "vae-v0.0.1",
        "device": "cpu",
        "input": {"size": 32, "resample": "area", "channels": ["fail", "die"]},
        "vae": {"channels": [8, 16], "latent": 4, "beta": 0.5},
        "novelty": {"exclude": ["Near-Full"]},
        "optim": {
            "epochs": epochs,
            "samples_per_epoch": 64,
            "batch_size": 16,
            "warmup_steps": 2,
            "sampling": "sqrt",
            "size_balanced": False,
        },
        "augment": {"resolution_scale": None, "noise": False},
    }
    raw.update(changes)
    return TrainConfig.model_validate(raw)


def _data() -> PreparedData:
    train_raw = generate_dataset(6, np.random.default_rng(1), sizes=(20, 40))
    val = Part.of(generate_dataset(3, np.random.default_rng(2), sizes=(20, 40)))
    return PreparedData(
        train_raw=train_raw,
        train=Part.of(train_raw),
        val=val,
        test=val,
        provenance={"path": "synthetic", "sha256": "0" * 64, "protocol": "official", "seed": 0},
    )


def test_a_vae_reads_the_area_input_and_learns_no_pseudo_labels() -> None:
    with pytest.raises(ValueError, match="area input"):
        _config(input={"size": 26, "resample": "nearest"})
    with pytest.raises(ValueError, match="semi"):
        _config(semi={})
    with pytest.raises(ValueError, match="exclude"):
        _config(novelty={"exclude": ["Blob"]})


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path: Path) -> None:
    data = _data()
    first = train_vae(_config(), data, tmp_path / "a", stop_after_epochs=1)
    assert [r["epoch"] for r in first["history"]] == [1]
    resumed = train_vae(_config(), data, tmp_path / "a", resume=True)
    assert [r["epoch"] for r in resumed["history"]] == [1, 2]
    whole = train_vae(_config(), data, tmp_path / "b")
    # The same schedule and sampling stream: the resumed run ends where an uninterrupted one does.
    a = torch.load(tmp_path / "a" / LAST, weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / LAST, weights_only=False)["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)
    assert whole["best_epoch"] == resumed["best_epoch"]
    assert resumed["data"]["n_known"]["train"] == 6 * 8  # Near-Full (6 maps) left out


def test_the_threshold_is_calibrated_on_known_classes_only(tmp_path: Path) -> None:
    data = _data()
    config = _config()
    train_vae(config, data, tmp_path / "run")
    extra = finalize_vae(tmp_path / "run" / BEST, data.val, tmp_path / "model")
    manifest = NoveltyManifest.from_json((tmp_path / "model" / "novelty.json").read_text())
    known = known_part(data.val, config)
    assert extra["validation"]["n"] == len(known) == len(data.val) - 3
    assert manifest.threshold == extra["validation"]["threshold"]
    assert manifest.false_alarm_rate == 0.01 and manifest.latent == 4


def test_a_class_the_vae_never_saw_is_flagged_novel_on_real_maps(
    tmp_path: Path, wafer_data_dir: Path
) -> None:
    config = _config(
        epochs=2,
        data={"path": "labelled.npz", "protocol": "official", "limit": 3000},
        optim={"epochs": 2, "batch_size": 32, "warmup_steps": 5, "sampling": "sqrt"},
    )
    data = prepare(config.data, wafer_data_dir / "labelled.npz", tmp_path / "cache", config.seed)
    train_vae(config, data, tmp_path / "run")
    model = tmp_path / "model"
    finalize_vae(tmp_path / "run" / BEST, data.val, model)
    for name in ("model.onnx", "model.json"):
        shutil.copy(CLASSIFIER / name, model / name)
    runtime = ModelRuntime.load(model)

    every = read_npz(wafer_data_dir / "labelled.npz")
    test = every.split == TEST
    near_full = np.flatnonzero(test & (every.labels == DefectClass.NEAR_FULL))
    known = np.flatnonzero(test & (every.labels == DefectClass.NONE))[:500]
    novel = classify_maps(runtime, [every.map(int(i)) for i in near_full])
    usual = classify_maps(runtime, [every.map(int(i)) for i in known])
    caught = np.mean([p.novel and p.reason == "novelty" and p.flagged for p in novel])
    false_alarms = np.mean([p.novel for p in usual])
    assert len(near_full) > 50
    # A small VAE trained for seconds: most never-seen wafers are caught, few known ones.
    assert caught >= 0.5, f"only {caught:.0%} of {len(near_full)} Near-Full wafers flagged novel"
    assert false_alarms <= 0.05, f"{false_alarms:.0%} of None wafers flagged novel"
    assert caught >= 10 * max(false_alarms, 0.01)
