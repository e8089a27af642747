"""The novelty section of a model's evaluation (issue 14): ``novelty_report.json``, ``.md``, a plot.

For a classifier directory that ships a novelty model (`wafercore.novelty`), measured as a node
runs it (the exported graph under ONNX Runtime, the manifest's threshold):

- on the test lots, the score's quantiles and the share flagged novel per true class; every
  class is known to the shipped VAE, so the flagged share is its false-alarm rate on lots it
  never saw (calibrated to ``false_alarm_rate`` on validation lots);
- whether the score adds to the classifier's own doubt (``1 - max softmax`` of its served
  answers) in ranking its misclassified wafers (`misclassification_auroc`);
- the same quantiles and flagged share on a sample of the unlabelled production stream;
- the leave-one-class-out summary (`cloud.evaluation.loco`), copied in when given;
- what novelty adds at the edge: mean milliseconds per wafer at batch 1, one thread.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cloud.evaluation.evaluate import LATENCY_SAMPLES, Served, serve_part
from cloud.evaluation.novelty import misclassification_auroc
from cloud.evaluation.plots import new_figure, save_figure
from cloud.training.data import Part, evaluation_part, load_unlabelled
from cloud.training.vae import runtime_scores
from wafercore.classes import CLASS_NAMES
from wafercore.readers.npz import file_sha256
from wafercore.runtime import ModelRuntime

if TYPE_CHECKING:
    pass

REPORT_JSON, REPORT_MD = "novelty_report.json", "novelty_report.md"
"""The report's files (never ``novelty.json``, the novelty model's manifest)."""
QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)


def score_summary(scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Count, mean, quantiles and the share above ``threshold`` of a group's scores."""
    if len(scores) == 0:
        return {"n": 0}
    return {
        "n": len(scores),
        "mean": float(scores.mean()),
        "quantiles": {str(q): float(np.quantile(scores, q)) for q in QUANTILES},
        "flagged": float(np.mean(scores > threshold)),
    }


def class_section(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """The test lots' scores: all of them, and per true class."""
    return {
        "all": score_summary(scores, threshold),
        "per_class": {
            name: score_summary(scores[labels == i], threshold)
            for i, name in enumerate(CLASS_NAMES)
        },
    }


def edge_cost(model_dir: Path, part: Part, seed: int = 0) -> dict[str, Any]:
    """Mean and p99 milliseconds per wafer at batch 1 (one thread, input building included)
    of the classifier's `predict` and of the novelty model's `score`, on ~300 raw maps."""
    runtime = ModelRuntime.load(model_dir, threads=1)
    assert runtime.novelty is not None  # the caller checked
    rng = np.random.default_rng([seed, 5])
    sample = rng.choice(len(part), size=min(LATENCY_SAMPLES, len(part)), replace=False)
    classify, novelty = [], []
    for i in sample:
        wafer = part.raw.map(int(i))
        started = time.perf_counter()
        runtime.predict(runtime.prepare([wafer]))
        middle = time.perf_counter()
        runtime.novelty.score(runtime.novelty.prepare([wafer]))
        classify.append((middle - started) * 1000)
        novelty.append((time.perf_counter() - middle) * 1000)

    def stats(ms: list[float]) -> dict[str, float]:
        return {"mean": float(np.mean(ms)), "p99": float(np.percentile(ms, 99))}

    added = float(np.mean(novelty) / np.mean(classify))
    return {
        "n": len(sample),
        "threads": 1,
        "classifier_ms": stats(classify),
        "novelty_ms": stats(novelty),
        "novelty_over_classifier": added,
    }


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def misclassification(
    served: Served, labels: np.ndarray, scores: np.ndarray, threshold: float
) -> dict[str, Any]:
    """Does the score catch the classifier's errors beyond its own doubt? (AUROCs, shares)."""
    predicted = served.probabilities.argmax(axis=1)
    wrong = predicted != labels
    aurocs = misclassification_auroc(served.probabilities.max(axis=1), scores, wrong)
    flagged = scores > threshold
    return {
        "n": len(labels),
        "misclassified": int(wrong.sum()),
        "auroc_doubt": _finite(aurocs["doubt"]),
        "auroc_doubt_and_novelty": _finite(aurocs["doubt_and_novelty"]),
        "flagged_of_misclassified": float(flagged[wrong].mean()) if wrong.any() else None,
        "flagged_of_correct": float(flagged[~wrong].mean()) if (~wrong).any() else None,
    }


def evaluate_novelty(
    model_dir: Path,
    data_path: Path,
    out: Path,
    *,
    protocol: str = "official",
    unlabelled: Path | None = None,
    unlabelled_limit: int = 20_000,
    loco: Path | None = None,
    part: Part | None = None,
    served: Served | None = None,
) -> dict[str, Any]:
    """Evaluate the novelty model shipped in ``model_dir``; writes ``novelty_report.json``,
    ``novelty_report.md`` and ``novelty_scores.png`` into ``out`` and returns the report (not
    ``novelty.json``: that is the novelty model's manifest, and ``out`` may be the model's own
    folder).

    ``part`` and ``served`` (the test part and the classifier's served answers on it) spare
    `cloud.evaluation.evaluate.evaluate_model` computing them twice; without them they are
    computed here (the test part with the classifier's own validation fraction and seed).

    Raises:
        ValueError: ``model_dir`` holds no novelty model.
    """
    runtime = ModelRuntime.load(model_dir, threads=2)
    if runtime.novelty is None:
        raise ValueError(f"{model_dir} has no novelty model (novelty.onnx + novelty.json)")
    novelty = runtime.novelty.manifest
    trained_on = runtime.manifest.extra.get("data", {})
    seed = int(trained_on.get("seed", 0))
    if part is None:
        val_fraction = float(trained_on.get("val_fraction", 0.1))
        part = evaluation_part(data_path, protocol, val_fraction, seed)
    served = served or serve_part(runtime, part)
    scores = runtime_scores(runtime.novelty, part.raw)
    threshold = novelty.threshold
    report: dict[str, Any] = {
        "model_version": runtime.version,
        "novelty_version": novelty.version,
        "threshold": threshold,
        "false_alarm_rate": novelty.false_alarm_rate,
        "data": {"path": str(data_path), "sha256": file_sha256(data_path), "protocol": protocol},
        "test": class_section(scores, part.labels, threshold),
        "misclassification": misclassification(served, part.labels, scores, threshold),
        "unlabelled": None,
        "loco": None,
        "edge": edge_cost(model_dir, part, seed),
    }
    production = np.empty(0, np.float32)
    if unlabelled is not None:
        raw, provenance = load_unlabelled(unlabelled, unlabelled_limit, seed)
        production = runtime_scores(runtime.novelty, raw)
        report["unlabelled"] = {**provenance, **score_summary(production, threshold)}
    if loco is not None:
        report["loco"] = loco_section(loco)
    out.mkdir(parents=True, exist_ok=True)
    figure = plot_scores(scores, part.labels, production, threshold, out / "novelty_scores.png")
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    (out / REPORT_MD).write_text(render_markdown(report, figure.name))
    return report


def loco_section(path: Path) -> dict[str, Any]:
    """The leave-one-class-out summary of a ``loco.json`` (`cloud.evaluation.loco`): the mean
    and each held-out class's metrics, with its rates at its own threshold."""
    summary = json.loads(Path(path).read_text())
    return {
        "path": str(path),
        "mean": summary["mean"],
        "classes": {
            name: {**r["metrics"], **{f"at_threshold_{k}": v for k, v in r["calibrated"].items()}}
            for name, r in summary["classes"].items()
        },
    }


def plot_scores(
    scores: np.ndarray, labels: np.ndarray, production: np.ndarray, threshold: float, path: Path
) -> Path:
    """Score histograms (log bins): test lots by true class, the unlabelled production sample,
    and the threshold."""
    fig = new_figure(7.0, 4.4)
    ax = fig.add_subplot()
    every = np.concatenate([scores, production])
    positive = every[every > 0]
    lo, hi = (positive.min(), positive.max()) if len(positive) else (1e-3, 1.0)
    bins = np.geomspace(lo, max(hi, lo * 1.01), 50).tolist()
    ax.hist(scores, bins=bins, histtype="step", density=True, color="black", label="test lots")
    for i, name in enumerate(CLASS_NAMES):
        mine = scores[labels == i]
        if len(mine):
            ax.hist(mine, bins=bins, histtype="step", density=True, linewidth=0.8, label=name)
    if len(production):
        ax.hist(production, bins=bins, density=True, alpha=0.3, color="grey", label="unlabelled")
    ax.axvline(threshold, color="red", linestyle="--", label="threshold")
    ax.set_xscale("log")
    ax.set_xlabel("novelty score (cross-entropy per die)")
    ax.set_ylabel("density")
    ax.set_title("Novelty scores: test lots by true class, production sample")
    ax.legend(fontsize=7, ncols=2)
    return save_figure(fig, path)


def _row(name: str, s: Mapping[str, Any]) -> str:
    if not s.get("n"):
        return f"| {name} | 0 | | | | | |"
    q = s["quantiles"]
    return (
        f"| {name} | {s['n']:,} | {s['mean']:.4f} | {q['0.5']:.4f} | {q['0.95']:.4f} "
        f"| {q['0.99']:.4f} | {s['flagged']:.2%} |"
    )


def _loco_lines(loco: Mapping[str, Any]) -> list[str]:
    mean = loco["mean"]
    lines = [
        "",
        "## Leave-one-class-out",
        "",
        "| held-out class | AUROC | AUPRC | FNR @ 5% FPR | missed at threshold |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {name} | {m['auroc']:.4f} | {m['auprc']:.4f} | {m['fnr_at_5pct_fpr']:.4f} "
            f"| {m['at_threshold_miss_rate']:.4f} |"
            for name, m in loco["classes"].items()
        ),
    ]
    if mean.get("n_classes"):
        lines.append(
            f"| **mean** | **{mean['auroc']:.4f}** | **{mean['auprc']:.4f}** "
            f"| **{mean['fnr_at_5pct_fpr']:.4f}** | **{mean['miss_rate']:.4f}** |"
        )
    return lines


def render_markdown(report: Mapping[str, Any], figure: str) -> str:
    """``novelty_report.md``: the report's tables."""
    mis, edge = report["misclassification"], report["edge"]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    lines = [
        f"# Novelty model {report['novelty_version']} with {report['model_version']}",
        "",
        f"Threshold {report['threshold']:.4f} (calibrated to flag "
        f"{report['false_alarm_rate']:.1%} of known-pattern validation wafers). Every class is "
        "known to this VAE: the flagged share on test lots is its false-alarm rate on unseen "
        "lots.",
        "",
        "| wafers | n | mean | median | p95 | p99 | flagged |",
        "|---|---:|---:|---:|---:|---:|---:|",
        _row("test lots, all", report["test"]["all"]),
        *(_row(name, s) for name, s in report["test"]["per_class"].items()),
    ]
    if report["unlabelled"] is not None:
        lines.append(_row("unlabelled production sample", report["unlabelled"]))
    lines += [
        "",
        f"## Catching the classifier's errors ({mis['misclassified']:,} of {mis['n']:,} wrong)",
        "",
        f"AUROC of its doubt (1 - max softmax) alone: {fmt(mis['auroc_doubt'])}; with the "
        f"novelty score (mean of ranks): {fmt(mis['auroc_doubt_and_novelty'])}. Flagged novel: "
        f"{fmt(mis['flagged_of_misclassified'])} of misclassified wafers, "
        f"{fmt(mis['flagged_of_correct'])} of correct ones.",
    ]
    if report["loco"] is not None:
        lines += _loco_lines(report["loco"])
    lines += [
        "",
        "## Cost at the edge (batch 1, one thread)",
        "",
        f"Classifier {edge['classifier_ms']['mean']:.2f} ms per wafer (p99 "
        f"{edge['classifier_ms']['p99']:.2f}); novelty adds {edge['novelty_ms']['mean']:.2f} ms "
        f"(p99 {edge['novelty_ms']['p99']:.2f}), {edge['novelty_over_classifier']:.0%} of the "
        f"classifier's time, over {edge['n']} wafers.",
        "",
        f"![Novelty scores]({figure})",
        "",
    ]
    return "\n".join(lines)
