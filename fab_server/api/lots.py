"""``/api/lots/{lot_id}``: a lot's summary (counts per class, yield, excursion state)."""

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from pydantic import AfterValidator
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server.api.auth import Principal, TokenAuth
from fab_server.api.schemas import LotSummaryOut
from fab_server.services.lots import lot_summary
from wafercore.validation import MAX_ID_CHARS, valid_id
from wafercore.web import error_responses

LotId = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(valid_id)]


def lots_router(sessions: async_sessionmaker[AsyncSession], auth: TokenAuth) -> APIRouter:
    """The lot routes; lot data is the fab's own, so engineers' tokens are required."""
    router = APIRouter(
        prefix="/api/lots", tags=["lots"], responses=error_responses((401, 422, 503))
    )
    Engineer = Annotated[Principal, Depends(auth.require("engineer"))]  # noqa: N806

    @router.get("/{lot_id}", response_model=LotSummaryOut, responses=error_responses((404,)))
    async def get_lot(_: Engineer, lot_id: LotId) -> LotSummaryOut:
        """Counts per class, die yield, flagged wafers, dominant pattern and excursion state."""
        return LotSummaryOut.from_domain(await lot_summary(sessions, lot_id=lot_id))

    return router
