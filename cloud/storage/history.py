"""Deployment history: who moved which alias, or asked which version onto which fab, and why.

MLflow keeps only the current holder of an alias (its issue #2169), so every move is recorded
here, in the cloud database, as an append-only event. Only this module touches
`DeploymentEventRow`; callers get frozen `DeploymentEvent` records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session

from cloud.storage.tables import DeploymentEventRow, utc

REGISTERED = "registered"
"""A model version entered the registry."""
ALIAS_SET = "alias_set"
"""An alias now points at the version (``previous_version`` held it before)."""
ALIAS_REMOVED = "alias_removed"
"""The version no longer holds the alias, and nobody took it over."""
DEPLOY_REQUESTED = "deploy_requested"
"""Someone asked for the version on a fab's nodes (carried out by the rollout)."""
ROLLOUT_STARTED = "rollout_started"
"""A canary began in a fab (``nodes``: the canary arm)."""
ROLLOUT_PROMOTED = "rollout_promoted"
"""The canary won: every node of the fab moves to the version."""
ROLLOUT_COMPLETED = "rollout_completed"
"""The version stayed through its watch window."""
ROLLOUT_ROLLED_BACK = "rollout_rolled_back"
"""A guardrail broke, the trial ended undecided, or the watch failed: back to the baseline."""
ROLLOUT_STOPPED = "rollout_stopped"
"""An emergency stop: every node back to the baseline."""
ACTIONS = (
    REGISTERED,
    ALIAS_SET,
    ALIAS_REMOVED,
    DEPLOY_REQUESTED,
    ROLLOUT_STARTED,
    ROLLOUT_PROMOTED,
    ROLLOUT_COMPLETED,
    ROLLOUT_ROLLED_BACK,
    ROLLOUT_STOPPED,
)


@dataclass(frozen=True)
class DeploymentEvent:
    """One entry of the deployment history.

    Attributes:
        id: increasing with the order of recording.
        at: when (aware, UTC).
        actor: who (``cli:alice``, an API token's user, ``pipeline:<job id>``).
        action: one of `ACTIONS`.
        model_version: the version it concerns (``cnn-v2.0.0``).
        alias: the alias set or removed (``champion``), for alias events.
        previous_version: who held the alias before, for ``alias_set``.
        fab_id: the fab, for ``deploy_requested``.
        nodes: the nodes asked for (empty: every node of the fab), for ``deploy_requested``.
        reason: why, in the actor's words.
    """

    id: int
    at: datetime
    actor: str
    action: str
    model_version: str
    alias: str | None
    previous_version: str | None
    fab_id: str | None
    nodes: tuple[str, ...] | None
    reason: str


def _to_event(row: DeploymentEventRow) -> DeploymentEvent:
    at = utc(row.at)
    assert at is not None  # the column is NOT NULL
    return DeploymentEvent(
        id=row.id,
        at=at,
        actor=row.actor,
        action=row.action,
        model_version=row.model_version,
        alias=row.alias,
        previous_version=row.previous_version,
        fab_id=row.fab_id,
        nodes=tuple(row.nodes) if row.nodes is not None else None,
        reason=row.reason,
    )


def record_event(
    session: Session,
    *,
    actor: str,
    action: str,
    model_version: str,
    reason: str,
    alias: str | None = None,
    previous_version: str | None = None,
    fab_id: str | None = None,
    nodes: Sequence[str] | None = None,
) -> DeploymentEvent:
    """Append an event (committed with the session's transaction).

    Raises:
        ValueError: ``action`` is not one of `ACTIONS`.
    """
    if action not in ACTIONS:
        raise ValueError(f"action {action!r} is not one of {list(ACTIONS)}")
    row = DeploymentEventRow(
        actor=actor,
        action=action,
        model_version=model_version,
        alias=alias,
        previous_version=previous_version,
        fab_id=fab_id,
        nodes=list(nodes) if nodes is not None else None,
        reason=reason,
    )
    session.add(row)
    session.flush()  # assigns the id and the default time
    return _to_event(row)


def list_events(
    session: Session, *, model_version: str | None = None, limit: int | None = None
) -> list[DeploymentEvent]:
    """Events in the order they were recorded, oldest first.

    Args:
        session: an open session.
        model_version: only events about this version: those naming it, and alias moves that
            took an alias away from it (``previous_version``). None: every event.
        limit: at most this many, the newest ones (still oldest first).
    """
    query = select(DeploymentEventRow)
    if model_version is not None:
        query = query.where(
            or_(
                DeploymentEventRow.model_version == model_version,
                DeploymentEventRow.previous_version == model_version,
            )
        )
    if limit is not None:
        newest = query.order_by(DeploymentEventRow.id.desc()).limit(limit)
        return [_to_event(row) for row in reversed(session.scalars(newest).all())]
    return [_to_event(row) for row in session.scalars(query.order_by(DeploymentEventRow.id))]


def has_event(session: Session, *, model_version: str, action: str) -> bool:
    """Whether ``model_version`` has an event of ``action`` (``registered``: fully registered)."""
    query = select(
        exists().where(
            DeploymentEventRow.model_version == model_version,
            DeploymentEventRow.action == action,
        )
    )
    return bool(session.scalar(query))
