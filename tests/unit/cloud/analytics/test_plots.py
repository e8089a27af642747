"""The drift PNG renders with data, without reviews, and with nothing at all."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import date, timedelta

import pytest

from cloud.analytics.drift import DailyPoint
from cloud.analytics.plots import drift_png
from cloud.settings import DriftSettings

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _size(png: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk (bytes 16-24)."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _series(with_accuracy: bool) -> dict[str, list[DailyPoint]]:
    start = date(2026, 11, 20)
    return {
        fab: [
            DailyPoint(
                day=start + timedelta(days=i),
                wafers=100 * (i + 1),
                psi=0.05 * i * scale,
                avg_steps=1.2 + 0.05 * i,
                accuracy=(0.9 - 0.01 * i) if with_accuracy and i % 2 else None,
            )
            for i in range(8)
        ]
        for fab, scale in (("fab-1", 1.0), ("fab-2", 0.3))
    }


@pytest.mark.parametrize("with_accuracy", [True, False])
def test_drift_png(with_accuracy: bool) -> None:
    png = drift_png(_series(with_accuracy), DriftSettings())
    assert png.startswith(PNG_SIGNATURE)
    assert len(png) > 1000
    width, height = _size(png)
    assert width > 0 and height > 0


def test_drift_png_accuracy_panel_adds_height() -> None:
    with_acc = _size(drift_png(_series(True), DriftSettings()))[1]
    without = _size(drift_png(_series(False), DriftSettings()))[1]
    assert with_acc > without


@pytest.mark.parametrize(
    "series",
    [{}, {"fab-1": []}, {"fab-1": [DailyPoint(date(2026, 11, 20), 0, None, None, None)]}],
)
def test_drift_png_without_data_still_renders(series: dict[str, list[DailyPoint]]) -> None:
    png = drift_png(series, DriftSettings())
    assert png.startswith(PNG_SIGNATURE)
    assert len(png) > 0


def test_drift_png_is_a_readable_image() -> None:
    from matplotlib.image import imread

    image = imread(io.BytesIO(drift_png(_series(True), DriftSettings())), format="png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_drift_png_leaves_no_pyplot_state() -> None:
    # In a fresh interpreter: drawing must not import pyplot (its global figure registry).
    code = (
        "import sys\n"
        "from cloud.analytics.plots import drift_png\n"
        "from cloud.settings import DriftSettings\n"
        "assert drift_png({}, DriftSettings()).startswith(b'\\x89PNG')\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
