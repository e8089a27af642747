"""When a classification goes to the engineers' review queue: the decision, made once.

The edge node flags its results with it, the fab server its own (``ClassifyBatch``), and
evaluation measures the review rate a threshold gives; all read the default from here.
"""

from __future__ import annotations

from typing import overload

import numpy as np
import numpy.typing as npt

DEFAULT_REVIEW_THRESHOLD = 0.6
"""Confidence below which a result is flagged for review (DESIGN.md §3; target rate 5-15 %)."""


@overload
def needs_review(confidence: float, threshold: float = ...) -> bool: ...
@overload
def needs_review(
    confidence: npt.NDArray[np.floating], threshold: float = ...
) -> npt.NDArray[np.bool_]: ...
def needs_review(
    confidence: float | npt.NDArray[np.floating], threshold: float = DEFAULT_REVIEW_THRESHOLD
) -> bool | npt.NDArray[np.bool_]:
    """Whether a prediction of this confidence (or each of an array's) needs a review."""
    if isinstance(confidence, np.ndarray):
        return np.asarray(confidence < threshold)
    return bool(confidence < threshold)
