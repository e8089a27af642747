"""The drift report's figure: each signal over time, per fab, as one PNG.

Drawn like `cloud.evaluation.plots`: an explicit ``Figure`` on the Agg canvas, imported when a
figure is drawn; no pyplot global state, nothing done at import time, safe in worker threads.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from cloud.analytics.drift import DailyPoint
from cloud.evaluation.plots import new_figure
from cloud.settings import DriftSettings

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 80


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, format="png")
    return buffer.getvalue()


def _plot_signal(
    ax: Axes, series: Mapping[str, Sequence[DailyPoint]], signal: str, ylabel: str
) -> bool:
    """One line per fab of ``signal`` (a `DailyPoint` field); whether anything was drawn."""
    drawn = False
    for fab, points in series.items():
        xs = [p.day for p in points if getattr(p, signal) is not None]
        ys = [getattr(p, signal) for p in points if getattr(p, signal) is not None]
        if xs:
            ax.plot(np.array(xs, dtype="datetime64[D]"), ys, marker="o", markersize=3, label=fab)
            drawn = True
    ax.set_ylabel(ylabel)
    if drawn:
        ax.legend(fontsize=7, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return drawn


def drift_png(
    series: Mapping[str, Sequence[DailyPoint]],
    settings: DriftSettings,
    *,
    title: str = "Drift signals per fab",
) -> bytes:
    """PNG of PSI (with the investigate / retrain bands), average halting steps and reviewed
    accuracy, per fab per day (`cloud.analytics.drift.daily_series`, or a report's ``series``).

    An empty series renders a figure that says "no data"; the accuracy panel is drawn only
    when some day has reviews.
    """
    has_accuracy = any(p.accuracy is not None for points in series.values() for p in points)
    panels = 3 if has_accuracy else 2
    fig = new_figure(7.5, 2.4 * panels + 0.6)
    axes = [fig.add_subplot(panels, 1, 1)]
    axes += [fig.add_subplot(panels, 1, i + 1, sharex=axes[0]) for i in range(1, panels)]
    if _plot_signal(axes[0], series, "psi", "PSI"):
        axes[0].axhspan(settings.psi_investigate, settings.psi_retrain, color="gold", alpha=0.2)
        axes[0].axhline(settings.psi_investigate, color="goldenrod", linestyle="--", lw=1)
        axes[0].axhline(settings.psi_retrain, color="tab:red", linestyle="--", lw=1)
        axes[0].set_ylim(bottom=0)
    axes[0].set_title(title)
    if not _plot_signal(axes[1], series, "avg_steps", "avg halting steps"):
        axes[1].set_xticks([])  # no days: the numbers of an empty axis mean nothing
    if has_accuracy:
        _plot_signal(axes[2], series, "accuracy", "reviewed accuracy")
        axes[2].set_ylim(0, 1.05)
    axes[-1].set_xlabel("day (UTC)")
    fig.autofmt_xdate()
    fig.tight_layout()
    return _png(fig)
