"""What the wafer view shows of one review item: its map, top classes, and the lot's wafers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from markupsafe import Markup
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.errors import FabError
from fab_server.services import lots
from review_ui.wafer_svg import map_svg
from wafercore.classes import CLASS_NAMES
from wafercore.errors import InvalidInput

MAP_PX = 420
THUMB_PX = 72
MAX_THUMBNAILS = 48


@dataclass(frozen=True)
class ClassScore:
    """One class among the model's top three."""

    class_id: int
    name: str
    probability: float


@dataclass(frozen=True)
class Thumbnail:
    """Another wafer of the same lot, drawn small."""

    wafer_id: str
    predicted: str
    svg: Markup


@dataclass(frozen=True)
class WaferView:
    """The parts of the wafer view computed from the item's result."""

    map_svg: Markup | None  # None: the wafer was sent without a map
    top: list[ClassScore]
    steps: int | None
    tested_at: datetime | None
    die_yield: float | None


def wafer_view(item: domain.ReviewItem, result: domain.Result | None) -> WaferView:
    """The map and the top-3 classes of ``item``."""
    if result is None:  # flagged before its result arrived
        return WaferView(map_svg=None, top=[], steps=None, tested_at=None, die_yield=None)
    drawn = None
    die_yield = None
    if result.wafer_map is not None:
        codes = _codes(result.wafer_map)
        drawn = map_svg(codes, px=MAP_PX, label=_label(item.wafer_id, codes))
        dies = int(np.count_nonzero(codes != 2))
        die_yield = float(np.count_nonzero(codes == 0)) / dies if dies else None
    ranked = sorted(enumerate(result.probabilities), key=lambda p: p[1], reverse=True)[:3]
    return WaferView(
        map_svg=drawn,
        top=[ClassScore(c, CLASS_NAMES[c], p) for c, p in ranked],
        steps=result.steps,
        tested_at=result.tested_at or result.classified_at,
        die_yield=die_yield,
    )


async def lot_thumbnails_of(
    sessions: async_sessionmaker[AsyncSession], item: domain.ReviewItem
) -> list[Thumbnail]:
    """The other wafers of ``item``'s lot with a stored map, in test order, drawn small."""
    if not item.lot_id:
        return []
    try:
        page = await lots.lot_page(sessions, lot_id=item.lot_id)
    except (FabError, InvalidInput):  # no stored result of the lot (yet), or no valid id
        return []
    out = []
    for wafer in page.wafers:
        if wafer.wafer_map is None or wafer.wafer_id == item.wafer_id:
            continue
        name = CLASS_NAMES[wafer.prediction]
        svg = map_svg(
            _codes(wafer.wafer_map),
            px=THUMB_PX,
            label=f"wafer {wafer.wafer_id}, predicted {name}",
            hover=False,
        )
        out.append(Thumbnail(wafer.wafer_id, name, svg))
        if len(out) == MAX_THUMBNAILS:
            break
    return out


def _codes(stored: domain.StoredMap) -> np.ndarray:
    return np.frombuffer(stored.values, dtype=np.uint8).reshape(stored.rows, stored.cols)


def _label(wafer_id: str, codes: np.ndarray) -> str:
    fails = int(np.count_nonzero(codes == 1))
    dies = int(np.count_nonzero(codes != 2))
    return f"wafer {wafer_id} map: {dies} dies, {fails} failing"
