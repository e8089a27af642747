"""Die encodings: the platform's canonical one and WM-811K's, converted in one place."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

PASS = 0
"""Canonical value of a passing die."""
FAIL = 1
"""Canonical value of a failing die."""
OUT = 2
"""Canonical value of a cell outside the wafer."""

GRID = 26
"""Side of the canonical grid every map is resized to."""
TOKENS = GRID * GRID
"""Length of the flattened canonical grid (676)."""

# WM-811K stores 0 = no die, 1 = pass, 2 = fail.
_WM811K_TO_CANONICAL = np.array([OUT, PASS, FAIL], dtype=np.uint8)


def from_wm811k(values: npt.NDArray[np.integer]) -> npt.NDArray[np.uint8]:
    """Convert WM-811K encoded die values (0 no die, 1 pass, 2 fail) to the canonical encoding.

    Works on one map or on any flat or stacked array of them.

    Raises:
        ValueError: a value is outside {0, 1, 2}.
    """
    arr = np.asarray(values)
    if arr.size and (arr.min() < 0 or arr.max() > 2):
        raise ValueError("WM-811K die values must be 0 (no die), 1 (pass) or 2 (fail)")
    return _WM811K_TO_CANONICAL[arr]


def to_wm811k(values: npt.NDArray[np.integer]) -> npt.NDArray[np.uint8]:
    """Convert canonical die values back to WM-811K's encoding (the inverse of `from_wm811k`)."""
    arr = np.asarray(values)
    if arr.size and (arr.min() < 0 or arr.max() > 2):
        raise ValueError("canonical die values must be 0 (pass), 1 (fail) or 2 (out of wafer)")
    inverse = np.empty(3, dtype=np.uint8)
    inverse[_WM811K_TO_CANONICAL] = np.arange(3, dtype=np.uint8)
    return inverse[arr]
