"""Figures of a benchmark report, as small PNGs next to ``report.json``.

Figures are drawn on explicit ``Figure`` objects with the Agg canvas, imported when
`write_plots` runs: no pyplot global state, no display, nothing done at import time, and safe to
call from worker threads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from wafercore.classes import CLASS_NAMES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 80
WAFER_COLOURS = ("#cfe8cf", "#c0392b", "#ffffff")
"""Colours of pass, fail and out-of-wafer cells."""


def new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _names(report: Mapping[str, Any]) -> list[str]:
    return list(report.get("class_names") or CLASS_NAMES)


def plot_confusion_matrix(report: Mapping[str, Any], path: Path) -> Path:
    """Confusion matrix normalised per true class, annotated with the row shares."""
    names = _names(report)
    cm = np.asarray(report["confusion_matrix"], dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig = new_figure(6.4, 5.6)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046)
    for (i, j), v in np.ndenumerate(share):
        if cm[i, j]:
            ax.text(
                j,
                i,
                f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if v > 0.5 else "black",
            )
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (share of true class)")
    return save_figure(fig, path)


def plot_per_class_f1(
    report: Mapping[str, Any], baselines: Mapping[str, Mapping[str, Any]], path: Path
) -> Path:
    """Grouped bars: per-class F1 of the model and of each baseline."""
    names = _names(report)
    models = {str(report["model_version"]): [report["per_class"][n]["f1"] for n in names]}
    for name, b in baselines.items():
        models[name] = [b["per_class_f1"].get(n, 0.0) for n in names]
    fig = new_figure(8.0, 4.0)
    ax = fig.add_subplot()
    width = 0.8 / len(models)
    x = np.arange(len(names))
    for k, (name, f1) in enumerate(models.items()):
        ax.bar(x + (k - (len(models) - 1) / 2) * width, f1, width, label=name)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.legend(fontsize=8)
    ax.set_title("Per-class F1")
    return save_figure(fig, path)


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Training loss (left axis) and validation macro-F1 / accuracy (right axis) per epoch."""
    epochs = np.arange(1, len(history) + 1)

    def series(key: str) -> list[float]:
        return [float(h[key]) if h.get(key) is not None else np.nan for h in history]

    fig = new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    ax.plot(epochs, series("train_loss"), color="tab:red", marker="o", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss", color="tab:red")
    right = ax.twinx()
    right.plot(epochs, series("val_macro_f1"), marker="s", label="val macro-F1")
    right.plot(epochs, series("val_accuracy"), marker="^", label="val accuracy")
    right.set_ylim(0, 1.0)
    right.legend(loc="lower right", fontsize=8)
    ax.set_title("Training curves")
    return save_figure(fig, path)


def plot_per_step_accuracy(report: Mapping[str, Any], path: Path) -> Path:
    """Accuracy after each supervision step, annotated with the gain from the first step."""
    acc = [float(a) for a in report["per_step_accuracy"]]
    steps = np.arange(1, len(acc) + 1)
    fig = new_figure(5.0, 3.6)
    ax = fig.add_subplot()
    ax.plot(steps, acc, marker="o")
    for s, a in zip(steps, acc, strict=True):
        ax.annotate(f"{a:.3f}", (s, a), textcoords="offset points", xytext=(0, 6), ha="center")
    ax.set_xticks(steps)
    ax.set_xlabel("supervision step")
    ax.set_ylabel("accuracy")
    gain = acc[-1] - acc[0] if acc else 0.0
    ax.set_title(f"Accuracy per step ({gain:+.3f} from step 1 to {len(acc)})")
    return save_figure(fig, path)


def plot_reliability(report: Mapping[str, Any], path: Path) -> Path:
    """Reliability diagram: accuracy against confidence per bin, with the ECE."""
    bins = [b for b in report.get("reliability") or () if b["count"]]
    fig = new_figure(4.8, 4.4)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    if bins:
        lower = np.array([b["lower"] for b in bins])
        width = np.array([b["upper"] - b["lower"] for b in bins])
        ax.bar(
            lower,
            [b["accuracy"] for b in bins],
            width,
            align="edge",
            alpha=0.7,
            edgecolor="black",
            label="accuracy",
        )
        ax.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            "o",
            color="k",
            markersize=3,
            label="mean confidence",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"Reliability (ECE {float(report['ece'] or 0.0):.3f})")
    return save_figure(fig, path)


def plot_halting_tradeoff(report: Mapping[str, Any], path: Path) -> Path:
    """Macro-F1 against average steps over the halting-threshold sweep, chosen one marked."""
    halting = report["halting"]
    sweep = halting["sweep"]
    fig = new_figure(5.6, 4.0)
    ax = fig.add_subplot()
    ax.plot([s["avg_steps"] for s in sweep], [s["macro_f1"] for s in sweep], marker=".")
    for s in sweep[:: max(1, len(sweep) // 6)]:
        ax.annotate(
            f"{s['threshold']:.2f}",
            (s["avg_steps"], s["macro_f1"]),
            fontsize=7,
            textcoords="offset points",
            xytext=(3, -9),
        )
    chosen = [s for s in sweep if s["threshold"] == halting["threshold"]]
    if chosen:
        c = chosen[0]
        ax.plot(
            [c["avg_steps"]],
            [c["macro_f1"]],
            "r*",
            markersize=12,
            label=f"chosen threshold {c['threshold']:.2f}",
        )
        ax.legend(fontsize=8)
    ax.set_xlabel("average supervision steps per wafer")
    ax.set_ylabel("macro-F1")
    ax.set_title("Halting trade-off")
    return save_figure(fig, path)


def plot_top_errors(
    report: Mapping[str, Any], grids: npt.NDArray[np.integer[Any]], path: Path, top: int = 12
) -> Path:
    """The most confident mistakes as wafer maps, titled ``true → predicted (confidence)``."""
    from matplotlib.colors import ListedColormap

    errors = list(report["errors"])[:top]
    cols = min(4, len(errors))
    rows = -(-len(errors) // cols)
    fig = new_figure(2.3 * cols, 2.4 * rows)
    cmap = ListedColormap(list(WAFER_COLOURS))
    for k, e in enumerate(errors):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(np.asarray(grids[e["index"]]), cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
        title = f"#{e['index']}: {e['true']} → {e['predicted']} ({e['confidence']:.2f})"
        ax.set_title(title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Most confident errors (#index: true → predicted)", fontsize=9)
    return save_figure(fig, path)


def write_plots(
    out_dir: Path | str,
    report: Mapping[str, Any],
    grids: npt.ArrayLike | None,
    history: Sequence[Mapping[str, Any]] | None = None,
    baselines: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Path]:
    """Write every figure the inputs allow into ``out_dir``.

    Figures: ``confusion_matrix.png``, ``per_class_f1.png`` (model against baselines, when any),
    ``training_curves.png`` (when a history is given), ``per_step_accuracy.png``,
    ``reliability.png``, ``halting_tradeoff.png`` (when the report has a sweep) and
    ``top_errors.png`` (when there are errors and grids).

    Args:
        out_dir: created if needed.
        report: from `cloud.evaluation.report.build_report`.
        grids: (N, 26, 26) canonical grids of the evaluated rows (errors index into them).
        history: one dict per epoch with ``train_loss``, ``val_macro_f1``, ``val_accuracy``.
        baselines: name → ``{per_class_f1: {class: f1}, ...}``; the report's when None.

    Returns:
        Paths of the PNGs written, in the order above.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = baselines if baselines is not None else report.get("baselines") or {}
    jobs: list[tuple[str, Callable[[Path], Path]]] = [
        ("confusion_matrix.png", lambda p: plot_confusion_matrix(report, p))
    ]
    if base:
        jobs.append(("per_class_f1.png", lambda p: plot_per_class_f1(report, base, p)))
    if history:
        jobs.append(("training_curves.png", lambda p: plot_training_curves(history, p)))
    if report.get("per_step_accuracy"):
        jobs.append(("per_step_accuracy.png", lambda p: plot_per_step_accuracy(report, p)))
    jobs.append(("reliability.png", lambda p: plot_reliability(report, p)))
    if report["halting"].get("sweep"):
        jobs.append(("halting_tradeoff.png", lambda p: plot_halting_tradeoff(report, p)))
    if grids is not None and report.get("errors"):
        g = np.asarray(grids)
        jobs.append(("top_errors.png", lambda p: plot_top_errors(report, g, p)))
    return [draw(out / name) for name, draw in jobs]
