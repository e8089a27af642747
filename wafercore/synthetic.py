"""Synthetic wafer bin maps of all nine defect classes, on round wafers of any size.

Every map is drawn as a per-die failure probability: a background rate that varies from wafer to
wafer (yield variation, slightly higher at the edge) combined with the class's pattern, whose
borders are soft (sigmoids) so that patterns fade into the background as on real wafers. Geometry
is expressed in wafer-normalised coordinates (the wafer is the unit disc), so a map with
non-square die pitches (rows != cols) shows the same physical pattern stretched into an ellipse
of grid cells, as a real product with rectangular die would.

The generator exists for tests, benchmarks and size-invariance augmentation, not as a model of
any fab: it aims at patterns that look like WM-811K's and are not separable by one statistic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from wafercore.classes import DefectClass
from wafercore.dataset import WaferDataset
from wafercore.encoding import FAIL, OUT, PASS

MIN_SIDE = 4
"""Smallest number of rows or columns `generate_map` accepts: from 4 on, corners are off-wafer."""
LOT_SIZE = 25
"""Wafers per synthetic lot, as in a FOUP."""

SizeSpec = (
    tuple[int, int] | Sequence[tuple[int, int]] | Callable[[np.random.Generator], tuple[int, int]]
)
"""How `generate_dataset` picks each map's (rows, cols): a ``(low, high)`` range for rows and
columns drawn independently, a sequence of shapes to choose from, or a callable."""

FloatGrid = npt.NDArray[np.float64]


class _Wafer:
    """Wafer-normalised coordinates of every cell centre of one (rows, cols) map."""

    def __init__(self, rows: int, cols: int, rng: np.random.Generator) -> None:
        self.y, self.x = _coordinates(rows, cols)  # (rows, 1), (1, cols): up, right positive
        self.rho = np.sqrt(self.y * self.y + self.x * self.x)  # (rows, cols), 1 on the edge
        # Half the wafers carry a flat (or a notch wide enough to cost a row of die) on a
        # random side: readers do not agree on orientation, so the model must not rely on it.
        flat_side = int(rng.integers(4)) if rng.random() < 0.5 else None
        self.inside = _inside(self.y, self.x, self.rho, flat_side, rng.uniform(0.02, 0.08))
        self.cell = 2.0 / min(rows, cols)  # size of the largest cell in normalised units

    @cached_property
    def theta(self) -> FloatGrid:
        """(rows, cols) angle of each cell centre in [-pi, pi], counter-clockwise from right."""
        return np.arctan2(self.y, self.x)


def round_wafer_mask(
    rows: int, cols: int, *, flat_side: int | None = None, flat_depth: float = 0.0
) -> npt.NDArray[np.bool_]:
    """Cells of a (rows, cols) map whose centre lies on the round wafer inscribed in the grid.

    Args:
        rows: number of rows.
        cols: number of columns (differs from ``rows`` for non-square die pitches: the wafer is
            then an ellipse of cells).
        flat_side: side of an optional flat (0 right, 1 top, 2 left, 3 bottom); None for none.
        flat_depth: how deep the flat cuts into the wafer, as a fraction of the radius.

    Returns:
        (rows, cols) bool array, True on the wafer.
    """
    y, x = _coordinates(rows, cols)
    return _inside(y, x, np.sqrt(y * y + x * x), flat_side, flat_depth)


def generate_map(
    defect: DefectClass, rng: np.random.Generator, rows: int, cols: int
) -> npt.NDArray[np.uint8]:
    """Draw one wafer map of a defect class.

    Args:
        defect: the pattern to draw.
        rng: source of randomness; the map is a function of its state.
        rows: number of rows of the map (at least 4).
        cols: number of columns of the map (at least 4).

    Returns:
        (rows, cols) uint8 map in the canonical encoding (0 pass, 1 fail, 2 out of wafer).

    Raises:
        ValueError: ``rows`` or ``cols`` below 4.
    """
    if rows < MIN_SIDE or cols < MIN_SIDE:
        raise ValueError(
            f"a wafer map needs at least {MIN_SIDE}x{MIN_SIDE} cells, got {rows}x{cols}"
        )
    wafer = _Wafer(rows, cols, rng)
    pattern = _PATTERNS[DefectClass(defect)](wafer, rng)
    # Yield varies across wafers over more than an order of magnitude, and edge die fail more
    # often (handling, edge bead): both are present whatever the pattern.
    base = _log_uniform(rng, 0.003, 0.06)
    edge_boost = rng.uniform(0.0, 2.0)
    background = base * (1.0 + edge_boost * _sigmoid((wafer.rho - 0.9) / 0.03))
    p_fail = 1.0 - (1.0 - background) * (1.0 - pattern)  # (rows, cols)
    fails = rng.random((rows, cols)) < p_fail
    out = np.where(fails, np.uint8(FAIL), np.uint8(PASS))  # (rows, cols) uint8
    out[~wafer.inside] = OUT
    return out


def generate_dataset(
    n_per_class: int,
    rng: np.random.Generator,
    sizes: SizeSpec = (15, 80),
    classes: Iterable[DefectClass] | None = None,
) -> WaferDataset:
    """Draw a labelled dataset with ``n_per_class`` maps of each class, in random order.

    Maps are grouped into lots of 25 wafers named ``SYN-<k>`` (k from 0), with their position in
    the lot (1 to 25) as ``wafer_index``. The result is a function of the generator's state.

    Args:
        n_per_class: maps per class.
        rng: source of randomness.
        sizes: ``(low, high)`` to draw rows and columns independently and uniformly in
            ``[low, high]``; or a sequence of ``(rows, cols)`` shapes to pick from uniformly; or a
            callable taking ``rng`` and returning ``(rows, cols)``.
        classes: classes to draw; all nine when None.

    Returns:
        A `WaferDataset` with labels set and source ``synthetic``.

    Raises:
        ValueError: negative ``n_per_class`` or a malformed ``sizes``.
    """
    if n_per_class < 0:
        raise ValueError(f"n_per_class must be >= 0, got {n_per_class}")
    chosen = list(DefectClass) if classes is None else [DefectClass(c) for c in classes]
    draw_shape = _shape_sampler(sizes)
    labels = np.repeat(np.array([int(c) for c in chosen], dtype=np.int64), n_per_class)
    labels = labels[rng.permutation(len(labels))]
    maps: list[npt.NDArray[np.integer[Any]]] = []
    for label in labels:
        rows, cols = draw_shape(rng)
        maps.append(generate_map(DefectClass(int(label)), rng, rows, cols))
    n = len(maps)
    lots = np.array([f"SYN-{i // LOT_SIZE}" for i in range(n)], dtype=np.str_)
    dataset = WaferDataset.from_maps(maps, labels, lot=lots, source="synthetic")
    dataset.wafer_index = (np.arange(n) % LOT_SIZE + 1).astype(np.float64)
    return dataset


def _shape_sampler(sizes: SizeSpec) -> Callable[[np.random.Generator], tuple[int, int]]:
    if callable(sizes):
        return sizes
    items = list(sizes)
    if len(items) == 2 and all(isinstance(v, int | np.integer) for v in items):
        low, high = int(items[0]), int(items[1])  # type: ignore[call-overload]
        if not MIN_SIDE <= low <= high:
            raise ValueError(f"sizes range must satisfy {MIN_SIDE} <= low <= high, got {sizes}")

        def draw_range(rng: np.random.Generator) -> tuple[int, int]:
            rows, cols = rng.integers(low, high, size=2, endpoint=True)
            return int(rows), int(cols)

        return draw_range
    shapes = [(int(shape[0]), int(shape[1])) for shape in items]  # type: ignore[index]
    if not shapes or min(min(s) for s in shapes) < MIN_SIDE:
        raise ValueError(f"sizes must list shapes of at least {MIN_SIDE}x{MIN_SIDE}, got {sizes}")

    def draw_choice(rng: np.random.Generator) -> tuple[int, int]:
        return shapes[int(rng.integers(len(shapes)))]

    return draw_choice


def _coordinates(rows: int, cols: int) -> tuple[FloatGrid, FloatGrid]:
    # Cell centres mapped to (-1, 1): the wafer touches the grid's sides, as in WM-811K maps.
    y = ((rows / 2 - 0.5 - np.arange(rows, dtype=np.float64)) / (rows / 2))[:, None]  # (rows, 1)
    x = ((np.arange(cols, dtype=np.float64) + 0.5 - cols / 2) / (cols / 2))[None, :]  # (1, cols)
    return y, x


def _inside(
    y: FloatGrid, x: FloatGrid, rho: FloatGrid, flat_side: int | None, flat_depth: float
) -> npt.NDArray[np.bool_]:
    inside: npt.NDArray[np.bool_] = rho <= 1.0
    if flat_side is not None and flat_depth > 0.0:
        angle = flat_side * math.pi / 2
        inside &= x * math.cos(angle) + y * math.sin(angle) <= 1.0 - flat_depth
    return inside


def _sigmoid(z: FloatGrid) -> FloatGrid:
    # tanh form: never overflows, unlike 1 / (1 + exp(-z)) for large negative z.
    return 0.5 + 0.5 * np.tanh(0.5 * z)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(math.log(low), math.log(high))))


def _wrap(angle: FloatGrid) -> FloatGrid:
    """Angle difference folded into [-pi, pi)."""
    return np.mod(angle + math.pi, 2 * math.pi) - math.pi


def _softness(wafer: _Wafer, rng: np.random.Generator) -> float:
    # Border blur of at least about half a die, so small maps keep soft edges too.
    return max(rng.uniform(0.02, 0.07), 0.4 * wafer.cell)


def _random_point(rng: np.random.Generator, r_low: float, r_high: float) -> tuple[float, float]:
    """(y, x) at a radius drawn uniformly in [r_low, r_high], at a uniform angle."""
    r, phi = rng.uniform(r_low, r_high), rng.uniform(-math.pi, math.pi)
    return r * math.sin(phi), r * math.cos(phi)


def _ellipse_distance(
    wafer: _Wafer, rng: np.random.Generator, cy: float, cx: float, aspect_max: float
) -> FloatGrid:
    """Distance from (cy, cx) in a randomly oriented metric, so blobs are not perfect discs."""
    aspect = _log_uniform(rng, 1.0 / aspect_max, aspect_max)
    phi = rng.uniform(0.0, math.pi)
    dy, dx = wafer.y - cy, wafer.x - cx
    along = dx * math.cos(phi) + dy * math.sin(phi)
    across = -dx * math.sin(phi) + dy * math.cos(phi)
    return np.sqrt(along * along * aspect + across * across / aspect)  # (rows, cols)


def _none(wafer: _Wafer, rng: np.random.Generator) -> FloatGrid:
    return np.zeros_like(wafer.rho)


def _center(wafer: _Wafer, rng: np.random.Generator) -> FloatGrid:
    cy, cx = _random_point(rng, 0.0, 0.12)
    dist = _ellipse_distance(wafer, rng, cy, cx, 1.3)
    radius = rng.uniform(0.15, 0.4)
    return rng.uniform(0.55, 0.95) * _sigmoid((radius - dist) / _softness(wafer, rng))


def _donut(wafer: _Wafer, rng: np.random.Generator) -> FloatGrid:
    cy, cx = _random_point(rng, 0.0, 0.08)
    dist = _ellipse_distance(wafer, rng, cy, cx, 1.2)
    inner = rng.uniform(0.2, 0.45)
    outer = min(inner + rng.uniform(0.15, 0.3), 0.85)
    soft = _softness(wafer, rng)
    ring = _sigmoid((dist - inner) / soft) * _sigmoid((outer - dist) / soft)
    if rng.random() < 0.4:
        # Real donuts are often incomplete: fade one arc of the ring.
        gap_at, gap_half = rng.uniform(-math.pi, math.pi), rng.uniform(0.25, 1.0)
        gap = _sigmoid((gap_half - np.abs(_wrap(wafer.theta - gap_at))) / 0.15)
        ring = ring * (1.0 - 0.85 * gap)
    return rng.uniform(0.55, 0.95) * ring


def _edge_loc(wafer: _Wafer, rng: np.random.Generator) -> FloatGrid:
    centre = rng.uniform(-math.pi, math.pi)
    half_angle = rng.uniform(math.radians(15), math.radians(50))
    depth = rng.uniform(0.12, 0.35)
    off = np.abs(_wrap(wafer.theta - centre)) / half_angle  # (rows, cols), 1 at the arc's ends
    # Lens-shaped cluster: deepest in the middle of the arc, thinning towards its ends.
    local_depth = depth * np.sqrt(np.clip(1.0 - off * off, 0.0, 1.0))
    soft = _softness(wafer, rng)
    radial = _sigmoid((wafer.rho - (1.0 - local_depth)) / soft)
    angular = _sigmoid((1.0 - off) / 0.15)
    return rng.uniform(0.6, 0.95) * radial * angular


def _edge_ring(wafer: _Wafer, rng: np.random.Generator) -> FloatGrid:
    depth = rng.uniform(0.06, 0.2)
    # Slightly wavy inner border: edge exclusion is never perfectly concentric.
    wobble = 1.0 + 0.3 * np.sin(rng.integers(1, 4) * wafer.theta + rng.uniform(0, 2 * math.pi))
    ring = _sigmoid((wafer.rho - (1.0 - depth * wobble)) / _softness(wafer, rng))
    if rng.random() < 0.5:
        gap_at, gap_half = rng.uniform(-math.pi, math.pi), rng.uniform(0.15, 0.7)
        gap = _sigmoid((gap_half - np.abs(_wrap(wafer.theta - gap_at))) / 0.1)
        ring = ring * (1.0 - 0.8 * gap)
    return rng.uniform(0.6, 0.95) * ring


def _loc(wafer: _Wafer, rng: np.random.Generator) -> FloatGrid:
    cy, cx = _random_point(rng, 0.25, 0.65)
    dist = _ellipse_distance(wafer, rng, cy, cx, 1.6)
    radius = max(rng.uniform(0.08, 0.22), 1.5 * wafer.cell)
    return rng.uniform(0.6, 0.95) * _sigmoid((radius - dist) / _softness(wafer, rng))


def _near_full(wafer: _Wafer, rng: np.random.Generator) -> FloatGrid:
    level = rng.uniform(0.72, 0.97)
    # Excursions are rarely uniform: a mild radial gradient either way.
    tilt = rng.uniform(-0.15, 0.15)
    return np.clip(level + tilt * (wafer.rho - 0.5), 0.0, 1.0)


def _random(wafer: _Wafer, rng: np.random.Generator) -> FloatGrid:
    level = rng.uniform(0.12, 0.45)
    tilt = rng.uniform(-0.05, 0.05)
    return np.clip(level + tilt * (wafer.rho - 0.5), 0.0, 1.0)


def _scratch(wafer: _Wafer, rng: np.random.Generator) -> FloatGrid:
    # An arc of a circle of curvature radius `bend` (straight-looking when bend is large),
    # centred on a point of the wafer, `length` long; half width at least half a cell so that
    # the line does not fall between die centres.
    bend = _log_uniform(rng, 0.6, 6.0)
    length = rng.uniform(0.5, 1.4)
    half_width = max(rng.uniform(0.02, 0.05), 0.55 * wafer.cell)
    my, mx = _random_point(rng, 0.0, 0.6)
    heading = rng.uniform(-math.pi, math.pi)
    side = 1.0 if rng.random() < 0.5 else -1.0
    # Circle centre one radius away from the midpoint, perpendicular to the heading.
    oy, ox = my + side * bend * math.cos(heading), mx - side * bend * math.sin(heading)
    dy, dx = wafer.y - oy, wafer.x - ox
    mid_angle = math.atan2(my - oy, mx - ox)
    half_span = length / (2 * bend)
    along = _wrap(np.arctan2(dy, dx) - mid_angle)  # (rows, cols)
    radial_gap = np.abs(np.sqrt(dy * dy + dx * dx) - bend)
    # Beyond the arc's ends the distance is the chord to the nearest end point.
    end_angle = np.clip(along, -half_span, half_span) + mid_angle
    end_y, end_x = oy + bend * np.sin(end_angle), ox + bend * np.cos(end_angle)
    to_end = np.sqrt((wafer.y - end_y) ** 2 + (wafer.x - end_x) ** 2)
    dist = np.where(np.abs(along) <= half_span, radial_gap, to_end)
    line = _sigmoid((half_width - dist) / (0.35 * half_width))
    # Scratches are often broken: up to two gaps along the arc.
    t = along / half_span  # -1..1 along the arc
    for _ in range(int(rng.integers(0, 3))):
        at, half = rng.uniform(-0.8, 0.8), rng.uniform(0.03, 0.1)
        line = line * np.where(np.abs(t - at) < half, 0.1, 1.0)
    return rng.uniform(0.7, 1.0) * line


_PATTERNS: dict[DefectClass, Callable[[_Wafer, np.random.Generator], FloatGrid]] = {
    DefectClass.NONE: _none,
    DefectClass.CENTER: _center,
    DefectClass.DONUT: _donut,
    DefectClass.EDGE_LOC: _edge_loc,
    DefectClass.EDGE_RING: _edge_ring,
    DefectClass.LOC: _loc,
    DefectClass.NEAR_FULL: _near_full,
    DefectClass.RANDOM: _random,
    DefectClass.SCRATCH: _scratch,
}
