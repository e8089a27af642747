"""Wafer maps as SVG: every die drawn once, hover titles, NaN and out-of-wafer cells left out."""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET

import numpy as np
import numpy.typing as npt
import pytest

from review_ui.wafer_svg import RATE_FILLS, RECT_LIMIT, STATE_FILLS, map_svg, rate_svg
from wafercore.encoding import FAIL, OUT, PASS

SVG = "{http://www.w3.org/2000/svg}"


def _disc(n: int, fail_every: int = 7) -> npt.NDArray[np.uint8]:
    """A round wafer on an n x n grid, every ``fail_every``-th die failing."""
    y, x = np.mgrid[:n, :n]
    inside = (x - n / 2 + 0.5) ** 2 + (y - n / 2 + 0.5) ** 2 < (n / 2) ** 2
    codes = np.full((n, n), OUT, dtype=np.uint8)
    codes[inside] = PASS
    fails = np.flatnonzero(inside)[::fail_every]
    codes.ravel()[fails] = FAIL
    return codes


def _parse(markup: str) -> ET.Element:
    return ET.fromstring(str(markup))


def _map_rects(root: ET.Element) -> list[ET.Element]:
    return [r for g in root.findall(f"{SVG}g") if g.get("class") != "legend" for r in g]


def _path_cells(d: str) -> set[tuple[int, int]]:
    """The cells a path of ``M x y h w v1 h-w z`` runs covers."""
    cells: set[tuple[int, int]] = set()
    for x, y, w in re.findall(r"M(\d+) (\d+)h(\d+)v1h-\3z", d):
        cells.update((int(y), int(x) + i) for i in range(int(w)))
    return cells


def test_one_rect_per_die_with_row_col_and_title() -> None:
    codes = _disc(26)
    root = _parse(map_svg(codes, px=260, label="wafer W1"))
    rects = _map_rects(root)
    assert len(rects) == int(np.count_nonzero(codes != OUT))
    fails = {
        (int(r.get("data-row", -1)), int(r.get("data-col", -1)))
        for r in rects
        if r.findtext(f"{SVG}title", "").endswith(": fail")
    }
    assert fails == {tuple(cell) for cell in np.argwhere(codes == FAIL).tolist()}
    first = rects[0]
    row, col = int(first.get("data-row", -1)), int(first.get("data-col", -1))
    assert first.get("x") == str(col) and first.get("y") == str(row)
    assert first.findtext(f"{SVG}title") == f"row {row}, col {col}: pass"


def test_fill_follows_state() -> None:
    codes = np.array([[PASS, FAIL], [OUT, PASS]], dtype=np.uint8)
    root = _parse(map_svg(codes, px=20, label="tiny"))
    fills = {g.get("fill"): len(g) for g in root.findall(f"{SVG}g")}
    assert fills == {STATE_FILLS[PASS]: 2, STATE_FILLS[FAIL]: 1}


def test_accessible_and_scalable() -> None:
    codes = _disc(26)[:, :13]  # a half wafer: 26 rows, 13 columns
    root = _parse(map_svg(codes, px=130, label='wafer "A" <1>'))
    assert root.get("role") == "img"
    assert root.get("aria-label") == 'wafer "A" <1>'  # escaped in the markup, intact once parsed
    assert root.get("viewBox") == "0 0 13 26"
    assert (root.get("width"), root.get("height")) == ("130", "260")


def test_thumbnail_paths_cover_exactly_the_dies() -> None:
    codes = _disc(40)
    root = _parse(map_svg(codes, px=80, label="thumb", hover=False))
    assert root.findall(f".//{SVG}rect") == []
    paths = {p.get("fill"): p.get("d", "") for p in root.findall(f"{SVG}path")}
    for state in (PASS, FAIL):
        expected = {tuple(c) for c in np.argwhere(codes == state).tolist()}
        assert _path_cells(paths[STATE_FILLS[state]]) == expected
    assert root.get("data-cells") is None  # no hover data on a thumbnail


def test_large_map_is_paths_with_hover_cells_and_fast() -> None:
    codes = _disc(200)
    assert codes.size > RECT_LIMIT
    map_svg(codes, px=600, label="warm-up")
    started = time.perf_counter()
    root = _parse(map_svg(codes, px=600, label="big"))
    elapsed = time.perf_counter() - started
    assert root.findall(f".//{SVG}rect") == []
    cells = root.get("data-cells", "")
    assert len(cells) == codes.size
    r, c = np.argwhere(codes == FAIL)[0].tolist()
    assert cells[r * 200 + c] == "f" and cells[0] == "o"
    assert "wafer-hover" in root.get("class", "")
    # Generous for a loaded 2-core machine; it takes about 3 ms unloaded.
    assert elapsed < 0.25


def test_rejects_bad_maps() -> None:
    with pytest.raises(ValueError, match="2-D"):
        map_svg(np.zeros(5, dtype=np.uint8), px=10, label="x")
    with pytest.raises(ValueError, match="die codes"):
        map_svg(np.full((2, 2), 3, dtype=np.uint8), px=10, label="x")


def test_rate_map_leaves_nan_out_and_titles_percentages() -> None:
    rates = np.array([[np.nan, 0.0, 0.25], [1.0, 0.5, np.nan]])
    root = _parse(rate_svg(rates, px=300, label="stacked map of 4 wafers"))
    assert root.get("role") == "img" and root.get("aria-label") == "stacked map of 4 wafers"
    rects = _map_rects(root)
    assert len(rects) == 4  # the two NaN cells are not drawn
    titles = sorted(r.findtext(f"{SVG}title", "") for r in rects)
    assert titles == [
        "row 0, col 1: 0% fail",
        "row 0, col 2: 25% fail",
        "row 1, col 0: 100% fail",
        "row 1, col 1: 50% fail",
    ]
    by_cell = {(r.get("data-row"), r.get("data-col")): r for r in rects}
    fill_of = {id(r): g.get("fill") for g in root.findall(f"{SVG}g") for r in g}
    assert fill_of[id(by_cell[("1", "0")])] == RATE_FILLS[-1]  # 100% in the top step
    assert fill_of[id(by_cell[("0", "1")])] == RATE_FILLS[0]


def test_rate_map_has_a_legend_below_the_map() -> None:
    rates = np.full((10, 20), 0.3)
    root = _parse(rate_svg(rates, px=200, label="legend"))
    legend = [g for g in root.findall(f"{SVG}g") if g.get("class") == "legend"]
    assert len(legend) == 1
    swatches = legend[0].findall(f"{SVG}rect")
    assert [s.get("fill") for s in swatches] == list(RATE_FILLS)
    assert all(float(s.get("y", 0)) >= 10 for s in swatches)
    labels = [t.text for t in legend[0].findall(f"{SVG}text")]
    assert labels == ["0%", "100% fail"]
    view_height = float(root.get("viewBox", "").split()[3])
    assert view_height > 10
    assert root.get("data-rows") == "10"


def test_large_rate_map_paths_skip_nan() -> None:
    codes = _disc(100)
    rates = np.where(codes == OUT, np.nan, (np.arange(codes.size) % 10 / 10).reshape(codes.shape))
    root = _parse(rate_svg(rates, px=300, label="big stacked"))
    covered: set[tuple[int, int]] = set()
    for path in root.findall(f"{SVG}path"):
        covered |= _path_cells(path.get("d", ""))
    assert covered == {tuple(c) for c in np.argwhere(codes != OUT).tolist()}
    cells = root.get("data-cells", "")
    assert cells.count("-") == int(np.count_nonzero(codes == OUT))


def test_rate_map_rejects_rates_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        rate_svg(np.array([[1.5]]), px=10, label="x")
