import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud.evaluation.plots import write_plots
from cloud.evaluation.report import (
    OPTIONAL_KEYS,
    REPORT_KEYS,
    baseline_summary,
    build_report,
    validate_report,
    write_report,
)
from wafercore.classes import CLASS_NAMES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COMPUTE = {
    "params": 123_456,
    "gflops_per_wafer": 0.42,
    "latency_ms": {"p50": 3.1, "p90": 4.2, "p99": 7.9},
    "throughput_per_s": 850.0,
    "peak_rss_mb": 512.0,
}
DATA = {"path": "data/labelled.npz", "sha256": "0" * 64, "protocol": "official", "split": "test"}


def _inputs(n: int = 240, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 9
    probs, halt = [], []
    for s in range(3):
        logits = rng.normal(size=(n, 9)) + (0.5 + s) * np.eye(9)[y]
        probs.append(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True))
        halt.append(rng.uniform(0.3 + 0.2 * s, 1.0, n))
    return {
        "y_true": y,
        "probs_per_step": np.stack(probs).astype(np.float32),  # NumPy types must not leak
        "halt_per_step": np.stack(halt),
        "shapes": rng.integers(15, 90, (n, 2)).astype(np.int32),
        "grids": rng.integers(0, 3, (n, 26, 26)).astype(np.uint8),
        "compute": COMPUTE,
        "model_version": "trm-v1.2.3",
        "data": DATA,
        "baselines": {"rules": baseline_summary(y, rng.integers(0, 9, n))},
        "n_bootstrap": 200,
    }


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return build_report(**_inputs())


def _only_plain(obj: Any) -> bool:
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _only_plain(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_only_plain(v) for v in obj)
    return obj is None or type(obj) in (str, int, float, bool)


def test_report_has_exactly_the_schema_keys(report: dict[str, Any]) -> None:
    assert set(REPORT_KEYS) <= set(report)
    assert set(report) - set(REPORT_KEYS) <= set(OPTIONAL_KEYS)
    assert _only_plain(report)
    json.dumps(report, allow_nan=False)
    assert np.shape(report["confusion_matrix"]) == (9, 9)
    assert list(report["per_class"]) == list(CLASS_NAMES)
    assert set(report["bootstrap_ci"]) == {"accuracy", "macro_f1"}
    assert len(report["per_step_accuracy"]) == 3
    assert set(report["latency_ms"]) == {"p50", "p90", "p99"}
    assert report["data"]["n"] == 240
    assert [b["bucket"] for b in report["size_buckets"]] == [
        "<30",
        "30-39",
        "40-49",
        "50-69",
        ">=70",
    ]


def test_report_is_consistent_with_its_inputs(report: dict[str, Any]) -> None:
    cm = np.array(report["confusion_matrix"])
    assert cm.sum() == 240 and report["accuracy"] == pytest.approx(np.trace(cm) / 240)
    lo, hi = report["bootstrap_ci"]["macro_f1"]
    assert lo <= report["macro_f1"] <= hi
    halting = report["halting"]
    assert halting["tuned_on"] == "this split"
    assert halting["threshold"] in [s["threshold"] for s in halting["sweep"]]
    assert all(
        set(s) == {"threshold", "avg_steps", "accuracy", "macro_f1"} for s in halting["sweep"]
    )
    confidences = [e["confidence"] for e in report["errors"]]
    assert confidences == sorted(confidences, reverse=True)
    assert all(e["true"] in CLASS_NAMES and e["true"] != e["predicted"] for e in report["errors"])


def test_threshold_tuned_on_validation_is_kept() -> None:
    inputs = _inputs()
    report = build_report(**inputs, halt_threshold=0.0)
    assert report["halting"]["threshold"] == 0.0
    assert report["halting"]["tuned_on"] == "validation"
    assert report["halting"]["avg_steps"] == 1.0  # threshold 0: everyone stops after step 1
    assert report["accuracy"] == pytest.approx(report["per_step_accuracy"][0])


def test_single_pass_model_and_undefined_aucs() -> None:
    y = np.zeros(20, np.int64)  # one class: ROC-AUC undefined → null in JSON
    probs = np.full((20, 9), 1 / 9)
    report = build_report(
        y_true=y,
        probs=probs,
        compute=COMPUTE,
        model_version="cnn-v0.1.0",
        data=DATA,
        n_bootstrap=50,
    )
    assert report["halting"]["threshold"] is None and report["halting"]["sweep"] == []
    assert report["macro_roc_auc"] is None
    assert len(report["per_step_accuracy"]) == 1


def test_missing_inputs_and_bad_reports_are_refused(report: dict[str, Any]) -> None:
    inputs = _inputs(n=27)
    with pytest.raises(ValueError, match="peak_rss_mb"):
        build_report(
            **{**inputs, "compute": {k: v for k, v in COMPUTE.items() if k != "peak_rss_mb"}}
        )
    with pytest.raises(ValueError, match="sha256"):
        build_report(**{**inputs, "data": {k: v for k, v in DATA.items() if k != "sha256"}})
    with pytest.raises(ValueError, match="missing keys"):
        validate_report({k: v for k, v in report.items() if k != "brier"})
    with pytest.raises(ValueError, match="unknown keys"):
        validate_report({**report, "notes": "x"})
    with pytest.raises(ValueError, match="JSON"):
        validate_report({**report, "ece": float("nan")})


def test_write_report_files(report: dict[str, Any], tmp_path: Path) -> None:
    json_path, md_path = write_report(
        report, tmp_path / "out", figures=[tmp_path / "out" / "a.png"]
    )
    text = json_path.read_text()
    assert json.loads(text) == report
    assert text.index('"accuracy"') < text.index('"brier"')  # sorted keys
    md = md_path.read_text()
    for name in CLASS_NAMES:
        assert name in md
    for section in (
        "Headline",
        "Per class",
        "Confusion matrix",
        "Calibration",
        "halting",
        "Map-size",
        "Compute",
        "Baselines",
        "Error analysis",
        "![a](a.png)",
    ):
        assert section in md
    lo, hi = report["bootstrap_ci"]["accuracy"]
    assert f"[{lo:.4f}, {hi:.4f}]" in md


def test_plots_are_valid_small_pngs(report: dict[str, Any], tmp_path: Path) -> None:
    history = [
        {"train_loss": 1.2, "val_macro_f1": 0.5, "val_accuracy": 0.6},
        {"train_loss": 0.7, "val_macro_f1": 0.7, "val_accuracy": 0.8},
    ]
    paths = write_plots(tmp_path, report, _inputs()["grids"], history=history)
    assert [p.name for p in paths] == [
        "confusion_matrix.png",
        "per_class_f1.png",
        "training_curves.png",
        "per_step_accuracy.png",
        "reliability.png",
        "halting_tradeoff.png",
        "top_errors.png",
    ]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 2000
    assert sum(p.stat().st_size for p in paths) < 1_000_000


def test_plots_skip_what_they_lack(tmp_path: Path) -> None:
    y = np.arange(18) % 9
    report = build_report(
        y_true=y,
        probs=np.eye(9)[y] * 0.9 + 0.01,
        compute=COMPUTE,
        model_version="cnn-v0.1.0",
        data=DATA,
        n_bootstrap=20,
    )
    paths = write_plots(tmp_path, report, grids=None)
    assert [p.name for p in paths] == [
        "confusion_matrix.png",
        "per_step_accuracy.png",
        "reliability.png",
    ]
