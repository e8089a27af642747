"""``/ui/review/{item}/novelty``: where the novelty model fails to reconstruct the wafer, and
the most similar past wafers with what engineers confirmed they were (issue 14).

A fragment the wafer view loads after it is shown (like the lot's other wafers), so the next
item never waits for a model call or an index search. What cannot be shown says why in one
line (no map stored, no novelty model, no embedding).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup

from fab_server import domain
from fab_server.errors import Conflict, NotFound
from fab_server.services import review, similar
from review_ui.session import User, context
from review_ui.templating import render
from review_ui.wafer_svg import map_svg, rate_svg
from wafercore.classes import CLASS_NAMES

router = APIRouter()

HEAT_PX = 300
THUMB_PX = 72
NEIGHBOURS = 8


@dataclass(frozen=True)
class SimilarWafer:
    """One similar past wafer as the fragment shows it."""

    wafer_id: str
    lot_id: str
    predicted: str
    confirmed: str | None
    distance: float
    svg: Markup | None


@router.get("/review/{item_id}/novelty", response_class=HTMLResponse)
async def novelty_fragment(request: Request, item_id: str, _: User) -> Response:
    """The heatmap and similar wafers of a review item's result."""
    try:
        item, result = await _item(request, item_id)
    except NotFound:
        return HTMLResponse("", status_code=404)
    if result is None:
        missing = "No result is stored for this wafer yet."
        return render(
            request,
            "novelty.html",
            item=item,
            heat=None,
            heat_problem=missing,
            neighbours=[],
            similar_problem=missing,
        )
    heat, heat_problem = await _heatmap(request, result)
    neighbours, similar_problem = await _neighbours(request, result)
    return render(
        request,
        "novelty.html",
        item=item,
        heat=heat,
        heat_svg=_heat_svg(heat) if heat is not None else None,
        heat_problem=heat_problem,
        neighbours=neighbours,
        similar_problem=similar_problem,
    )


async def _heatmap(request: Request, result: domain.Result) -> tuple[similar.Heatmap | None, str]:
    ui = context(request)
    try:
        found = await similar.heatmap(
            ui.sessions,
            ui.classifier,
            wafer_id=result.wafer_id,
            node_id=result.node_id,
            sequence=result.sequence,
        )
    except Conflict as exc:
        return None, str(exc)
    return found, ""


async def _neighbours(request: Request, result: domain.Result) -> tuple[list[SimilarWafer], str]:
    ui = context(request)
    try:
        found = await similar.similar_wafers(
            ui.sessions,
            ui.index,
            wafer_id=result.wafer_id,
            k=NEIGHBOURS,
            node_id=result.node_id,
            sequence=result.sequence,
        )
    except Conflict as exc:
        return [], str(exc)
    return [_similar(n) for n in found.neighbours], ""


async def _item(request: Request, item_id: str) -> tuple[domain.ReviewItem, domain.Result | None]:
    try:
        canonical = str(uuid.UUID(item_id))
    except ValueError:
        raise NotFound(f"review item {item_id}") from None
    return await review.get_item(context(request).sessions, item_id=canonical)


def _heat_svg(heat: similar.Heatmap) -> Markup:
    """The per-die error, scaled to the wafer's largest (NaN: outside the wafer)."""
    values = np.array([[np.nan if v is None else v for v in row] for row in heat.values])
    top = float(np.nanmax(values)) if np.isfinite(values).any() else 0.0
    scaled = values / top if top > 0 else np.where(np.isnan(values), np.nan, 0.0)
    return rate_svg(
        scaled,
        px=HEAT_PX,
        label=f"novelty heatmap of wafer {heat.result.wafer_id}",
        unit="of the largest error",
    )


def _similar(neighbour: similar.Neighbour) -> SimilarWafer:
    result = neighbour.result
    svg = None
    if result.wafer_map is not None:
        stored = result.wafer_map
        codes = np.frombuffer(stored.values, dtype=np.uint8).reshape(stored.rows, stored.cols)
        svg = map_svg(codes, px=THUMB_PX, label=f"wafer {result.wafer_id}", hover=False)
    label = neighbour.confirmed_label
    return SimilarWafer(
        wafer_id=result.wafer_id,
        lot_id=result.lot_id,
        predicted=CLASS_NAMES[result.prediction],
        confirmed=None if label is None else CLASS_NAMES[label],
        distance=neighbour.distance,
        svg=svg,
    )
