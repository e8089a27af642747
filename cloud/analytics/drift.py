"""The drift report (brief §4 Model Drift Detection), from what the fabs uploaded.

Signals, per fab and per (fab, node):
    * PSI of the predicted-class mix of the current window against the reference distribution
      (the champion's), with the brief's band; not computed under ``min_wafers`` wafers.
    * The trend of the average halting steps over every day given (wafer-weighted daily means):
      rising steps while PSI is stable is the brief's early warning.
    * KS of novelty-score samples against the reference's, once fabs report scores.
    * Reviewed accuracy per true class (labels reviewed in the window), per fab.

Pure: the caller loads aggregates and labels (`cloud.storage`) and stores the report.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np

from cloud.analytics.reviews import reviewed_pairs
from cloud.analytics.stats import (
    Band,
    ClassAccuracy,
    Trend,
    class_accuracy,
    class_shares,
    halting_trend,
    ks_test,
    psi,
    psi_band,
)
from cloud.settings import DriftSettings
from cloud.storage.aggregates import DailyAggregate
from cloud.storage.labels import ReviewedLabel
from wafercore.classes import NUM_CLASSES

KS_NOT_AVAILABLE = "not available: no novelty scores are reported yet"
REFERENCE_SCORES = "reference"
"""Key of the reference sample in ``novelty_scores``; every other key is a fab id."""


@dataclass(frozen=True)
class GroupDrift:
    """Drift figures of one fab (``node_id`` None) or one node of a fab.

    Attributes:
        fab_id, node_id: the group.
        wafers: wafers classified in the window.
        class_counts: predicted-class counts in the window.
        psi: PSI against the reference; None when not computed (see ``reason``).
        band: stable / investigate / retrain; None with ``psi``.
        reason: why PSI is None.
        avg_steps: wafer-weighted mean halting steps in the window; None without wafers.
        halting: trend of daily average steps over every day given; None under
            ``halting_min_days`` days.
    """

    fab_id: str
    node_id: str | None
    wafers: int
    class_counts: tuple[int, ...]
    psi: float | None
    band: Band | None
    reason: str | None
    avg_steps: float | None
    halting: Trend | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "fab_id": self.fab_id,
            "node_id": self.node_id,
            "wafers": self.wafers,
            "class_counts": list(self.class_counts),
            "psi": self.psi,
            "band": self.band,
            "reason": self.reason,
            "avg_steps": self.avg_steps,
            "halting": self.halting.to_dict() if self.halting else None,
        }


@dataclass(frozen=True)
class DailyPoint:
    """One fab's day, for plots: wafers, PSI, average halting steps, reviewed accuracy.

    ``accuracy`` is the share of the day's reviewed flagged wafers whose prediction was
    confirmed (the aggregates' counts); None without reviews. ``psi`` is None without wafers.
    """

    day: date
    wafers: int
    psi: float | None
    avg_steps: float | None
    accuracy: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "day": self.day.isoformat(),
            "wafers": self.wafers,
            "psi": self.psi,
            "avg_steps": self.avg_steps,
            "accuracy": self.accuracy,
        }


Series = dict[str, list[DailyPoint]]
"""Fab id → its days in order."""


@dataclass(frozen=True)
class DriftReport:
    """The drift report of every fab and node (`build_drift_report`)."""

    computed_at: datetime
    window_start: date
    window_end: date
    reference_version: str | None
    fabs: list[GroupDrift]
    nodes: list[GroupDrift]
    ks: dict[str, Any]
    accuracy: dict[str, dict[str, ClassAccuracy]]
    retrain: list[tuple[str, float]]
    series: Series = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (dates and times in ISO 8601)."""
        return {
            "computed_at": self.computed_at.isoformat(),
            "window": {
                "start": self.window_start.isoformat(),
                "end": self.window_end.isoformat(),
            },
            "reference_version": self.reference_version,
            "fabs": [g.to_dict() for g in self.fabs],
            "nodes": [g.to_dict() for g in self.nodes],
            "ks": self.ks,
            "accuracy": {
                fab: {name: acc.to_dict() for name, acc in classes.items()}
                for fab, classes in self.accuracy.items()
            },
            "retrain": [{"fab_id": fab, "psi": value} for fab, value in self.retrain],
            "series": series_to_dict(self.series),
        }


def series_to_dict(series: Series) -> dict[str, list[dict[str, Any]]]:
    """JSON-ready form of `daily_series`' result."""
    return {fab: [p.to_dict() for p in points] for fab, points in series.items()}


def _group(
    rows: Iterable[DailyAggregate], key: Callable[[DailyAggregate], Hashable]
) -> dict[Any, list[DailyAggregate]]:
    out: dict[Any, list[DailyAggregate]] = {}
    for row in rows:
        out.setdefault(key(row), []).append(row)
    return dict(sorted(out.items()))


def _counts(rows: Sequence[DailyAggregate]) -> tuple[int, ...]:
    total = np.zeros(NUM_CLASSES, dtype=np.int64)
    for row in rows:
        if len(row.class_counts) != NUM_CLASSES:
            raise ValueError(
                f"class_counts of {row.fab_id}/{row.node_id} on {row.day} must hold "
                f"{NUM_CLASSES} entries, got {len(row.class_counts)}"
            )
        total += np.asarray(row.class_counts, dtype=np.int64)
    return tuple(int(c) for c in total)


def _avg_steps(rows: Sequence[DailyAggregate]) -> float | None:
    wafers = sum(r.wafers_classified for r in rows)
    if wafers <= 0:
        return None
    return sum(r.avg_recursion_steps * r.wafers_classified for r in rows) / wafers


def _group_drift(
    fab_id: str,
    node_id: str | None,
    window: Sequence[DailyAggregate],
    history: Sequence[DailyAggregate],
    reference_counts: Sequence[float],
    settings: DriftSettings,
) -> GroupDrift:
    counts = _counts(window)
    wafers = sum(counts)
    value: float | None = None
    reason: str | None = None
    if wafers < settings.min_wafers:
        reason = f"{wafers} wafers in the window, fewer than min_wafers={settings.min_wafers}"
    else:
        value = psi(reference_counts, counts)
    trend = halting_trend(
        [r.day for r in history],
        [r.avg_recursion_steps for r in history],
        [r.wafers_classified for r in history],
        settings,
    )
    return GroupDrift(
        fab_id=fab_id,
        node_id=node_id,
        wafers=wafers,
        class_counts=counts,
        psi=value,
        band=psi_band(value, settings) if value is not None else None,
        reason=reason,
        avg_steps=_avg_steps(window),
        halting=trend,
    )


def _ks_section(
    novelty_scores: Mapping[str, Sequence[float]] | None, settings: DriftSettings
) -> dict[str, Any]:
    if novelty_scores is None:
        return {"status": KS_NOT_AVAILABLE}
    if not novelty_scores.get(REFERENCE_SCORES):
        raise ValueError(f"novelty_scores must hold a non-empty {REFERENCE_SCORES!r} sample")
    reference = novelty_scores[REFERENCE_SCORES]
    fabs: dict[str, Any] = {}
    for fab_id, scores in sorted(novelty_scores.items()):
        if fab_id == REFERENCE_SCORES:
            continue
        if not scores:
            fabs[fab_id] = {"n": 0, "status": "no scores in the window"}
            continue
        statistic, p_value = ks_test(reference, scores)
        fabs[fab_id] = {
            "n": len(scores),
            "statistic": statistic,
            "p_value": p_value,
            "drift": p_value < settings.ks_alpha,
        }
    return {"status": "computed", "reference_n": len(reference), "fabs": fabs}


def _window(now: datetime, settings: DriftSettings) -> tuple[date, date]:
    """The UTC days overlapping (now - window_days, now]."""
    return (now - timedelta(days=settings.window_days)).date(), now.date()


def build_drift_report(
    aggregates: Sequence[DailyAggregate],
    labels: Sequence[ReviewedLabel],
    reference_counts: Sequence[float],
    reference_version: str | None,
    settings: DriftSettings,
    *,
    now: datetime,
    novelty_scores: Mapping[str, Sequence[float]] | None = None,
) -> DriftReport:
    """Drift of every fab and node (see the module notes).

    Args:
        aggregates: daily aggregates; PSI uses those whose day overlaps the window
            ``(now - window_days, now]``, the halting trend and the series use all of them (the
            caller chooses how far back to load).
        labels: reviewed labels; those reviewed in the window count for accuracy.
        reference_counts: the reference predicted-class distribution (9 counts or shares).
        reference_version: only aggregates and labels of this model version count (None:
            every version; a canary's model would otherwise blur the champion's mix).
        settings: window, PSI bands, minimum wafers, trend and KS significance.
        now: the report's time (aware UTC).
        novelty_scores: optional score samples: ``"reference"`` and one per fab id.

    Raises:
        ValueError: bad ``reference_counts``, aggregate class counts or ``novelty_scores``.
    """
    class_shares(reference_counts, "reference_counts")  # fails early, naming the argument
    start, end = _window(now, settings)
    rows = [
        a for a in aggregates if reference_version is None or a.model_version == reference_version
    ]
    in_window = [a for a in rows if start <= a.day <= end]
    window_by_fab = _group(in_window, lambda a: a.fab_id)
    fabs = [
        _group_drift(fab, None, window_by_fab.get(fab, []), history, reference_counts, settings)
        for fab, history in _group(rows, lambda a: a.fab_id).items()
    ]
    window_by_node = _group(in_window, lambda a: (a.fab_id, a.node_id))
    nodes = [
        _group_drift(
            fab, node, window_by_node.get((fab, node), []), history, reference_counts, settings
        )
        for (fab, node), history in _group(rows, lambda a: (a.fab_id, a.node_id)).items()
    ]
    return DriftReport(
        computed_at=now,
        window_start=start,
        window_end=end,
        reference_version=reference_version,
        fabs=fabs,
        nodes=nodes,
        ks=_ks_section(novelty_scores, settings),
        accuracy=_accuracy(labels, reference_version, now, settings),
        retrain=_retrain(fabs, settings),
        series=daily_series(rows, reference_counts),
    )


def _retrain(fabs: Sequence[GroupDrift], settings: DriftSettings) -> list[tuple[str, float]]:
    """Fabs whose PSI is above ``psi_retrain``, highest first."""
    over = [(g.fab_id, g.psi) for g in fabs if g.psi is not None and g.psi > settings.psi_retrain]
    return sorted(over, key=lambda item: -item[1])


def _accuracy(
    labels: Sequence[ReviewedLabel],
    reference_version: str | None,
    now: datetime,
    settings: DriftSettings,
) -> dict[str, dict[str, ClassAccuracy]]:
    since = now - timedelta(days=settings.window_days)
    by_fab: dict[str, list[ReviewedLabel]] = {}
    for label in labels:
        if since < label.reviewed_at <= now:
            by_fab.setdefault(label.fab_id, []).append(label)
    out: dict[str, dict[str, ClassAccuracy]] = {}
    for fab, fab_labels in sorted(by_fab.items()):
        pairs = reviewed_pairs(fab_labels, model_version=reference_version)
        if pairs:
            out[fab] = class_accuracy(pairs, settings.alpha)
    return out


def daily_series(aggregates: Sequence[DailyAggregate], reference_counts: Sequence[float]) -> Series:
    """Per fab, per day: wafers, PSI of the day's mix, average halting steps and the reviewed
    accuracy of the day's aggregates (for plots; no minimum of wafers, unlike the report)."""
    out: Series = {}
    for fab, rows in _group(aggregates, lambda a: a.fab_id).items():
        points = []
        for day, day_rows in _group(rows, lambda a: a.day).items():
            counts = _counts(day_rows)
            reviewed = sum(r.reviewed_count for r in day_rows)
            correct = sum(r.reviewed_correct_count for r in day_rows)
            points.append(
                DailyPoint(
                    day=day,
                    wafers=sum(counts),
                    psi=psi(reference_counts, counts) if sum(counts) else None,
                    avg_steps=_avg_steps(day_rows),
                    accuracy=correct / reviewed if reviewed else None,
                )
            )
        out[fab] = points
    return out
