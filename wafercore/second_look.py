"""A second look at doubtful wafers: the eight rotations and flips, averaged (test-time
augmentation as a second kind of halting).

Defect patterns have no orientation, so a model's answers for the eight dihedral views of a
wafer should agree; where the first pass is unsure (confidence below the manifest's
``tta_threshold``), averaging the eight views' probabilities is a cheap ensemble. Easy wafers,
most of the stream, pay nothing: the cost is 7 more passes for the doubtful ones only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from wafercore.model_input import InputSpec
from wafercore.runtime import ModelRuntime, RuntimeResult

VIEWS = 8
"""The dihedral group of the square: 4 rotations, each with and without a flip."""


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
) -> SecondLook:
    """Average the eight views of the wafers whose first-pass confidence is below ``threshold``.

    Args:
        runtime: the model that gave ``first``.
        inputs: the model inputs ``first`` was computed from (what `ModelRuntime.prepare`
            built).
        first: the first pass's result.
        threshold: confidence below which a wafer is looked at again; the manifest's
            ``tta_threshold`` by default (0 never looks again).
    """
    limit = runtime.manifest.tta_threshold if threshold is None else threshold
    looked = np.asarray(first.confidence < limit)
    extra = np.zeros(len(looked), dtype=np.int64)
    if not looked.any():
        return SecondLook(first, looked, extra)
    rows = np.flatnonzero(looked)
    spec = runtime.manifest.input
    doubtful = np.asarray(inputs)[rows]
    total = first.probabilities[rows].astype(np.float64)
    for k in range(1, VIEWS):
        view = runtime.predict(dihedral(doubtful, spec, k))
        total += view.probabilities
        extra[rows] += view.steps
    probabilities = first.probabilities.copy()
    probabilities[rows] = (total / VIEWS).astype(np.float32)
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
