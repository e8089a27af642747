"""Rollouts (table ``rollouts``): a version's way through canary to production in one fab.

Stages: ``canary`` (the candidate on the canary nodes, the baseline on the rest, the control
arm), ``watching`` (promoted: every node on the new version, watched for the automatic rollback
window), ``completed``, ``rolled_back`` and ``stopped``. The first two are *active*: a fab has at
most one active rollout (the unique ``active_fab`` column says so to the database itself).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cloud.storage.tables import RolloutRow, utc, utcnow

CANARY, WATCHING, COMPLETED, ROLLED_BACK, STOPPED = (
    "canary",
    "watching",
    "completed",
    "rolled_back",
    "stopped",
)
ACTIVE = (CANARY, WATCHING)
STAGES = (CANARY, WATCHING, COMPLETED, ROLLED_BACK, STOPPED)


@dataclass(frozen=True)
class Rollout:
    """One rollout as stored.

    Attributes:
        id: its id (a UUID).
        fab_id: the fab.
        model_version: the version being rolled out.
        baseline_version: the version the fab ran before (the control arm; what a rollback
            restores).
        canary_nodes: the canary arm's nodes.
        control_nodes: the fab's other nodes when it started.
        stage: one of `STAGES`.
        requested_by: who started it.
        reason: why it was started.
        decision: the latest decision (action, reason, statistics), or None before the first.
        started_at, canary_ends_at, promoted_at, watch_until, finished_at: its times (UTC).
    """

    id: str
    fab_id: str
    model_version: str
    baseline_version: str
    canary_nodes: tuple[str, ...]
    control_nodes: tuple[str, ...]
    stage: str
    requested_by: str
    reason: str
    started_at: datetime
    canary_ends_at: datetime
    decision: dict[str, Any] | None = None
    promoted_at: datetime | None = None
    watch_until: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = field(default=None, compare=False)

    @property
    def active(self) -> bool:
        """Whether it is still under way."""
        return self.stage in ACTIVE


def _record(row: RolloutRow) -> Rollout:
    return Rollout(
        id=row.id,
        fab_id=row.fab_id,
        model_version=row.model_version,
        baseline_version=row.baseline_version,
        canary_nodes=tuple(row.canary_nodes),
        control_nodes=tuple(row.control_nodes),
        stage=row.stage,
        requested_by=row.requested_by,
        reason=row.reason,
        decision=row.decision,
        started_at=cast(datetime, utc(row.started_at)),
        canary_ends_at=cast(datetime, utc(row.canary_ends_at)),
        promoted_at=utc(row.promoted_at),
        watch_until=utc(row.watch_until),
        finished_at=utc(row.finished_at),
        updated_at=utc(row.updated_at),
    )


def add_rollout(session: Session, *, rollout: Rollout) -> Rollout:
    """Store a new rollout; IntegrityError when its fab already has an active one."""
    row = RolloutRow(
        id=rollout.id,
        fab_id=rollout.fab_id,
        active_fab=rollout.fab_id if rollout.active else None,
        model_version=rollout.model_version,
        baseline_version=rollout.baseline_version,
        canary_nodes=list(rollout.canary_nodes),
        control_nodes=list(rollout.control_nodes),
        stage=rollout.stage,
        requested_by=rollout.requested_by,
        reason=rollout.reason,
        decision=rollout.decision,
        started_at=rollout.started_at,
        canary_ends_at=rollout.canary_ends_at,
        updated_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return _record(row)


def get_rollout(session: Session, *, rollout_id: str) -> Rollout | None:
    """The rollout, or None."""
    row = session.get(RolloutRow, rollout_id)
    return _record(row) if row is not None else None


def list_rollouts(
    session: Session, *, fab_id: str | None = None, active_only: bool = False, limit: int = 100
) -> list[Rollout]:
    """Rollouts, newest first (one fab's, only active ones, when asked)."""
    query = select(RolloutRow)
    if fab_id is not None:
        query = query.where(RolloutRow.fab_id == fab_id)
    if active_only:
        query = query.where(RolloutRow.stage.in_(ACTIVE))
    query = query.order_by(RolloutRow.started_at.desc(), RolloutRow.id).limit(limit)
    return [_record(row) for row in session.scalars(query)]


def latest_rollout(session: Session, *, fab_id: str) -> Rollout | None:
    """The fab's newest rollout, or None."""
    found = list_rollouts(session, fab_id=fab_id, limit=1)
    return found[0] if found else None


def transition(
    session: Session,
    *,
    rollout_id: str,
    from_stages: tuple[str, ...],
    to_stage: str,
    decision: dict[str, Any] | None,
    now: datetime,
    watch_until: datetime | None = None,
) -> Rollout | None:
    """Move a rollout from one of ``from_stages`` to ``to_stage``, recording the decision.

    A conditional UPDATE: of two deciders racing (beat and an emergency stop), one wins and the
    other gets None.

    Returns:
        The rollout after the move, or None when it was not in ``from_stages``.
    """
    values: dict[str, Any] = {"stage": to_stage, "decision": decision, "updated_at": now}
    if to_stage == WATCHING:
        values.update(promoted_at=now, watch_until=watch_until)
    if to_stage not in ACTIVE:
        values.update(finished_at=now, active_fab=None)
    result = session.execute(
        update(RolloutRow)
        .where(RolloutRow.id == rollout_id, RolloutRow.stage.in_(from_stages))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return get_rollout(session, rollout_id=rollout_id)


def record_decision(
    session: Session, *, rollout_id: str, decision: dict[str, Any], now: datetime
) -> None:
    """Keep the latest decision of a rollout that stays where it is (``wait``)."""
    session.execute(
        update(RolloutRow)
        .where(RolloutRow.id == rollout_id)
        .values(decision=decision, updated_at=now)
        .execution_options(synchronize_session=False)
    )
