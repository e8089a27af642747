"""``wafer-cloud bench-heads`` on a few hundred synthetic wafers, both heads, both protocols:
every report key and figure is written, and the quantum head has its expected size."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cloud.cli import main
from cloud.heads.models import expected_quantum_parameters
from cloud.heads.report import FIGURES
from cloud.pipeline.synthetic_data import write_tiny_dataset
from wafercore.classes import CLASS_NAMES, NUM_CLASSES

REPORT_KEYS = {
    "variant",
    "protocol",
    "backbone",
    "feature_dim",
    "split_sizes",
    "config",
    "head_trainable_params",
    "total_trainable_params",
    "train_seconds",
    "best_epoch",
    "history",
    "val_seconds",
    "val_throughput_per_s",
    "test_seconds",
    "test_throughput_per_s",
    "backbone_throughput_per_s",
    "peak_cpu_rss_mb",
    "peak_gpu_mb",
    "validation",
    "test",
    "per_class_ap",
}
TEST_KEYS = {
    "n",
    "macro_f1",
    "macro_f1_ci",
    "macro_f1_argmax",
    "accuracy",
    "macro_roc_auc",
    "macro_roc_auc_ci",
    "macro_pr_auc",
    "brier",
    "ece",
    "per_class",
    "confusion_matrix",
    "reliability",
    "thresholds",
}


def test_both_heads_under_both_protocols_write_every_report_and_figure(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "tiny.npz", train_per_class=24, test_per_class=8)
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        main,
        [
            "bench-heads",
            "--data",
            str(data),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--batch-size",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    for protocol in ("random", "lots"):
        reports = {}
        for variant in ("classical", "quantum"):
            report = json.loads((out / protocol / f"bench_{variant}.json").read_text())
            assert set(report) == REPORT_KEYS
            assert set(report["test"]) == TEST_KEYS
            assert set(report["test"]["per_class"]) == set(CLASS_NAMES)
            assert (report["variant"], report["protocol"]) == (variant, protocol)
            assert len(report["history"]) == 2 and report["best_epoch"] in (1, 2)
            reports[variant] = report
        dim = reports["quantum"]["feature_dim"]
        assert reports["quantum"]["head_trainable_params"] == expected_quantum_parameters(
            dim, NUM_CLASSES, 2
        )
        # Identical rows for both heads.
        assert reports["quantum"]["split_sizes"] == reports["classical"]["split_sizes"]
        for name in FIGURES:
            figure = out / protocol / "figures" / f"{name}.png"
            assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    comparison = (out / "comparison.md").read_text()
    assert "Random 70/10/20" in comparison and "Lot-disjoint" in comparison
    assert "| Head params |" in comparison and "| F1 Scratch |" in comparison


def test_an_unknown_protocol_or_missing_data_is_refused_by_name(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["bench-heads", "--data", str(tmp_path / "no.npz"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "--data" in result.output
