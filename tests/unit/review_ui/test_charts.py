"""The lot page's die-yield trend: a point per wafer with a yield, in order, with titles."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from review_ui.charts import trend_svg

SVG = "{http://www.w3.org/2000/svg}"


def test_one_point_per_wafer_with_a_yield_in_order() -> None:
    points = [("W1", 0.9), ("W2", None), ("W3", 0.25), ("W<4>", 1.0)]
    root = ET.fromstring(str(trend_svg(points, label="yield of lot L")))
    assert root.get("role") == "img" and root.get("aria-label") == "yield of lot L"
    circles = root.findall(f"{SVG}circle")
    assert [c.findtext(f"{SVG}title") for c in circles] == [
        "W1: 90.0%",
        "W3: 25.0%",
        "W<4>: 100.0%",
    ]
    xs = [float(c.get("cx", 0)) for c in circles]
    ys = [float(c.get("cy", 0)) for c in circles]
    assert xs == sorted(xs)  # test order left to right, W2's place kept empty
    assert ys[2] < ys[0] < ys[1]  # higher yield is drawn higher
    line = root.find(f"{SVG}polyline")
    assert line is not None and len(line.get("points", "").split()) == 3
    assert root.get("data-points") == "3"


def test_a_single_wafer_and_no_yield_at_all() -> None:
    one = ET.fromstring(str(trend_svg([("W1", 0.5)], label="one")))
    assert len(one.findall(f"{SVG}circle")) == 1 and one.find(f"{SVG}polyline") is None
    none = ET.fromstring(str(trend_svg([("W1", None), ("W2", None)], label="none")))
    assert none.findall(f"{SVG}circle") == []
    labels = [t.text for t in none.findall(f"{SVG}text")]
    assert labels[:3] == ["0%", "50%", "100%"] and "W1" in labels
