"""``/training/*``: start retraining jobs, follow them, cancel them.

Anyone with a token (viewer and up) reads jobs; starting and cancelling one needs the
ml-engineer role. The job records who asked (the token's holder, never a field of the body).
"""

# No ``from __future__ import annotations``: FastAPI must evaluate the route signatures,
# which name the role dependencies defined inside the router factory.
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status

from cloud.api.auth import Principal, TokenAuth
from cloud.api.resources import Resources
from cloud.api.schemas import JobDetailOut, JobOut, JobState, TriggerRequest, TriggerResponse
from cloud.services import training
from wafercore.web import error_responses

MAX_LIST_LIMIT = 200
MAX_LOG_LINES = 2000
_BODY = (408, 413)
_ITEM = (404,)


def training_router(resources: Resources, auth: TokenAuth) -> APIRouter:
    """The training routes, on the resources of the running app."""
    router = APIRouter(
        prefix="/training", tags=["training"], responses=error_responses((401, 403, 422, 503))
    )
    Viewer = Annotated[Principal, Depends(auth.require("viewer"))]  # noqa: N806
    Engineer = Annotated[Principal, Depends(auth.require("ml-engineer"))]  # noqa: N806

    @router.post(
        "/trigger",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=TriggerResponse,
        responses=error_responses(_BODY),
    )
    def trigger(caller: Engineer, body: TriggerRequest, response: Response) -> TriggerResponse:
        """Queue a retraining job on a named config, with overrides; follow it by its id.

        An unknown config or a bad override is 422 naming it (``config_name``,
        ``overrides.<path>``).
        """
        job = training.trigger(
            resources.database(),
            resources.job_dispatcher(),
            resources.settings,
            config_name=body.config_name,
            overrides=body.overrides,
            reason=body.reason,
            requested_by=caller.user,
        )
        response.headers["Location"] = f"/training/jobs/{job.id}"
        return TriggerResponse.model_validate({"job_id": job.id, "state": job.state})

    @router.get("/jobs", response_model=list[JobOut])
    def list_jobs(
        _: Viewer,
        state: JobState | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 50,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> list[JobOut]:
        """Jobs, newest first, optionally in one state."""
        jobs = training.list_jobs(resources.database(), state=state, limit=limit, offset=offset)
        return [JobOut.model_validate(job) for job in jobs]

    @router.get("/jobs/{job_id}", response_model=JobDetailOut, responses=error_responses(_ITEM))
    def get_job(
        _: Viewer,
        job_id: uuid.UUID,
        log_limit: Annotated[int, Query(ge=0, le=MAX_LOG_LINES)] = 200,
    ) -> JobDetailOut:
        """A job: its steps, progress, newest log lines and the gate's verdict."""
        detail = training.get_job(resources.database(), str(job_id), log_limit=log_limit)
        return JobDetailOut.model_validate(detail)

    @router.post(
        "/jobs/{job_id}/cancel",
        response_model=JobOut,
        responses=error_responses((*_ITEM, 409)),
    )
    def cancel(caller: Engineer, job_id: uuid.UUID) -> JobOut:
        """Ask a job to stop: its running step stops at its next check, no further step runs.

        A job that has finished is 409.
        """
        job = training.cancel(
            resources.database(),
            str(job_id),
            requested_by=caller.user,
            settings=resources.settings,
        )
        return JobOut.model_validate(job)

    return router
