"""The benchmark's outputs: ``bench_{variant}.json`` per protocol, a Markdown comparison and
side-by-side figures (loss vs epoch, ROC curves, confusion matrices at the tuned thresholds,
reliability diagrams, per-class AP bars)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cloud.evaluation.plots import new_figure, save_figure
from wafercore.classes import CLASS_NAMES

FIGURES = ("loss_vs_epoch", "roc_curves", "confusion_matrices", "reliability", "per_class_ap")


def write_json(report: Mapping[str, Any], folder: Path) -> Path:
    """``folder/bench_{variant}.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"bench_{report['variant']}.json"
    path.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    return path


def _ci(value: float, interval: Sequence[float]) -> str:
    return f"{value:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]"


_ROWS: tuple[tuple[str, Any], ...] = (
    ("Head params", lambda r: f"{r['head_trainable_params']:,}"),
    ("Total trainable", lambda r: f"{r['total_trainable_params']:,}"),
    ("Train time (s)", lambda r: f"{r['train_seconds']:.1f} ({r['best_epoch']} best epoch)"),
    ("Val time (s)", lambda r: f"{r['val_seconds']:.4f}"),
    ("Val throughput (wafers/s)", lambda r: f"{r['val_throughput_per_s']:,.0f}"),
    ("Test time (s)", lambda r: f"{r['test_seconds']:.4f}"),
    ("Test throughput (wafers/s)", lambda r: f"{r['test_throughput_per_s']:,.0f}"),
    ("Peak CPU RSS (MB, process)", lambda r: f"{r['peak_cpu_rss_mb']:,.0f}"),
    ("Macro PR-AUC (test)", lambda r: f"{r['test']['macro_pr_auc']:.4f}"),
    ("Brier score (test)", lambda r: f"{r['test']['brier']:.4f}"),
    ("Macro F1 (95% CI)", lambda r: _ci(r["test"]["macro_f1"], r["test"]["macro_f1_ci"])),
    (
        "Macro ROC-AUC (95% CI)",
        lambda r: _ci(r["test"]["macro_roc_auc"], r["test"]["macro_roc_auc_ci"]),
    ),
    ("Accuracy (test)", lambda r: f"{r['test']['accuracy']:.4f}"),
)


def comparison_table(reports: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table: one column per variant, the report's rows, then per-class F1."""
    header = "| Metric | " + " | ".join(r["variant"].capitalize() for r in reports) + " |"
    lines = [header, "|:--|" + "--:|" * len(reports)]
    lines += [f"| {name} | " + " | ".join(f(r) for r in reports) + " |" for name, f in _ROWS]
    for name in CLASS_NAMES:
        cells = " | ".join(f"{r['test']['per_class'][name]['f1']:.3f}" for r in reports)
        lines.append(f"| F1 {name} | {cells} |")
    return "\n".join(lines)


def write_markdown(
    by_protocol: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, command: str
) -> Path:
    """The comparison for every protocol, with the command that produced it."""
    first = next(iter(by_protocol.values()))[0]
    parts = [
        "# Head benchmark: classical MLP head vs 4-qubit variational head",
        "",
        f"Backbone: the penultimate features ({first['feature_dim']}) of `{first['backbone']}`,"
        " frozen. Identical splits, seed and hyper-parameters for both heads: "
        f"`{json.dumps(first['config'])}`. Thresholds per class tuned on validation, applied to "
        "test. Produced by:",
        "",
        f"```\n{command}\n```",
    ]
    titles = {
        "random": "Random 70/10/20 split (the report's protocol)",
        "lots": "Lot-disjoint split (WM-811K Test lots; the honest figure)",
    }
    for protocol, reports in by_protocol.items():
        sizes = reports[0]["split_sizes"]
        parts += [
            "",
            f"## {titles.get(protocol, protocol)}",
            "",
            f"train {sizes['train']:,}, validation {sizes['val']:,}, test {sizes['test']:,}"
            " wafers.",
            "",
            comparison_table(reports),
        ]
    path.write_text("\n".join(parts) + "\n")
    return path


def _loss(ax: Any, report: Mapping[str, Any], _: Any) -> None:
    epochs = [h["epoch"] for h in report["history"]]
    ax.plot(epochs, [h["train_loss"] for h in report["history"]], label="train")
    ax.plot(epochs, [h["val_loss"] for h in report["history"]], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)


def _roc(ax: Any, _: Mapping[str, Any], probs: Mapping[str, Any]) -> None:
    from sklearn.metrics import roc_curve

    for c, name in enumerate(CLASS_NAMES):
        positive = probs["y"] == c
        if positive.any() and not positive.all():
            fpr, tpr, _thresholds = roc_curve(positive, probs["probs"][:, c])
            ax.plot(fpr, tpr, lw=1, label=name)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5, linestyle="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=6)


def _confusion(ax: Any, report: Mapping[str, Any], _: Any) -> None:
    cm = np.asarray(report["test"]["confusion_matrix"], dtype=float)
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=90, fontsize=6)
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES, fontsize=6)
    ax.set_xlabel("predicted (tuned thresholds)")


def _reliability(ax: Any, report: Mapping[str, Any], _: Any) -> None:
    bins = [b for b in report["test"]["reliability"] if b["count"]]
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5, linestyle="--")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")


def _ap(ax: Any, report: Mapping[str, Any], _: Any) -> None:
    values = [report["per_class_ap"][name] for name in CLASS_NAMES]
    ax.bar(range(len(CLASS_NAMES)), values)
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=90, fontsize=6)
    ax.set_ylim(0, 1)
    ax.set_ylabel("average precision")


_DRAW = {
    "loss_vs_epoch": _loss,
    "roc_curves": _roc,
    "confusion_matrices": _confusion,
    "reliability": _reliability,
    "per_class_ap": _ap,
}


def write_figures(
    reports: Sequence[Mapping[str, Any]], probs: Sequence[Mapping[str, Any]], folder: Path
) -> list[Path]:
    """Each figure with one panel per variant, side by side."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in FIGURES:
        fig = new_figure(4.2 * len(reports), 3.8)
        for i, (report, test) in enumerate(zip(reports, probs, strict=True)):
            ax = fig.add_subplot(1, len(reports), i + 1)
            _DRAW[name](ax, report, test)
            f1 = report["test"]["macro_f1"]
            ax.set_title(
                f"{report['variant']} (macro-F1 {f1:.3f})"
                if not math.isnan(f1)
                else report["variant"],
                fontsize=9,
            )
        fig.tight_layout()
        paths.append(save_figure(fig, folder / f"{name}.png"))
    return paths
