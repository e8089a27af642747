"""Small inline SVG charts of the lot page, drawn on the server (no chart library, no script)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from markupsafe import Markup, escape

# Chart geometry in viewBox units; the SVG scales to its container's width.
_W, _H = 640.0, 220.0
_LEFT, _RIGHT, _TOP, _BOTTOM = 48.0, 12.0, 12.0, 36.0
_LINE = "#0b57d0"  # the UI's accent: 6.4:1 on white
_GRID = "#c9cfd8"
_TEXT = "#3d4651"


def trend_svg(points: Sequence[tuple[str, float | None]], *, label: str) -> Markup:
    """A die-yield trend: one point per wafer in test order, yield from 0% to 100%.

    Args:
        points: (wafer id, die yield in [0, 1] or None when the wafer has no map), in order.
            Wafers without a yield keep their place on the x axis but get no point.
        label: accessible name of the chart.

    Returns:
        Markup of an ``<svg role="img">``; each point has a ``<title>`` ("W3: 92.1%").
    """
    n = len(points)
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x(i: int) -> float:
        return _LEFT + (plot_w / 2 if n == 1 else plot_w * i / (n - 1))

    def y(value: float) -> float:
        return _TOP + plot_h * (1 - min(max(value, 0.0), 1.0))

    parts = [_axes(plot_w, plot_h)]
    drawn = [(i, v) for i, (_, v) in enumerate(points) if v is not None]
    if len(drawn) > 1:
        line = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in drawn)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{_LINE}" stroke-width="2"/>')
    for i, value in drawn:
        wafer = escape(points[i][0])
        parts.append(
            f'<circle class="point" cx="{x(i):.1f}" cy="{y(value):.1f}" r="4" fill="{_LINE}">'
            f"<title>{wafer}: {value:.1%}</title></circle>"
        )
    parts.append(_x_labels(points, x))
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(label)}"'
        f' viewBox="0 0 {_W:g} {_H:g}" class="chart" data-points="{len(drawn)}">'
        + "".join(parts)
        + "</svg>"
    )


def _axes(plot_w: float, plot_h: float) -> str:
    """Horizontal grid lines at 0%, 50% and 100% with their labels."""
    out = []
    for frac in (0.0, 0.5, 1.0):
        gy = _TOP + plot_h * (1 - frac)
        out.append(
            f'<line x1="{_LEFT:g}" y1="{gy:g}" x2="{_LEFT + plot_w:g}" y2="{gy:g}"'
            f' stroke="{_GRID}" stroke-width="1"/>'
            f'<text x="{_LEFT - 6:g}" y="{gy + 4:g}" text-anchor="end" font-size="12"'
            f' fill="{_TEXT}">{frac:.0%}</text>'
        )
    return "".join(out)


def _x_labels(points: Sequence[tuple[str, float | None]], x: Callable[[int], float]) -> str:
    """Wafer ids under the axis: every one when few, else about ten evenly spaced."""
    n = len(points)
    step = max(1, -(-n // 10))
    base = _H - _BOTTOM + 18
    return "".join(
        f'<text x="{x(i):.1f}" y="{base:g}" text-anchor="middle" font-size="11"'
        f' fill="{_TEXT}">{escape(_short(points[i][0]))}</text>'
        for i in range(0, n, step)
    )


def _short(wafer_id: str) -> str:
    """The end of a long wafer id (the part that differs between wafers of one lot)."""
    return wafer_id if len(wafer_id) <= 10 else "…" + wafer_id[-9:]
