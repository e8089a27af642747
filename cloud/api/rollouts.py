"""``/rollouts/*``: follow canary rollouts and stop one at once (``POST /models/deploy`` starts
them, in `cloud.api.models`). Viewers read; the emergency stop needs the admin role."""

# No ``from __future__ import annotations``: FastAPI must evaluate the route signatures,
# which name the role dependencies defined inside the router factory.
import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends

from cloud.api.auth import Principal, TokenAuth
from cloud.api.resources import Resources
from cloud.api.schemas import Id, RolloutOut, StopRequest
from cloud.services import rollouts
from wafercore.web import error_responses

_ITEM = (404,)


def rollouts_router(resources: Resources, auth: TokenAuth) -> APIRouter:
    """The rollout routes, on the resources of the running app."""
    router = APIRouter(
        prefix="/rollouts", tags=["rollouts"], responses=error_responses((401, 403, 422, 503))
    )
    Viewer = Annotated[Principal, Depends(auth.require("viewer"))]  # noqa: N806
    Admin = Annotated[Principal, Depends(auth.require("admin"))]  # noqa: N806

    @router.get("", response_model=list[RolloutOut])
    def list_rollouts(
        _: Viewer, fab_id: Id | None = None, active: bool = False
    ) -> list[RolloutOut]:
        """Rollouts, newest first (one fab's, only those under way, when asked)."""
        found = rollouts.list_all(resources.database(), fab_id=fab_id, active_only=active)
        return [RolloutOut.model_validate(rollout) for rollout in found]

    @router.get("/{rollout_id}", response_model=RolloutOut, responses=error_responses(_ITEM))
    def get_rollout(_: Viewer, rollout_id: uuid.UUID) -> RolloutOut:
        """A rollout: stage, nodes, the statistics so far and the decision with its reason."""
        return RolloutOut.model_validate(rollouts.get(resources.database(), str(rollout_id)))

    @router.post(
        "/{rollout_id}/stop",
        response_model=RolloutOut,
        responses=error_responses((*_ITEM, 409, 408, 413)),
    )
    def stop(caller: Admin, rollout_id: uuid.UUID, body: StopRequest) -> RolloutOut:
        """Emergency stop: every node of the fab returns to the baseline (the champion)."""
        stopped = rollouts.stop(
            resources.database(),
            resources.model_registry(),
            resources.settings.rollouts,
            rollout_id=str(rollout_id),
            actor=caller.user,
            reason=body.reason,
            now=datetime.now(UTC),
        )
        return RolloutOut.model_validate(stopped)

    return router
