"""``/ui/lots``: the recent lots, and a lot's page (gallery, class mix, yield trend, stacked map).

The stacked map is the view yield engineers use to see a systematic pattern: the fail rate
of each die position over the lot's wafers (see fab_server.services.lots.stack_maps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from fab_server.errors import NotFound
from fab_server.repository.lots import LotWafer
from fab_server.services import lots
from review_ui.charts import trend_svg
from review_ui.session import User, context
from review_ui.templating import render
from review_ui.wafer_svg import map_svg, rate_svg
from wafercore.classes import CLASS_NAMES
from wafercore.errors import InvalidInput

router = APIRouter()

LOTS_SHOWN = 200
THUMB_PX = 96
STACKED_PX = 420


@dataclass(frozen=True)
class GalleryWafer:
    """One thumbnail of the lot's gallery."""

    wafer: LotWafer
    predicted: str
    svg: Markup | None  # None: sent without a map


@router.get("/lots", response_class=HTMLResponse)
async def lots_page(request: Request, _: User) -> HTMLResponse:
    """The lots seen last, newest first, with their counts, yield and excursion flag."""
    listing = await lots.recent_lots(context(request).sessions, limit=LOTS_SHOWN)
    return render(request, "lots.html", lots=listing, shown=LOTS_SHOWN)


@router.get("/lots/{lot_id}", response_class=HTMLResponse)
async def lot_page(request: Request, lot_id: str, _: User) -> HTMLResponse:
    """One lot: excursion flag, summary, class mix, die-yield trend, stacked map, gallery."""
    try:
        page = await lots.lot_page(context(request).sessions, lot_id=lot_id)
    except (NotFound, InvalidInput):
        return render(
            request,
            "error.html",
            status_code=404,
            title="Lot not found",
            message=f"No wafer of lot {lot_id!r} is stored.",
        )
    trend = trend_svg(
        [(w.wafer_id, w.die_yield) for w in page.wafers],
        label=f"Die yield of the {len(page.wafers)} wafers of lot {lot_id}, in test order",
    )
    stacked_svg = None
    if page.stacked is not None:
        stacked_svg = rate_svg(
            page.stacked.rates,
            px=STACKED_PX,
            label=f"Stacked map of lot {lot_id}: fail rate per die position over "
            f"{page.stacked.stacked} wafer{'' if page.stacked.stacked == 1 else 's'}",
        )
    total = max(page.summary.total_wafers, 1)
    return render(
        request,
        "lot.html",
        lot=page.summary,
        stacked=page.stacked,
        stacked_svg=stacked_svg,
        trend=trend,
        yields=[w.die_yield for w in page.wafers if w.die_yield is not None],
        mix=[
            (CLASS_NAMES[k], n, n / total) for k, n in enumerate(page.summary.class_counts) if n > 0
        ],
        gallery=[_gallery_wafer(w) for w in page.wafers],
        dominant=CLASS_NAMES[page.summary.dominant_pattern],
    )


def _gallery_wafer(wafer: LotWafer) -> GalleryWafer:
    name = CLASS_NAMES[wafer.prediction] if 0 <= wafer.prediction < len(CLASS_NAMES) else "?"
    svg = None
    if wafer.wafer_map is not None:
        stored = wafer.wafer_map
        codes = np.frombuffer(stored.values, dtype=np.uint8).reshape(stored.rows, stored.cols)
        svg = map_svg(
            codes, px=THUMB_PX, label=f"wafer {wafer.wafer_id}, predicted {name}", hover=False
        )
    return GalleryWafer(wafer=wafer, predicted=name, svg=svg)
