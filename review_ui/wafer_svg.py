"""Wafer maps as inline SVG, drawn on the server: one die per unit square of the viewBox.

Two renderings, chosen by size, because a page may show one 200x200 map or fifty thumbnails:

- **Per-die rects** (``hover=True`` and at most `RECT_LIMIT` cells): one ``<rect>`` per drawn die,
  grouped by state so the fill is written once per group; each rect carries ``data-row``,
  ``data-col`` and a ``<title>`` ("row r, col c: fail") that browsers show on hover.
- **One path per state** (thumbnails, or maps over `RECT_LIMIT` cells): each horizontal run of
  equal dies becomes one ``M x y h w v1 h-w z`` segment, so a 200x200 map is a few hundred
  segments instead of 40,000 elements. Hover then comes from ``static/wafer_svg.js``, which
  reads the cell values kept in the ``<svg>``'s ``data-cells`` attribute (one character per
  cell, row-major) and shows "row r, col c: ..." under the pointer.

Out-of-wafer cells (and NaN rates) are never drawn. ``viewBox`` keeps the map crisp at any
size; ``shape-rendering="crispEdges"`` stops hairline seams between adjacent dies.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from markupsafe import Markup, escape

from wafercore.encoding import FAIL, OUT, PASS

RECT_LIMIT = 4096
"""Largest map (rows * cols) drawn as one element per die when hover is asked for."""

STATE_NAMES = {PASS: "pass", FAIL: "fail"}
"""The drawn states and the word used in hover titles."""

# Pass light green, fail dark red: over 3:1 apart (WCAG non-text contrast) and not told apart
# by hue alone, since their lightness differs as much as their colour.
STATE_FILLS = {PASS: "#a5d6a7", FAIL: "#b71c1c"}

_CELL_CHARS = np.array(["p", "f", "o"])  # hover script's code per cell: pass, fail, out

RATE_BINS = 10
"""The colour scale of `rate_svg` has this many steps of equal width over [0, 1]."""

_STEP_CHARS = np.array([*"0123456789", "-"])  # hover script's scale step per cell, "-" none

# Light yellow to dark red, monotone in lightness so the scale reads in grey too.
RATE_FILLS = (
    "#fff5d6",
    "#fee8a8",
    "#fed27a",
    "#fdb55a",
    "#fc9545",
    "#f5713a",
    "#e34c2d",
    "#c8301f",
    "#a11a14",
    "#6e0b0b",
)


def map_svg(codes: npt.NDArray[np.integer], *, px: int, label: str, hover: bool = True) -> Markup:
    """Draw one wafer map in the canonical encoding (0 pass, 1 fail, 2 out of wafer).

    Args:
        codes: 2-D array of die codes.
        px: rendered width (height follows the aspect ratio); the viewBox scales to any size.
        label: accessible name (``aria-label``), e.g. "wafer W-1, 812 dies".
        hover: give every die its row/column on hover (rects with titles when the map has
            at most `RECT_LIMIT` cells; otherwise paths plus ``data-cells`` for the script).

    Returns:
        Markup of an ``<svg role="img">`` element, safe to insert into a template.

    Raises:
        ValueError: ``codes`` is not 2-D or holds a value other than 0, 1, 2.
    """
    grid = np.asarray(codes)
    if grid.ndim != 2:
        raise ValueError(f"a wafer map is 2-D, got shape {grid.shape}")
    if grid.size and (grid.min() < 0 or grid.max() > OUT):
        raise ValueError("die codes must be 0 (pass), 1 (fail) or 2 (out of wafer)")
    rows, cols = grid.shape
    if hover and grid.size <= RECT_LIMIT:
        body = "".join(_rect_group(grid, state) for state in STATE_NAMES)
        return _svg(rows, cols, px, label, body, extra="")
    body = "".join(
        f'<path fill="{STATE_FILLS[state]}" d="{_runs_path(grid == state)}"/>'
        for state in STATE_NAMES
    )
    extra = ""
    if hover:
        cells = "".join(_CELL_CHARS[grid.ravel()].tolist())
        extra = f' class="wafer-map wafer-hover" data-kind="map" data-cells="{cells}"'
    return _svg(rows, cols, px, label, body, extra=extra)


def rate_svg(
    rates: npt.NDArray[np.floating],
    *,
    px: int,
    label: str,
    hover: bool = True,
    unit: str = "fail",
) -> Markup:
    """Draw a fail rate per die position (a lot's stacked map) on a 10-step colour scale.

    Args:
        rates: 2-D array of fail rates in [0, 1]; NaN where no wafer has a die (not drawn).
        px: rendered width; the legend strip under the map scales with it.
        label: accessible name, e.g. "stacked map of 25 wafers".
        hover: rects with "row r, col c: 40% fail" titles up to `RECT_LIMIT` cells; beyond that,
            paths plus ``data-cells`` (one scale step 0-9 per cell, "-" for none).
        unit: what 100% is, in titles and the legend ("fail"; "of the largest error" for a
            novelty heatmap scaled to its largest die).

    Returns:
        Markup of an ``<svg role="img">`` with the map and its legend.

    Raises:
        ValueError: ``rates`` is not 2-D or holds a value outside [0, 1].
    """
    grid = np.asarray(rates, dtype=np.float64)
    if grid.ndim != 2:
        raise ValueError(f"a rate map is 2-D, got shape {grid.shape}")
    drawn = ~np.isnan(grid)
    if np.any(grid[drawn] < 0) or np.any(grid[drawn] > 1):
        raise ValueError("fail rates must lie in [0, 1]")
    bins = np.full(grid.shape, -1, dtype=np.int16)
    bins[drawn] = np.minimum((grid[drawn] * RATE_BINS).astype(np.int16), RATE_BINS - 1)
    rows, cols = grid.shape
    extra = ""
    if hover and grid.size <= RECT_LIMIT:
        body = "".join(_rate_group(grid, bins, step, unit) for step in range(RATE_BINS))
    else:
        body = "".join(
            f'<path fill="{RATE_FILLS[step]}" d="{_runs_path(bins == step)}"/>'
            for step in range(RATE_BINS)
            if np.any(bins == step)
        )
        if hover:
            # Index -1 (no die) picks the last character, "-".
            cells = "".join(_STEP_CHARS[bins.ravel()].tolist())
            extra = f' class="wafer-map wafer-hover" data-kind="rate" data-cells="{cells}"'
    legend, legend_height = _legend(rows, cols, unit)
    return _svg(rows, cols, px, label, body + legend, extra=extra, below=legend_height)


def _svg(
    rows: int, cols: int, px: int, label: str, body: str, *, extra: str, below: float = 0.0
) -> Markup:
    """Wrap drawn content in the accessible, scalable ``<svg>`` element.

    ``below`` is the height (in die units) of anything drawn under the map, such as a legend;
    ``data-rows``/``data-cols`` stay the map's own, which the hover script divides by.
    """
    width = max(int(px), 1)
    units = rows + below
    height = max(round(width * units / max(cols, 1)), 1)
    classes = "" if extra else ' class="wafer-map"'
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(label)}"'
        f' viewBox="0 0 {cols} {units:.4g}" width="{width}" height="{height}"'
        f' shape-rendering="crispEdges" data-rows="{rows}" data-cols="{cols}"'
        f"{classes}{extra}>{body}</svg>"
    )


def _rect_group(grid: npt.NDArray[np.integer], state: int) -> str:
    """One ``<g>`` of rects with titles for every die in ``state``."""
    name = STATE_NAMES[state]
    cells = np.argwhere(grid == state).tolist()
    if not cells:
        return ""
    rects = "".join(
        f'<rect x="{c}" y="{r}" width="1" height="1" data-row="{r}" data-col="{c}">'
        f"<title>row {r}, col {c}: {name}</title></rect>"
        for r, c in cells
    )
    return f'<g fill="{STATE_FILLS[state]}" class="die-{name}">{rects}</g>'


def _rate_group(
    rates: npt.NDArray[np.float64], bins: npt.NDArray[np.int16], step: int, unit: str
) -> str:
    """One ``<g>`` of rects with titles for every cell whose rate falls in scale ``step``."""
    cells = np.argwhere(bins == step).tolist()
    if not cells:
        return ""
    rects = "".join(
        f'<rect x="{c}" y="{r}" width="1" height="1" data-row="{r}" data-col="{c}">'
        f"<title>row {r}, col {c}: {rates[r, c]:.0%} {escape(unit)}</title></rect>"
        for r, c in cells
    )
    return f'<g fill="{RATE_FILLS[step]}">{rects}</g>'


def _runs_path(mask: npt.NDArray[np.bool_]) -> str:
    """Path data covering ``mask``, one closed rectangle per horizontal run of True cells."""
    if not mask.any():
        return ""
    rows = mask.shape[0]
    padded = np.zeros((rows, mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    # argwhere walks row-major, so the k-th start and the k-th end belong to the same run.
    starts = np.argwhere(edges == 1)
    ends = np.argwhere(edges == -1)[:, 1]
    widths = ends - starts[:, 1]
    return "".join(
        f"M{c} {r}h{w}v1h-{w}z" for (r, c), w in zip(starts.tolist(), widths.tolist(), strict=True)
    )


def _legend(rows: int, cols: int, unit: str) -> tuple[str, float]:
    """The colour scale under a rate map (ten swatches, 0% and 100% labels) and its height.

    Sized relative to the map's width so it reads the same on a 26- or a 200-column map.
    """
    step = cols / RATE_BINS
    gap = max(cols / 60, 0.3)
    swatch = max(cols / 25, 0.8)
    font = max(cols / 26, 0.9)
    top = rows + gap
    text_y = top + swatch + font
    swatches = "".join(
        f'<rect x="{i * step:.3g}" y="{top:.4g}" width="{step:.3g}" height="{swatch:.3g}"'
        f' fill="{fill}"/>'
        for i, fill in enumerate(RATE_FILLS)
    )
    text = f'font-size="{font:.3g}" fill="#222" shape-rendering="auto"'
    markup = (
        f'<g class="legend" aria-hidden="true">{swatches}'
        f'<text x="0" y="{text_y:.4g}" {text}>0%</text>'
        f'<text x="{cols}" y="{text_y:.4g}" {text} text-anchor="end">100% {escape(unit)}</text></g>'
    )
    return markup, text_y - rows + font * 0.3
