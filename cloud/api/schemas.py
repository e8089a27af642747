"""Request and response bodies of the cloud API (pydantic), converted from the services' records.

Field names are the records' own (`cloud.storage.jobs.Job`, `cloud.registry.registry
.ModelVersion`, `cloud.storage.history.DeploymentEvent`), so a record is not renamed on its way
out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from cloud.registry.provenance import SAFE_VERSION
from wafercore.validation import MAX_ID_CHARS, valid_id

JobState = Literal["queued", "running", "succeeded", "rejected", "failed", "cancelled"]
AliasName = Literal["champion", "candidate", "previous"]
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(valid_id)]
Reason = Annotated[
    str, Field(min_length=1, max_length=2000, description="Why, for the history and the log.")
]
ModelVersionName = Annotated[
    str, Field(pattern=SAFE_VERSION.pattern, description="A model version, e.g. cnn-v2.0.0.")
]
MAX_OVERRIDES = 64
"""Settings a trigger may override at most (each a dotted path into the config)."""


class _Record(BaseModel):
    """A response read from a record's attributes."""

    model_config = ConfigDict(from_attributes=True)


class TriggerRequest(BaseModel):
    """A retraining job to start."""

    model_config = ConfigDict(extra="forbid")

    config_name: Id = Field(description="A config of the server's `configs/` folder, by name.")
    overrides: dict[Annotated[str, Field(min_length=1, max_length=200)], Any] = Field(
        default_factory=dict,
        max_length=MAX_OVERRIDES,
        description="Config values to change, by dotted path: {'train.epochs': 1}.",
    )
    reason: Reason


class TriggerResponse(BaseModel):
    """The job just queued; follow it at ``GET /training/jobs/{job_id}``."""

    job_id: str
    state: JobState


class JobOut(_Record):
    """A retraining job: what was asked, by whom, and where it stands."""

    id: str
    config_name: str
    overrides: dict[str, Any]
    reason: str
    requested_by: str
    state: JobState
    current_step: str | None
    progress: float = Field(description="0 to 1, over every step.")
    cancel_requested: bool
    verdict: dict[str, Any] | None = Field(description="The promotion gate's verdict.")
    model_version: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class JobStepOut(_Record):
    """One step of a job (collect, validate, train, evaluate, export, latency, sign, register)."""

    name: str
    state: str
    attempts: int
    output: dict[str, Any] | None
    started_at: datetime | None
    finished_at: datetime | None


class JobLogLineOut(_Record):
    """A line of a job's log."""

    at: datetime
    step: str | None
    level: str
    message: str


class JobDetailOut(_Record):
    """A job with its steps, in order, and the newest lines of its log, oldest first."""

    job: JobOut
    steps: list[JobStepOut]
    logs: list[JobLogLineOut]


class ModelVersionOut(_Record):
    """A registered model version."""

    version: str = Field(description="The model's own version (model.json), e.g. cnn-v2.0.0.")
    mlflow_version: int = Field(description="MLflow's version number of the registered model.")
    aliases: list[str]
    tags: dict[str, str] = Field(description="Data provenance and the gate's verdict.")
    metrics: dict[str, float]
    artifact_sha256: str
    created_at: datetime


class DeploymentEventOut(_Record):
    """Who moved which alias, or asked which version onto which fab and nodes, when and why."""

    id: int
    at: datetime
    actor: str
    action: str = Field(description="registered, alias_set, alias_removed or deploy_requested.")
    model_version: str
    alias: str | None
    previous_version: str | None
    fab_id: str | None
    nodes: list[str] | None
    reason: str


class ModelDetailOut(BaseModel):
    """A model version with its evaluation report and its deployment history, oldest first."""

    model: ModelVersionOut
    report: dict[str, Any] | None
    history: list[DeploymentEventOut]


class AliasRequest(BaseModel):
    """Point an alias at this version."""

    model_config = ConfigDict(extra="forbid")

    alias: AliasName = Field(
        description="candidate: ml-engineer or admin; champion, previous: admin only."
    )
    reason: Reason


class DeployRequest(BaseModel):
    """Roll a version out in a fab: a canary on some of its nodes, then production."""

    model_config = ConfigDict(extra="forbid")

    version: ModelVersionName
    fab_id: Id
    nodes: list[Id] = Field(
        default_factory=list,
        max_length=1000,
        description="The canary arm's nodes; empty: the API picks them.",
    )
    reason: Reason


RolloutStage = Literal["canary", "watching", "completed", "rolled_back", "stopped"]


class RolloutOut(_Record):
    """A rollout: where it stands, its arms, and its latest decision with the statistics."""

    id: str
    fab_id: str
    model_version: str
    baseline_version: str = Field(
        description="What the control arm runs; what a rollback restores."
    )
    stage: RolloutStage
    canary_nodes: list[str]
    control_nodes: list[str]
    requested_by: str
    reason: str
    started_at: datetime
    canary_ends_at: datetime
    promoted_at: datetime | None
    watch_until: datetime | None
    finished_at: datetime | None
    decision: dict[str, Any] | None = Field(
        description="Latest decision: action (promote, rollback, wait), reason, statistics."
    )


class StopRequest(BaseModel):
    """An emergency stop."""

    model_config = ConfigDict(extra="forbid")

    reason: Reason
