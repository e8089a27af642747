"""Reviewed labels as the (true, predicted) class-id pairs the statistics take."""

from __future__ import annotations

from collections.abc import Iterable

from cloud.storage.labels import ReviewedLabel
from wafercore.classes import DefectClass

CANARY_SAMPLE = 4
"""``review_reason`` of an unbiased canary sample (the contract's ReviewReason number)."""


def reviewed_pairs(
    labels: Iterable[ReviewedLabel],
    *,
    model_version: str | None = None,
    canary_only: bool = False,
) -> list[tuple[int, int]]:
    """(true class id, predicted class id) of each label whose prediction is known.

    Labels without a ``predicted_label``, or whose label or prediction is not a class display
    name, are skipped (they cannot score a model).

    Args:
        labels: reviewed labels as uploaded by the fabs.
        model_version: keep only labels of this model version (None: every version).
        canary_only: keep only unbiased canary samples (``review_reason`` 4), the only ones
            the A/B statistics may count.
    """
    out: list[tuple[int, int]] = []
    for label in labels:
        if label.predicted_label is None:
            continue
        if model_version is not None and label.model_version != model_version:
            continue
        if canary_only and label.review_reason != CANARY_SAMPLE:
            continue
        try:
            true = DefectClass.from_display_name(label.label)
            pred = DefectClass.from_display_name(label.predicted_label)
        except KeyError:
            continue
        out.append((int(true), int(pred)))
    return out
