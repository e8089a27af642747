"""A second look at doubtful wafers: its rotations (and mirror images), averaged (test-time
augmentation as a second kind of halting).

Defect patterns have no orientation, so a model's answers for the dihedral views of a wafer
should agree; where the first pass is unsure (confidence below the manifest's
``tta_threshold``), averaging the views' probabilities is a cheap ensemble. The manifest's
``tta_views`` says which: the four rotations, or those and their four mirror images. Easy
wafers, most of the stream, pay nothing: the cost is the other views of the doubtful ones only,
run through the model as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from wafercore.model_input import InputSpec
from wafercore.runtime import TTA_VIEWS, ModelRuntime, RuntimeResult

VIEWS = 8
"""The dihedral group of the square: 4 rotations (views 0-3), then each mirrored (4-7)."""

ROWS_PER_PASS = 64
"""Doubtful wafers whose other seven views go through the model together (7 x 64 inputs), so
a large batch's second look stays a bounded allocation."""


def dihedral(inputs: npt.NDArray[Any], spec: InputSpec, k: int) -> npt.NDArray[Any]:
    """View ``k`` (0..7) of a batch of model inputs: rotated by k % 4 quarter turns, then
    mirrored when k >= 4. View 0 is the input itself."""
    if not 0 <= k < VIEWS:
        raise ValueError(f"view {k} is not in 0..{VIEWS - 1}")
    grids = inputs.reshape(-1, spec.size, spec.size) if spec.is_tokens else inputs
    turned = np.rot90(grids, k % 4, axes=(-2, -1))
    if k >= 4:
        turned = turned[..., ::-1]
    return np.ascontiguousarray(turned).reshape(inputs.shape)


@dataclass(frozen=True)
class SecondLook:
    """A batch's answer after the second look.

    Attributes:
        result: the first pass's result, with averaged probabilities (and their prediction,
            confidence and review flag) where the second look ran; ``steps`` stay the first
            pass's (the difficulty proxy the contract reports).
        looked: (B,) bool, the wafers that got the second look.
        extra_steps: (B,) int64, supervision steps the other seven views cost (0 where none).
    """

    result: RuntimeResult
    looked: npt.NDArray[np.bool_]
    extra_steps: npt.NDArray[np.int64]


def second_look(
    runtime: ModelRuntime,
    inputs: npt.NDArray[Any],
    first: RuntimeResult,
    threshold: float | None = None,
    views: int | None = None,
) -> SecondLook:
    """Average the views of the wafers whose first-pass confidence is below ``threshold``.

    Args:
        runtime: the model that gave ``first``.
        inputs: the model inputs ``first`` was computed from (what `ModelRuntime.prepare`
            built).
        first: the first pass's result.
        threshold: confidence below which a wafer is looked at again; the manifest's
            ``tta_threshold`` by default (0 never looks again).
        views: how many views to average (`wafercore.runtime.TTA_VIEWS`); the manifest's
            ``tta_views`` by default.
    """
    count = runtime.manifest.tta_views if views is None else views
    if count not in TTA_VIEWS:
        raise ValueError(f"a second look averages one of {TTA_VIEWS} views, not {count}")
    limit = runtime.manifest.tta_threshold if threshold is None else threshold
    looked = np.asarray(first.confidence < limit)
    extra = np.zeros(len(looked), dtype=np.int64)
    if not looked.any():
        return SecondLook(first, looked, extra)
    rows = np.flatnonzero(looked)
    inputs = np.asarray(inputs)
    probabilities = first.probabilities.copy()
    for start in range(0, len(rows), ROWS_PER_PASS):
        chunk = rows[start : start + ROWS_PER_PASS]
        total, steps = _other_views(runtime, inputs[chunk], count)
        probabilities[chunk] = ((first.probabilities[chunk] + total) / count).astype(np.float32)
        extra[chunk] = steps
    prediction = probabilities.argmax(axis=1).astype(np.int64)
    confidence = probabilities[np.arange(len(prediction)), prediction]
    result = replace(
        first,
        probabilities=probabilities,
        prediction=prediction,
        confidence=confidence,
        flagged=confidence < runtime.manifest.review_threshold,
    )
    return SecondLook(result, looked, extra)


def _other_views(
    runtime: ModelRuntime, doubtful: npt.NDArray[Any], count: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Views 1..count-1 of ``doubtful`` in one batch through the model: their summed
    probabilities (R, C) and summed steps (R,). One pass of 7R inputs instead of seven passes
    of R: at batch 1 on the 2-core CPU, cnn-v2.6.0's seven views take 4.1 ms batched against
    6.1 ms one by one (p50, two threads)."""
    spec = runtime.manifest.input
    views = np.concatenate([dihedral(doubtful, spec, k) for k in range(1, count)])
    out = runtime.predict(views)
    n = len(doubtful)
    total = out.probabilities.astype(np.float64).reshape(count - 1, n, -1).sum(axis=0)
    return total, out.steps.astype(np.int64).reshape(count - 1, n).sum(axis=0)
