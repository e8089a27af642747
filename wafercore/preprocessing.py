"""Validation and preprocessing: any wafer map to the canonical 26x26 grid and 676 tokens.

Nearest-neighbour resampling keeps die values discrete. Source cell ``floor((i + 0.5) * H / 26)``
feeds target row ``i`` (pixel-centre alignment, as ``skimage.transform.resize(order=0)``), so a
map already 26x26 is unchanged and shrinking never shifts the pattern towards one side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from wafercore.dataset import WaferDataset
from wafercore.encoding import GRID, from_wm811k
from wafercore.errors import InvalidInput
from wafercore.validation import MAX_SIDE


def validate_map(
    wafer_map: Any, *, field: str = "wafer_map", wm811k: bool = False
) -> npt.NDArray[np.uint8]:
    """Check a wafer map from outside and return it as a canonical uint8 array.

    Args:
        wafer_map: a 2-D array or a list of equally long rows of integers.
        field: name of the input, used in the error.
        wm811k: the values use WM-811K's encoding (0 no die, 1 pass, 2 fail), not the canonical
            one (0 pass, 1 fail, 2 out of wafer).

    Returns:
        The map as a (rows, cols) uint8 array in the canonical encoding.

    Raises:
        InvalidInput: empty, ragged, not 2-D, larger than 512 per side, non-integral or NaN
            values, or values outside {0, 1, 2}.
    """
    arr = wafer_map if isinstance(wafer_map, np.ndarray) else _from_rows(wafer_map, field)
    if arr.ndim != 2:
        raise InvalidInput(field, f"must be a 2-D grid of rows, got {arr.ndim} dimension(s)")
    rows, cols = arr.shape
    if rows == 0 or cols == 0:
        raise InvalidInput(field, "is empty: it needs at least one row and one column")
    if rows > MAX_SIDE or cols > MAX_SIDE:
        raise InvalidInput(
            field, f"is {rows}x{cols}; at most {MAX_SIDE} rows and {MAX_SIDE} columns are accepted"
        )
    if arr.dtype.kind == "f":
        nan = np.isnan(arr)
        if nan.any():
            raise InvalidInput(_cell(field, nan), "is NaN; every die needs a value 0, 1 or 2")
        fractional = arr != np.round(arr)
        if fractional.any():
            raise InvalidInput(
                _cell(field, fractional), "is not an integer; allowed values are 0, 1, 2"
            )
    elif arr.dtype.kind not in "iub":
        raise InvalidInput(field, f"values must be integers 0, 1 or 2, got {arr.dtype}")
    outside = (arr < 0) | (arr > 2)
    if outside.any():
        bad = arr[outside].flat[0].item()
        encoding = "0 no die, 1 pass, 2 fail" if wm811k else "0 pass, 1 fail, 2 out of wafer"
        raise InvalidInput(_cell(field, outside), f"is {bad:g}; allowed values are {encoding}")
    out = arr.astype(np.uint8)
    return from_wm811k(out) if wm811k else out


def _cell(field: str, mask: npt.NDArray[np.bool_]) -> str:
    """Field name of the first cell where ``mask`` is set (``wafer_map[3][7]``)."""
    i, j = np.argwhere(mask)[0]
    return f"{field}[{i}][{j}]"


def _from_rows(rows: Any, field: str) -> npt.NDArray[Any]:
    if not isinstance(rows, Sequence) or isinstance(rows, str | bytes):
        raise InvalidInput(field, "must be a list of rows")
    if len(rows) == 0:
        raise InvalidInput(field, "is empty: it needs at least one row and one column")
    if len(rows) > MAX_SIDE:
        raise InvalidInput(field, f"has {len(rows)} rows; at most {MAX_SIDE} are accepted")
    width = None
    for i, row in enumerate(rows):
        if not isinstance(row, Sequence) or isinstance(row, str | bytes):
            raise InvalidInput(f"{field}[{i}]", "must be a list of die values")
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise InvalidInput(
                f"{field}[{i}]", f"has {len(row)} values but row 0 has {width}: rows are ragged"
            )
        for j, v in enumerate(row):
            # bool is an int subclass; a JSON true/false is not a die value.
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise InvalidInput(f"{field}[{i}][{j}]", f"{v!r} is not a die value 0, 1 or 2")
            if isinstance(v, float) and math.isnan(v):
                raise InvalidInput(f"{field}[{i}][{j}]", "is NaN; allowed values are 0, 1, 2")
    try:
        return np.asarray(rows, dtype=np.float64 if _has_float(rows) else np.int64)
    except OverflowError:
        raise InvalidInput(
            field, "contains an integer too large; allowed values are 0, 1, 2"
        ) from None


def _has_float(rows: Sequence[Sequence[Any]]) -> bool:
    return any(isinstance(v, float) for row in rows for v in row)


def _source_index(size: int, target: int = GRID) -> npt.NDArray[np.intp]:
    """Source index feeding each of ``target`` cells (nearest neighbour, centre aligned)."""
    return np.minimum(((np.arange(target) + 0.5) * size / target).astype(np.intp), size - 1)


def resize_nearest(wafer_map: npt.NDArray[np.uint8], rows: int, cols: int) -> npt.NDArray[np.uint8]:
    """Resize a (H, W) map to (rows, cols) by nearest neighbour, centre aligned."""
    h, w = wafer_map.shape
    return np.ascontiguousarray(wafer_map[np.ix_(_source_index(h, rows), _source_index(w, cols))])


def to_grid(wafer_map: npt.NDArray[np.uint8], size: int = GRID) -> npt.NDArray[np.uint8]:
    """Resize a canonical (rows, cols) map to the (size, size) grid by nearest neighbour.

    The input is assumed valid (see `validate_map`).
    """
    return resize_nearest(wafer_map, size, size)


def to_tokens(grid: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Flatten a (26, 26) grid, or a batch (N, 26, 26), to 676 tokens per map (row-major)."""
    return grid.reshape(*grid.shape[:-2], grid.shape[-2] * grid.shape[-1])


def preprocess(wafer_map: Any, *, wm811k: bool = False) -> npt.NDArray[np.uint8]:
    """Validate any HxW map and return its 676 canonical tokens. See `validate_map`."""
    return to_tokens(to_grid(validate_map(wafer_map, wm811k=wm811k)))


def dataset_to_grids(dataset: WaferDataset, size: int = GRID) -> npt.NDArray[np.uint8]:
    """Resize every map of a dataset to (size, size): an (N, size, size) uint8 array.

    Maps are grouped by shape (WM-811K has a few hundred distinct shapes for 150k maps) and each
    group is resized with one gather, so this is dominated by memory traffic, not Python.
    """
    n = len(dataset)
    out = np.empty((n, size, size), dtype=np.uint8)
    if n == 0:
        return out
    shape_keys = dataset.shapes[:, 0].astype(np.int64) * (1 << 31) + dataset.shapes[:, 1]
    order = np.argsort(shape_keys, kind="stable")
    bounds = np.flatnonzero(np.diff(shape_keys[order])) + 1
    for group in np.split(order, bounds):
        rows, cols = (int(v) for v in dataset.shapes[group[0]])
        # Flat position of every target cell inside one map of this shape.
        cell = (
            _source_index(rows, size)[:, None] * cols + _source_index(cols, size)[None, :]
        ).ravel()
        out[group] = dataset.values[dataset.offsets[group][:, None] + cell].reshape(-1, size, size)
    return out
