"""Spatial statistics of wafer maps (brief §3.2), vectorised over batches of grids.

The statistics describe where the failing die lie relative to the wafer, which is what tells the
defect classes apart: how many fail, at which distance from the centre, in which direction, how
far their centroid is from the centre and how spread out they are. They feed the rule-based
baseline and drift monitoring, so they are computed for whole datasets (150k maps) at once.

Conventions, per map:
    * The wafer centre is the centroid of the in-wafer die (value != OUT), and the wafer radius
      is the largest distance of an in-wafer die from it.
    * Radial bins split [0, radius] into 13 equal widths (the die at the radius itself falls in
      the last bin); angular sectors are 45 degrees wide, sector 0 starting at "east" (towards
      increasing columns) and turning counter-clockwise as the map is drawn (row 0 on top), so
      ``np.rot90`` of a square grid shifts the sectors by two.
    * Rates over no die (an empty bin, a map with no in-wafer die) are 0, never NaN.
    * Spatial entropy is taken over blocks of 4x4 cells (the last row and column of blocks may be
      partial): the block fail rates, normalised to sum to 1, give a distribution whose Shannon
      entropy is divided by ln(number of blocks holding in-wafer die), so it lies in [0, 1]:
      1 for fails spread evenly over the wafer, near 0 for fails in one block, 0 with no fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from wafercore.encoding import FAIL, OUT

RADIAL_BINS = 13
"""Radial bins of `SpatialFeatures.radial_profile` (half the 26-cell grid side)."""
ANGULAR_SECTORS = 8
"""45-degree sectors of `SpatialFeatures.angular_profile`."""
ENTROPY_BLOCK = 4
"""Side, in cells, of the blocks `SpatialFeatures.spatial_entropy` is computed over."""

FEATURE_NAMES: tuple[str, ...] = (
    "defect_ratio",
    *(f"radial_{i:02d}" for i in range(RADIAL_BINS)),
    *(f"angular_{i}" for i in range(ANGULAR_SECTORS)),
    "centroid_distance",
    "spatial_entropy",
)
"""Names of the 24 columns of `SpatialFeatures.matrix`, in order."""

# Maps per chunk: the (chunk, H, W) float64/intp temporaries stay near 3 MB for 26x26 grids, so
# they and the bincount's (chunk * 280) slots live in cache; 4096 was measured ~1.7x slower.
_CHUNK = 512

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.signedinteger[Any]]


@dataclass(frozen=True)
class SpatialFeatures:
    """Spatial statistics of N wafer maps; every array is finite, rates lie in [0, 1].

    Attributes:
        defect_ratio: (N,) share of in-wafer die that fail.
        radial_profile: (N, 13) fail rate per radial bin, centre outwards.
        angular_profile: (N, 8) fail rate per 45-degree sector, counter-clockwise from east.
        centroid_distance: (N,) distance of the fails' centroid from the wafer centre, divided by
            the wafer radius; 0 with no fails.
        spatial_entropy: (N,) normalised Shannon entropy of the block fail rates, in [0, 1].
    """

    defect_ratio: Floats
    radial_profile: Floats
    angular_profile: Floats
    centroid_distance: Floats
    spatial_entropy: Floats

    def __len__(self) -> int:
        return len(self.defect_ratio)

    def matrix(self) -> Floats:
        """All features as one (N, 24) float64 matrix, columns named by `FEATURE_NAMES`."""
        return np.concatenate(
            [
                self.defect_ratio[:, None],
                self.radial_profile,
                self.angular_profile,
                self.centroid_distance[:, None],
                self.spatial_entropy[:, None],
            ],
            axis=1,
        )

    def for_map(self, i: int) -> dict[str, Any]:
        """Features of map ``i`` as the brief's dict (floats and (13,), (8,) arrays)."""
        return {
            "defect_ratio": float(self.defect_ratio[i]),
            "radial_profile": self.radial_profile[i].copy(),
            "angular_profile": self.angular_profile[i].copy(),
            "centroid_distance": float(self.centroid_distance[i]),
            "spatial_entropy": float(self.spatial_entropy[i]),
        }


def spatial_features(grids: npt.NDArray[np.integer[Any]]) -> SpatialFeatures:
    """Compute the spatial features of a batch of canonical grids.

    Args:
        grids: (N, H, W) integer maps in the canonical encoding (0 pass, 1 fail, 2 out of
            wafer), normally 26x26; a single (H, W) map is treated as a batch of one.

    Returns:
        `SpatialFeatures` with N rows.

    Raises:
        ValueError: not 2-D or 3-D, or a value outside {0, 1, 2}.
    """
    arr = np.asarray(grids)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"grids must be (N, H, W) or (H, W), got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"grids must hold integers, got {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > OUT):
        raise ValueError("grid values must be 0 (pass), 1 (fail) or 2 (out of wafer)")
    n = arr.shape[0]
    ratio = np.zeros(n)
    radial = np.zeros((n, RADIAL_BINS))
    angular = np.zeros((n, ANGULAR_SECTORS))
    centroid = np.zeros(n)
    entropy = np.zeros(n)
    if arr.shape[1] and arr.shape[2]:
        for start in range(0, n, _CHUNK):
            part = slice(start, min(start + _CHUNK, n))
            ratio[part], radial[part], angular[part], centroid[part], entropy[part] = _chunk(
                arr[part]
            )
    return SpatialFeatures(ratio, radial, angular, centroid, entropy)


def _chunk(
    grids: npt.NDArray[np.integer[Any]],
) -> tuple[Floats, Floats, Floats, Floats, Floats]:
    m, h, w = grids.shape
    inside = (grids != OUT).view(np.uint8)  # (m, h, w) 0/1
    fail = (grids == FAIL).view(np.uint8)  # (m, h, w) 0/1, implies inside
    in_blocks, in_rows, in_cols = _sums(inside)
    fail_blocks, fail_rows, fail_cols = _sums(fail)
    n_in, n_fail = in_rows.sum(axis=1), fail_rows.sum(axis=1)  # (m,) int64

    # Coordinates relative to the centroid, scaled by n_in so that they are exact integers:
    # every comparison below is exact, so a rotated map gets exactly the rotated bins.
    # Up is positive, as the map is drawn.
    idx_h, idx_w = np.arange(h, dtype=np.int64), np.arange(w, dtype=np.int64)
    sum_y, sum_x = in_rows @ idx_h, in_cols @ idx_w  # (m,)
    y = sum_y[:, None] - idx_h[None, :] * n_in[:, None]  # (m, h)
    x = idx_w[None, :] * n_in[:, None] - sum_x[:, None]  # (m, w)

    # Radial bin = floor(13 * sqrt(d2 / radius2)), in float64 from exact integer squares: a
    # die exactly on a bin border (13^2 * d2 / radius2 a perfect square) lands in the outer bin
    # whatever the rounding, as true division and sqrt are correctly rounded.
    y2, x2 = y.astype(np.float64) ** 2, x.astype(np.float64) ** 2
    d2 = y2[:, :, None] + x2[:, None, :]  # (m, h, w)
    radius2 = (d2 * inside).max(axis=(1, 2))  # (m,)
    d2 *= RADIAL_BINS**2
    d2 /= np.where(radius2 > 0, radius2, 1.0)[:, None, None]
    rbin = np.sqrt(d2, out=d2).astype(np.intp)  # (m, h, w)
    np.minimum(rbin, RADIAL_BINS - 1, out=rbin)  # the die at the radius itself
    rbin[inside == 0] = RADIAL_BINS  # out of wafer: a bin dropped below

    # One bincount over every map and (radial bin, direction code, fail) combination.
    rbin *= _CODES * 2
    rbin += (np.arange(m, dtype=np.intp) * _JOINT)[:, None, None]
    rbin += _direction_code(y, x, fail)
    counts = np.bincount(rbin.ravel(), minlength=m * _JOINT).reshape(m, -1, _CODES, 2)
    counts = counts[:, :RADIAL_BINS]  # (m, 13, 10 direction codes, pass/fail)
    # einsum: numpy's sum over a short middle axis is several times slower.
    by_bin = np.einsum("mbcf->mbf", counts)  # (m, 13, 2)
    by_sector = np.einsum("mbcf->mcf", counts)[:, _SECTOR_CODE]  # (m, 8, 2)
    _drop_centre_die(by_sector, y, x, fail, inside)

    # Fail centroid minus wafer centroid, in the same n_in-scaled units as y and x.
    safe_fail = np.maximum(n_fail, 1)
    off_y = sum_y - (fail_rows @ idx_h) * n_in / safe_fail
    off_x = (fail_cols @ idx_w) * n_in / safe_fail - sum_x
    centroid = _rate(np.hypot(off_y, off_x) * (n_fail > 0), np.sqrt(radius2.astype(np.float64)))

    return (
        _rate(n_fail, n_in),
        _rate(by_bin[..., 1], by_bin.sum(axis=2)),
        _rate(by_sector[..., 1], by_sector.sum(axis=2)),
        np.clip(centroid, 0.0, 1.0),
        _entropy(in_blocks, fail_blocks),
    )


# Direction of a cell from the centre, from four exact half-plane tests t_k: "the angle lies in
# [45k, 45k + 180) degrees". Their sum walks 1, 2, 3, 4, 3, 2, 1, 0 around the circle, so
# 6 * t_0 + t_1 + t_2 + t_3 tells the eight 45-degree sectors apart: sector k has code
# _SECTOR_CODE[k]. Ties (a die on a border) go to the sector that starts at that border.
_CODES = 10
_SECTOR_CODE = np.array([6, 7, 8, 9, 3, 2, 1, 0])
_JOINT = (RADIAL_BINS + 1) * _CODES * 2
"""Joint (radial bin incl. out of wafer, direction code, fail) values per map."""


def _direction_code(
    y: npt.NDArray[np.int64], x: npt.NDArray[np.int64], fail: npt.NDArray[np.uint8]
) -> npt.NDArray[np.uint8]:
    """(m, h, w) ``2 * direction code + fail`` from (m, h) row and (m, w) column offsets."""
    # |y|, |x| <= side * n_in <= side**3, and twice that must fit: int32 up to 512x512 maps.
    dtype = np.dtype(np.int32 if max(fail.shape[1:]) ** 3 < 2**29 else np.int64)
    yy: Ints = 2 * y.astype(dtype)[:, :, None]  # (m, h, 1)
    xx: Ints = 2 * x.astype(dtype)[:, None, :]  # (m, 1, w)
    # Integers: "a > b, or a == b and tie" is exactly 2a > 2b - tie with tie in {0, 1}.
    right: Ints = (x > 0).astype(dtype)[:, None, :]
    up: Ints = (y > 0).astype(dtype)[:, :, None]
    code = np.greater(yy, -right).view(np.uint8) * np.uint8(6)  # t0: y > 0, or y == 0 < x
    code += np.greater(yy, xx - right).view(np.uint8)  # t1: y > x, or y == x > 0
    code += np.less(xx, up).view(np.uint8)  # t2: x < 0, or x == 0 < y
    code += np.less_equal(yy, -xx - right).view(np.uint8)  # t3: y < -x, or y == -x < 0
    code <<= 1
    code += fail
    return code


def _sums(
    cells: npt.NDArray[np.uint8],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per map: (m, B) block sums, (m, h) row sums and (m, w) column sums of 0/1 cells."""
    bands = _group_sum(cells, axis=1, size=ENTROPY_BLOCK)  # (m, h / 4, w)
    rows = _group_sum(cells, axis=2, size=cells.shape[2])[:, :, 0]  # (m, h)
    cols = _group_sum(bands, axis=1, size=bands.shape[1])[:, 0, :]  # (m, w)
    blocks = _group_sum(bands, axis=2, size=ENTROPY_BLOCK)  # (m, h / 4, w / 4)
    return blocks.reshape(len(cells), -1), rows, cols


def _group_sum(a: npt.NDArray[Any], axis: int, size: int) -> npt.NDArray[np.int64]:
    """Sums of consecutive groups of ``size`` along ``axis`` (the last group may be shorter).

    Adds ``size`` strided slices instead of reducing a short axis, which numpy does several
    times more slowly.
    """
    n = a.shape[axis]
    view = np.moveaxis(a, axis, -1)
    out = view[..., 0::size].astype(np.int64)
    for k in range(1, min(size, n)):
        part = view[..., k::size]
        out[..., : part.shape[-1]] += part
    return np.moveaxis(out, -1, axis)


def _drop_centre_die(
    by_sector: npt.NDArray[np.int64],
    y: npt.NDArray[np.int64],
    x: npt.NDArray[np.int64],
    fail: npt.NDArray[np.uint8],
    inside: npt.NDArray[Any],
) -> None:
    """Remove a die sitting exactly on the centre (it has no direction) from the sector counts."""
    on_row, on_col = y == 0, x == 0  # (m, h), (m, w)
    maps = np.flatnonzero(on_row.any(axis=1) & on_col.any(axis=1))
    if maps.size == 0:
        return
    row, col = on_row[maps].argmax(axis=1), on_col[maps].argmax(axis=1)
    # The centroid of the in-wafer cells can fall on a cell outside the wafer (a ragged or
    # sparse map): that cell was never counted, so there is nothing to remove.
    counted = inside[maps, row, col].astype(bool)
    maps, row, col = maps[counted], row[counted], col[counted]
    # All four tests give the centre code 1.
    centre_sector = int(np.flatnonzero(_SECTOR_CODE == 1)[0])
    by_sector[maps, centre_sector, fail[maps, row, col].astype(np.intp)] -= 1


def _rate(numerator: npt.ArrayLike, denominator: npt.ArrayLike) -> Floats:
    num, den = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    shape = np.broadcast_shapes(num.shape, den.shape)
    return np.divide(num, den, out=np.zeros(shape), where=den > 0)


def _entropy(in_blocks: npt.NDArray[np.int64], fail_blocks: npt.NDArray[np.int64]) -> Floats:
    rates = _rate(fail_blocks, in_blocks)  # (m, B)
    p = _rate(rates, rates.sum(axis=1, keepdims=True))
    plogp = p * np.log(np.where(p > 0, p, 1.0))
    occupied = (in_blocks > 0).sum(axis=1)  # (m,)
    entropy = _rate(-plogp.sum(axis=1), np.log(np.maximum(occupied, 1)))
    return np.clip(entropy, 0.0, 1.0)
