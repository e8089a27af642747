"""The canary's A/B decision and the post-promotion watch (brief §4 A/B testing, rollback).

Pure: the caller gathers each arm's figures (`ArmData`) from the uploaded labels and daily
aggregates and stores the `Decision`. Rules of `decide`, in order:

1. Guardrails, checked as soon as their data exists; any violation rolls back at once:
   canary p99 latency < ``max_p99_ms``; every class with at least ``min_class_support``
   reviewed samples in the canary arm has F1 >= ``min_class_f1``; the canary's flagged rate is
   not significantly (one-sided two-proportion z-test at ``alpha``) more than
   ``max_review_rate_increase`` above the control's.
2. Promote when both arms have ``min_reviewed_per_arm`` reviewed samples and the bootstrap
   interval of macro-F1(canary) - macro-F1(control) lies above 0.
3. After ``trial_window_s`` without a promotion: roll back. Otherwise wait.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from cloud.analytics.stats import bootstrap_f1_difference, macro_f1, two_proportion, wilson
from cloud.evaluation.metrics import per_class
from cloud.settings import RolloutSettings

Action = Literal["promote", "rollback", "wait"]


@dataclass(frozen=True)
class ArmData:
    """One arm's figures since the canary started.

    Attributes:
        version: the model version the arm runs.
        pairs: its reviewed canary samples (``review_reason`` 4) as (true, predicted) class
            ids (`cloud.analytics.reviews.reviewed_pairs`).
        wafers_classified: wafers the arm classified (sum of its daily aggregates).
        flagged_count: of those, wafers flagged for review (canary samples not counted).
        latency_p99_ms: the highest daily p99 of the arm's nodes; None before any aggregate.
    """

    version: str
    pairs: Sequence[tuple[int, int]]
    wafers_classified: int = 0
    flagged_count: int = 0
    latency_p99_ms: float | None = None

    @property
    def review_rate(self) -> float | None:
        """Flagged share of the classified wafers; None before any wafer."""
        if self.wafers_classified <= 0:
            return None
        return self.flagged_count / self.wafers_classified


@dataclass(frozen=True)
class Decision:
    """What to do with a rollout now, why, and the figures behind it (JSON-ready)."""

    action: Action
    reason: str
    statistics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"action": self.action, "reason": self.reason, "statistics": self.statistics}


def _finite(value: float | None) -> float | None:
    """None for a missing or non-finite float (strict JSON has no inf or NaN)."""
    return value if value is not None and math.isfinite(value) else None


def _arm_statistics(arm: ArmData) -> dict[str, Any]:
    true = [t for t, _ in arm.pairs]
    pred = [p for _, p in arm.pairs]
    classes = per_class(true, pred)
    return {
        "version": arm.version,
        "n": len(arm.pairs),
        "macro_f1": macro_f1(true, pred) if arm.pairs else None,
        "per_class": {
            name: {"f1": c["f1"], "support": int(c["support"])} for name, c in classes.items()
        },
        "wafers_classified": arm.wafers_classified,
        "flagged_count": arm.flagged_count,
        "review_rate": arm.review_rate,
        "latency_p99_ms": arm.latency_p99_ms,
    }


def _review_rate_test(
    canary: ArmData, control: ArmData, settings: RolloutSettings
) -> dict[str, Any] | None:
    """One-sided tests of canary's flagged rate above control's: by more than the margin (the
    guardrail) and by anything (for information)."""
    if canary.wafers_classified <= 0 or control.wafers_classified <= 0:
        return None
    counts = (
        canary.flagged_count,
        canary.wafers_classified,
        control.flagged_count,
        control.wafers_classified,
    )
    z, p = two_proportion(*counts, "larger", value=settings.max_review_rate_increase)
    z0, p0 = two_proportion(*counts, "larger")
    difference = (canary.review_rate or 0.0) - (control.review_rate or 0.0)
    return {
        "difference": difference,
        "margin": settings.max_review_rate_increase,
        "z": _finite(z),
        "p_value": p,
        "z_no_difference": _finite(z0),
        "p_no_difference": p0,
        "violated": p < settings.alpha,
    }


def _statistics(
    canary: ArmData, control: ArmData, settings: RolloutSettings, seed: int
) -> dict[str, Any]:
    stats: dict[str, Any] = {
        "canary": _arm_statistics(canary),
        "control": _arm_statistics(control),
        "f1_difference": None,
        "review_rate": _review_rate_test(canary, control, settings),
    }
    if canary.pairs and control.pairs:
        diff, low, high = bootstrap_f1_difference(
            canary.pairs,
            control.pairs,
            settings.bootstrap_resamples,
            settings.confidence,
            seed,
        )
        stats["f1_difference"] = {
            "difference": diff,
            "low": low,
            "high": high,
            "confidence": settings.confidence,
            "resamples": settings.bootstrap_resamples,
        }
    return stats


def _guardrail_violation(
    stats: dict[str, Any], canary: ArmData, control: ArmData, settings: RolloutSettings
) -> str | None:
    """The reason of the first broken guardrail, None when all hold."""
    p99 = canary.latency_p99_ms
    if p99 is not None and p99 >= settings.max_p99_ms:
        return f"guardrail p99 latency: canary p99 {p99:.1f} ms >= {settings.max_p99_ms:.1f} ms"
    weak = [
        f"{name} F1 {c['f1']:.3f} (n={c['support']})"
        for name, c in stats["canary"]["per_class"].items()
        if c["support"] >= settings.min_class_support and c["f1"] < settings.min_class_f1
    ]
    if weak:
        return f"guardrail class F1 < {settings.min_class_f1:.2f}: " + ", ".join(weak)
    rate = stats["review_rate"]
    if rate is not None and rate["violated"]:
        return (
            f"guardrail review rate: canary {canary.review_rate:.3%} vs control "
            f"{control.review_rate:.3%}, +{rate['difference'] * 100:.2f} "
            f"points > {rate['margin'] * 100:.2f} (one-sided p={rate['p_value']:.3g} "
            f"< {settings.alpha})"
        )
    return None


def _f1_summary(stats: dict[str, Any]) -> str:
    diff = stats["f1_difference"]
    if diff is None:
        return "no F1 difference yet (an arm has no reviewed samples)"
    return (
        f"macro-F1 difference {diff['difference']:+.4f} "
        f"({diff['confidence']:.0%} CI {diff['low']:+.4f} to {diff['high']:+.4f})"
    )


def decide(
    canary: ArmData,
    control: ArmData,
    settings: RolloutSettings,
    *,
    started_at: datetime,
    now: datetime,
    seed: int = 0,
) -> Decision:
    """The canary's decision now (see the module notes for the rules).

    Args:
        canary: the canary arm's figures.
        control: the control arm's (the fab's other nodes, on the baseline).
        settings: windows, sample sizes, guardrails, significance.
        started_at: when the canary started (aware datetimes, like ``now``).
        now: the time of the decision.
        seed: bootstrap seed, fixed so a re-evaluation of the same data decides the same.

    Returns:
        promote, rollback or wait, with the reason and every figure behind it.
    """
    stats = _statistics(canary, control, settings, seed)
    ends = started_at + timedelta(seconds=settings.trial_window_s)
    stats["trial_ends_at"] = ends.isoformat()
    stats["min_reviewed_per_arm"] = settings.min_reviewed_per_arm
    violation = _guardrail_violation(stats, canary, control, settings)
    if violation is not None:
        return Decision("rollback", violation, stats)
    n_canary, n_control = len(canary.pairs), len(control.pairs)
    enough = min(n_canary, n_control) >= settings.min_reviewed_per_arm
    diff = stats["f1_difference"]
    summary = _f1_summary(stats)
    if enough and diff is not None and diff["low"] > 0:
        return Decision(
            "promote",
            f"significant improvement: {summary}, n={n_canary}/{n_control}, guardrails hold",
            stats,
        )
    if now >= ends:
        return Decision(
            "rollback",
            f"trial window ended without a significant improvement: {summary}, "
            f"n={n_canary}/{n_control} reviewed (need {settings.min_reviewed_per_arm} per arm)",
            stats,
        )
    if not enough:
        reason = (
            f"waiting for reviews: n={n_canary}/{n_control}, need "
            f"{settings.min_reviewed_per_arm} per arm; {summary}"
        )
    else:
        reason = f"waiting: improvement not significant yet; {summary}"
    return Decision("wait", reason, stats)


def _accuracy_figures(name: str, counts: tuple[int, int], alpha: float) -> dict[str, Any]:
    correct, n = counts
    if n < 0 or not 0 <= correct <= max(n, 0):
        raise ValueError(f"{name}: need 0 <= correct <= n, got correct={correct}, n={n}")
    low, high = wilson(correct, n, alpha) if n else (None, None)
    accuracy = correct / n if n else None
    return {"correct": correct, "n": n, "accuracy": accuracy, "low": low, "high": high}


def watch_decision(
    new_version_acc: tuple[int, int],
    previous_baseline: tuple[int, int],
    settings: RolloutSettings,
    *,
    promoted_at: datetime,
    now: datetime,
) -> Decision:
    """The brief's automatic rollback after a promotion.

    Within ``watch_s`` of ``promoted_at``: roll back when the new model's reviewed accuracy
    (point estimate, once it has ``min_reviewed_watch`` reviews) is below the previous
    version's baseline; otherwise wait. From ``promoted_at + watch_s`` on: "promote", meaning
    the watch is over and the version stays.

    Args:
        new_version_acc: (correct, n) of the new model's reviews since the promotion.
        previous_baseline: (correct, n) of the previous version's reviews (its baseline).
        settings: ``watch_s``, ``min_reviewed_watch`` and ``alpha`` (of the Wilson intervals).
        promoted_at: when the version was promoted.
        now: the time of the decision.

    Raises:
        ValueError: a (correct, n) pair has correct outside [0, n].
    """
    figures = {
        "new": _accuracy_figures("new", new_version_acc, settings.alpha),
        "baseline": _accuracy_figures("baseline", previous_baseline, settings.alpha),
    }
    ends = promoted_at + timedelta(seconds=settings.watch_s)
    stats = {
        **figures,
        "min_reviewed": settings.min_reviewed_watch,
        "watch_ends_at": ends.isoformat(),
    }
    new, base = figures["new"], figures["baseline"]
    if now >= ends:
        return Decision("promote", "watch over: the new version stays", stats)
    judged = new["n"] >= settings.min_reviewed_watch and base["accuracy"] is not None
    if judged and new["accuracy"] < base["accuracy"]:
        return Decision(
            "rollback",
            f"reviewed accuracy {new['accuracy']:.4f} (n={new['n']}) below the previous "
            f"version's baseline {base['accuracy']:.4f} (n={base['n']}) within the watch",
            stats,
        )
    if not judged:
        reason = (
            f"watching: {new['n']}/{settings.min_reviewed_watch} reviews of the new version"
            + ("" if base["accuracy"] is not None else "; the previous version has no baseline")
        )
    else:
        reason = f"watching: accuracy {new['accuracy']:.4f} >= baseline {base['accuracy']:.4f}"
    return Decision("wait", reason, stats)
