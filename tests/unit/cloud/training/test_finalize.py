"""Train, calibrate, export and evaluate a tiny model end to end on synthetic wafers."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cloud.evaluation.evaluate import evaluate_model
from cloud.evaluation.report import REPORT_KEYS
from cloud.training import finalize as finalize_module
from cloud.training.config import TrainConfig
from cloud.training.data import Part, PreparedData
from cloud.training.finalize import calibrate, finalize, tune_second_look
from cloud.training.trainer import BEST, train
from wafercore.dataset import WaferDataset
from wafercore.readers.npz import write_npz
from wafercore.runtime import ModelRuntime
from wafercore.synthetic import generate_dataset


def _synthetic(*, train: int, val: int, sizes: tuple[int, int], seed: int = 1) -> PreparedData:
    """Synthetic training and validation maps (``train`` and ``val`` per class)."""
    train_raw = generate_dataset(train, np.random.default_rng(seed), sizes=sizes)
    val_part = Part.of(generate_dataset(val, np.random.default_rng(seed + 1), sizes=sizes))
    return PreparedData(
        train_raw=train_raw,
        train=Part.of(train_raw),
        val=val_part,
        test=val_part,
        provenance={"path": "synthetic", "sha256": "0" * 64, "protocol": "official", "seed": 0},
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    data = _synthetic(train=10, val=6, sizes=(20, 40))
    val = data.val
    config = TrainConfig.model_validate(
        {
            "kind": "trm",
            "version": "trm-v0.0.1",
            "device": "cpu",
            "trm": {"dim": 16, "heads": 2, "patch": 4, "n": 1, "T": 2, "n_sup": 3},
            "optim": {"epochs": 2, "samples_per_epoch": 96, "batch_size": 32, "warmup_steps": 2},
        }
    )
    train(config, data, root)
    finalize(root / BEST, val, root / "model")
    return root / "model"


def test_finalize_tunes_halting_and_temperature_on_validation(model_dir: Path) -> None:
    manifest = json.loads((model_dir / "model.json").read_text())
    assert 0 < manifest["halt_threshold"] <= 1
    assert 0.05 <= manifest["temperature"] <= 20
    extra = manifest["extra"]
    assert extra["validation"]["n"] == 54
    assert extra["data"]["sha256"] == "0" * 64
    assert extra["training"]["version"] == "trm-v0.0.1"
    assert extra["gflops_per_step"] > 0
    assert len(extra["history"]) == 2
    runtime = ModelRuntime.load(model_dir)
    assert runtime.manifest.temperature == pytest.approx(extra["validation"]["temperature"])
    # The second look: swept on validation at this halting, switched on only if it pays.
    sweep = extra["validation"]["second_look"]
    thresholds = [0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    assert [(s["views"], s["threshold"]) for s in sweep] == [(8, t) for t in thresholds] + [
        (4, t) for t in thresholds
    ]
    assert sweep[0]["looked"] == 0.0
    assert sweep[0]["steps_per_wafer"] == pytest.approx(extra["validation"]["avg_steps"])
    assert all(s["steps_per_wafer"] >= sweep[0]["steps_per_wafer"] for s in sweep)
    # Four views cost fewer steps than eight at every threshold.
    for eight, four in zip(sweep[:7], sweep[7:], strict=True):
        assert four["looked"] == eight["looked"]
        assert four["steps_per_wafer"] <= eight["steps_per_wafer"]
    chosen = runtime.manifest.tta_threshold
    if chosen:
        best = max(sweep, key=lambda s: s["macro_f1"])
        assert best["macro_f1"] >= sweep[0]["macro_f1"] + 0.002


def test_the_second_look_takes_no_more_wafers_than_the_latency_budget_allows(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = ModelRuntime.load(model_dir)
    val = Part.of(generate_dataset(6, np.random.default_rng(2), sizes=(20, 40)))
    monkeypatch.setattr(finalize_module, "SECOND_LOOK_MIN_GAIN", -1.0)  # any fitting one wins
    monkeypatch.setattr(finalize_module, "SECOND_LOOK_MAX_SHARE", {8: 1.0, 4: 1.0})
    threshold, views, sweep = tune_second_look(runtime, val, budget_steps=100.0)
    best = max(sweep, key=lambda s: s["macro_f1"])
    assert (threshold, views) == (best["threshold"], best["views"])
    # Allowed to look at no wafer: only "never look twice" fits.
    monkeypatch.setattr(finalize_module, "SECOND_LOOK_MAX_SHARE", {8: 0.0, 4: 0.0})
    assert tune_second_look(runtime, val, budget_steps=100.0)[0] == 0.0
    share = max(s["looked"] for s in sweep if s["looked"] < 1.0)
    monkeypatch.setattr(finalize_module, "SECOND_LOOK_MAX_SHARE", {8: share, 4: share})
    threshold, views, _ = tune_second_look(runtime, val, budget_steps=100.0)
    fitting = [s for s in sweep if s["looked"] <= share]
    best = max(fitting, key=lambda s: s["macro_f1"])
    assert (threshold, views) == (best["threshold"], best["views"])
    # Eight views allowed no wafer: only the four-view rows (or never) can be chosen.
    monkeypatch.setattr(finalize_module, "SECOND_LOOK_MAX_SHARE", {8: 0.0, 4: 1.0})
    threshold, views, _ = tune_second_look(runtime, val, budget_steps=100.0)
    fitting = [s for s in sweep if s["views"] == 4 or s["looked"] == 0.0]
    best = max(fitting, key=lambda s: s["macro_f1"])
    assert threshold == best["threshold"]
    assert threshold == 0.0 or views == 4


def test_calibrating_a_calibrated_model_gives_the_same_manifest(
    area_classifier: Callable[..., Path], tmp_path: Path
) -> None:
    maps = Part.of(generate_dataset(6, np.random.default_rng(5), sizes=(20, 40)))
    models = {
        name: area_classifier(tmp_path / name, pooled=False, temperature=temperature)
        for name, temperature in (("fresh", 1.0), ("calibrated", 2.0))  # same weights
    }
    # Labels the untrained model gets two times in three: its temperature is then finite.
    runtime = ModelRuntime.load(models["fresh"])
    labels = runtime.predict(maps.inputs(runtime.manifest.input, 0, len(maps))).prediction
    rng = np.random.default_rng(6)
    labels = np.where(rng.random(len(labels)) < 1 / 3, rng.integers(0, 9, len(labels)), labels)
    val = Part(raw=maps.raw, grids=maps.grids, labels=labels, shapes=maps.shapes)
    manifests = []
    for model in models.values():
        calibrate(model, val, {"gflops_per_step": 0.01})
        manifests.append(ModelRuntime.load(model).manifest)
    fresh, again = manifests
    assert 0.06 < fresh.temperature < 19  # fitted inside the bounds, so a wrong base shows
    assert again.temperature == pytest.approx(fresh.temperature, rel=1e-4)
    assert again.tta_threshold == fresh.tta_threshold


def test_evaluate_writes_the_stable_report_and_plots(model_dir: Path, tmp_path: Path) -> None:
    test_raw = generate_dataset(5, np.random.default_rng(3), sizes=(20, 40))
    test = WaferDataset.from_maps(
        list(test_raw.maps()),
        labels=test_raw.labels,
        split=["Test"] * len(test_raw),
        lot=test_raw.lot,
    )
    path = tmp_path / "test.npz"
    write_npz(test, path)
    out = tmp_path / "eval"
    report = evaluate_model(model_dir, path, "official", out)
    on_disk = json.loads((out / "report.json").read_text())
    assert set(REPORT_KEYS) <= set(on_disk)
    assert on_disk["data"]["n"] == 45 and on_disk["model_version"] == "trm-v0.0.1"
    assert len(on_disk["per_step_accuracy"]) == 3
    assert report["gflops_per_wafer"] > 0
    second = on_disk["second_look"]
    assert second["threshold"] == ModelRuntime.load(model_dir).manifest.tta_threshold
    assert 0.0 <= second["looked_fraction"] <= 1.0 and second["extra_steps_per_wafer"] >= 0
    assert on_disk["latency_ms"]["p50"] <= on_disk["latency_ms"]["p99"]
    assert (out / "report.md").read_text().count("Scratch") >= 1
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_random_protocol_evaluates_on_the_split_the_model_was_trained_with(
    model_dir: Path, tmp_path: Path
) -> None:
    raw = generate_dataset(20, np.random.default_rng(4), sizes=(20, 40))  # 180 maps
    path = tmp_path / "all.npz"
    write_npz(raw, path)
    sizes = {}
    for fraction in (0.1, 0.15):
        copy = tmp_path / f"model-{fraction}"
        shutil.copytree(model_dir, copy)
        manifest = json.loads((copy / "model.json").read_text())
        manifest["extra"]["data"]["val_fraction"] = fraction
        (copy / "model.json").write_text(json.dumps(manifest))
        report = evaluate_model(copy, path, "random", tmp_path / f"eval-{fraction}")
        sizes[fraction] = report["data"]["n"]
    assert sizes[0.1] == pytest.approx(18, abs=9)
    assert sizes[0.15] == pytest.approx(27, abs=9)
    assert sizes[0.15] > sizes[0.1]


@pytest.mark.parametrize("kind", ["cnn", "trm"])
def test_a_model_on_the_area_input_trains_exports_and_serves_its_declared_input(
    tmp_path: Path, kind: str
) -> None:
    data = _synthetic(train=6, val=3, sizes=(20, 90), seed=3)
    val = data.val
    config = TrainConfig.model_validate(
        {
            "kind": kind,
            "version": f"{kind}-v0.0.2",
            "device": "cpu",
            "input": {"size": 16, "resample": "area", "channels": ["fail", "die"]},
            "cnn": {"channels": [4, 8], "convs_per_block": 2},
            "trm": {"dim": 16, "heads": 2, "n": 1, "T": 2, "n_sup": 2, "stem": [4, 8]},
            "optim": {"epochs": 1, "samples_per_epoch": 32, "batch_size": 16, "warmup_steps": 1},
        }
    )
    train(config, data, tmp_path)
    finalize(tmp_path / BEST, val, tmp_path / "model")
    runtime = ModelRuntime.load(tmp_path / "model")
    assert runtime.manifest.input.to_json() == {
        "size": 16,
        "resample": "area",
        "channels": ["fail", "die"],
    }
    wafers = [val.raw.map(i) for i in range(3)]
    assert runtime.prepare(wafers).shape == (3, 2, 16, 16)
    assert runtime.predict(runtime.prepare(wafers)).probabilities.shape == (3, 9)
