"""``/api/wafers/{wafer_id}/...``: similar past wafers and the novelty heatmap (issue 14).

A wafer id names the wafer's newest stored result; ``node_id`` and ``sequence`` together name
another one (a retest, another station).
"""

# No `from __future__ import annotations`: FastAPI reads the route's local Annotated aliases.
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from pydantic import AfterValidator, BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.api.auth import Principal, TokenAuth
from fab_server.services import similar
from fab_server.services.classify import Classifier
from wafercore.classes import CLASS_NAMES
from wafercore.validation import MAX_ID_CHARS, valid_id
from wafercore.web import error_responses

WaferId = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(valid_id)]
NodeId = Annotated[
    str | None, Query(min_length=1, max_length=MAX_ID_CHARS, description="With sequence.")
]
Sequence = Annotated[int | None, Query(ge=1, le=2**63 - 1, description="With node_id.")]


class WaferRef(BaseModel):
    """A stored result: whose, which model said what."""

    wafer_id: str
    lot_id: str
    node_id: str
    sequence: int
    model_version: str
    prediction: int
    prediction_name: str
    confidence: float
    novelty: float | None
    classified_at: datetime

    @classmethod
    def from_domain(cls, result: domain.Result) -> "WaferRef":
        """Convert a domain result."""
        return cls(
            wafer_id=result.wafer_id,
            lot_id=result.lot_id,
            node_id=result.node_id,
            sequence=result.sequence,
            model_version=result.model_version,
            prediction=result.prediction,
            prediction_name=CLASS_NAMES[result.prediction],
            confidence=result.confidence,
            novelty=result.novelty,
            classified_at=result.classified_at,
        )


class NeighbourOut(WaferRef):
    """A similar past wafer and what an engineer confirmed it was."""

    distance: float = Field(description="Euclidean distance in the novelty model's latent space.")
    confirmed_label: int | None = Field(description="Class id an engineer confirmed; null: none.")
    confirmed_name: str | None


class SimilarOut(BaseModel):
    """The query's result and its nearest stored results of the same model, nearest first."""

    query: WaferRef
    neighbours: list[NeighbourOut]


class HeatmapOut(BaseModel):
    """Where the novelty model fails to reconstruct the map: error per die (null off-wafer)."""

    wafer: WaferRef
    novelty_model: str
    score: float
    threshold: float
    novel: bool
    rows: int
    cols: int
    values: list[list[float | None]]


def _neighbour(n: similar.Neighbour) -> NeighbourOut:
    label = n.confirmed_label
    return NeighbourOut(
        **WaferRef.from_domain(n.result).model_dump(),
        distance=n.distance,
        confirmed_label=label,
        confirmed_name=None if label is None else CLASS_NAMES[label],
    )


def wafers_router(
    sessions: async_sessionmaker[AsyncSession],
    auth: TokenAuth,
    classifier: Classifier,
    index: similar.SimilarityIndex,
) -> APIRouter:
    """The wafer routes (engineers' tokens)."""
    router = APIRouter(
        prefix="/api/wafers", tags=["wafers"], responses=error_responses((401, 404, 409, 422, 503))
    )
    Engineer = Annotated[Principal, Depends(auth.require("engineer"))]  # noqa: N806

    @router.get("/{wafer_id}/similar", response_model=SimilarOut)
    async def get_similar(
        _: Engineer,
        wafer_id: WaferId,
        k: Annotated[int, Query(ge=1, le=similar.MAX_K)] = 10,
        node_id: NodeId = None,
        sequence: Sequence = None,
    ) -> SimilarOut:
        """The ``k`` most similar stored wafers with their engineer-confirmed labels."""
        found = await similar.similar_wafers(
            sessions, index, wafer_id=wafer_id, k=k, node_id=node_id, sequence=sequence
        )
        return SimilarOut(
            query=WaferRef.from_domain(found.query),
            neighbours=[_neighbour(n) for n in found.neighbours],
        )

    @router.get("/{wafer_id}/heatmap", response_model=HeatmapOut)
    async def get_heatmap(
        _: Engineer, wafer_id: WaferId, node_id: NodeId = None, sequence: Sequence = None
    ) -> HeatmapOut:
        """The novelty model's reconstruction error per die of the stored map."""
        found = await similar.heatmap(
            sessions, classifier, wafer_id=wafer_id, node_id=node_id, sequence=sequence
        )
        return HeatmapOut(
            wafer=WaferRef.from_domain(found.result),
            novelty_model=found.novelty_model,
            score=found.score,
            threshold=found.threshold,
            novel=found.novel,
            rows=len(found.values),
            cols=len(found.values[0]) if found.values else 0,
            values=found.values,
        )

    return router
