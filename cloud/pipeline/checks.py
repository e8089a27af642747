"""The brief's checks of the labelled data, before any training (`cloud.settings.DataChecks`).

- **agreement**: where two or more engineers reviewed the same wafer (same fab, same
  ``wafer_key``), the share of pairs of their labels that agree must exceed
  ``min_agreement``. This is observed agreement, not chance-corrected (Cohen's kappa needs the
  same two annotators throughout, which a fab's review queue does not have). An engineer who
  reviewed a wafer twice counts once, with their latest label.
- **class_counts**: every class has at least ``min_per_class`` labelled samples in the
  collected data.
- **freshness**: every reviewed label is at most ``max_review_age_days`` old.

Each check says in words why it failed; pure functions, no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import combinations
from typing import Any

from cloud.settings import DataChecks

AGREEMENT, CLASS_COUNTS, FRESHNESS = "agreement", "class_counts", "freshness"


@dataclass(frozen=True)
class Review:
    """One engineer's label of one wafer, as the checks see it."""

    fab_id: str
    wafer_key: str
    reviewer_key: str
    label: str
    reviewed_at: datetime

    def to_dict(self) -> dict[str, str]:
        """JSON-ready."""
        return {
            "fab_id": self.fab_id,
            "wafer_key": self.wafer_key,
            "reviewer_key": self.reviewer_key,
            "label": self.label,
            "reviewed_at": self.reviewed_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Review:
        """Inverse of `to_dict`."""
        return cls(
            fab_id=str(data["fab_id"]),
            wafer_key=str(data["wafer_key"]),
            reviewer_key=str(data["reviewer_key"]),
            label=str(data["label"]),
            reviewed_at=datetime.fromisoformat(str(data["reviewed_at"])),
        )


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: its name, whether it passed, and why, in words."""

    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


def agreement_check(reviews: Iterable[Review], min_agreement: float) -> CheckResult:
    """Inter-annotator agreement over the wafers that two or more engineers reviewed."""
    latest: dict[tuple[str, str], dict[str, Review]] = defaultdict(dict)
    for review in sorted(reviews, key=lambda r: r.reviewed_at):
        latest[(review.fab_id, review.wafer_key)][review.reviewer_key] = review
    pairs = agreeing = wafers = 0
    for by_reviewer in latest.values():
        if len(by_reviewer) < 2:
            continue
        wafers += 1
        for a, b in combinations(by_reviewer.values(), 2):
            pairs += 1
            agreeing += a.label == b.label
    if pairs == 0:
        return CheckResult(AGREEMENT, True, "no wafer was reviewed by two engineers")
    agreement = agreeing / pairs
    passed = agreement > min_agreement
    detail = (
        f"agreement {agreement:.3f} over {pairs} pairs of reviews of {wafers} wafers "
        f"reviewed twice ({'above' if passed else 'not above'} {min_agreement})"
    )
    return CheckResult(AGREEMENT, passed, detail)


def class_count_check(counts: Mapping[str, int], min_per_class: int) -> CheckResult:
    """Every class has at least ``min_per_class`` samples (``counts`` names every class)."""
    short = {name: n for name, n in counts.items() if n < min_per_class}
    if short:
        listed = ", ".join(f"{name} has {n}" for name, n in short.items())
        return CheckResult(
            CLASS_COUNTS, False, f"{listed} (at least {min_per_class} samples per class needed)"
        )
    fewest = min(counts.items(), key=lambda item: item[1]) if counts else ("none", 0)
    return CheckResult(
        CLASS_COUNTS,
        True,
        f"every class has at least {min_per_class} samples (fewest: {fewest[0]}, {fewest[1]})",
    )


def freshness_check(reviews: Sequence[Review], *, now: datetime, max_age_days: int) -> CheckResult:
    """Every reviewed label is at most ``max_age_days`` old at ``now``."""
    if not reviews:
        return CheckResult(FRESHNESS, True, "no reviewed labels")
    limit = now - timedelta(days=max_age_days)
    stale = [r for r in reviews if r.reviewed_at < limit]
    oldest = min(reviews, key=lambda r: r.reviewed_at)
    age = (now - oldest.reviewed_at).days
    if stale:
        return CheckResult(
            FRESHNESS,
            False,
            f"{len(stale)} of {len(reviews)} reviewed labels are older than {max_age_days} days "
            f"(oldest reviewed {oldest.reviewed_at:%Y-%m-%d}, {age} days ago)",
        )
    return CheckResult(
        FRESHNESS,
        True,
        f"all {len(reviews)} reviewed labels are within {max_age_days} days (oldest {age} days)",
    )


def run_checks(
    reviews: Sequence[Review], counts: Mapping[str, int], checks: DataChecks, *, now: datetime
) -> list[CheckResult]:
    """Every check of the brief, in order: agreement, class counts, freshness."""
    return [
        agreement_check(reviews, checks.min_agreement),
        class_count_check(counts, checks.min_per_class),
        freshness_check(reviews, now=now, max_age_days=checks.max_review_age_days),
    ]


def failure_reason(results: Sequence[CheckResult]) -> str | None:
    """What failed and why, one clause per failed check; None when every check passed."""
    failed = [r for r in results if not r.passed]
    if not failed:
        return None
    return "data check failed: " + "; ".join(f"{r.name}: {r.detail}" for r in failed)
