"""Rollouts on a migrated SQLite cloud database: one active per fab, conditional transitions,
decisions kept, listing newest first."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import IntegrityError

from cloud.storage import rollouts
from cloud.storage.db import Database
from cloud.storage.rollouts import Rollout

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def new_rollout(rollout_id: str, fab: str = "fab-1", at: datetime = T0) -> Rollout:
    """A canary of v2 over baseline v1 on node-a, node-c the control arm, started at ``at``."""
    return Rollout(
        id=rollout_id,
        fab_id=fab,
        model_version="v2",
        baseline_version="v1",
        canary_nodes=("node-a",),
        control_nodes=("node-b", "node-c"),
        stage=rollouts.CANARY,
        requested_by="adm-cy",
        reason="new model",
        started_at=at,
        canary_ends_at=at + timedelta(days=7),
    )


def add(db: Database, rollout: Rollout) -> Rollout:
    with db.session() as session:
        return rollouts.add_rollout(session, rollout=rollout)


def test_a_rollout_comes_back_as_stored(db: Database) -> None:
    stored = add(db, new_rollout("r-1"))
    assert stored == new_rollout("r-1")  # updated_at does not compare
    assert stored.active and stored.decision is None and stored.finished_at is None
    with db.session() as session:
        read = rollouts.get_rollout(session, rollout_id="r-1")
        assert rollouts.get_rollout(session, rollout_id="r-404") is None
    assert read == stored
    assert read is not None and read.started_at == T0 and read.started_at.tzinfo is not None
    assert read.canary_nodes == ("node-a",) and read.control_nodes == ("node-b", "node-c")
    with pytest.raises(dataclasses.FrozenInstanceError):
        read.stage = "stopped"  # type: ignore[misc]


def test_a_fab_has_at_most_one_active_rollout(db: Database) -> None:
    add(db, new_rollout("r-1"))
    with pytest.raises(IntegrityError), db.session() as session:
        rollouts.add_rollout(session, rollout=new_rollout("r-2"))
    add(db, new_rollout("r-3", fab="fab-2"))  # another fab is free
    with db.session() as session:
        assert [r.id for r in rollouts.list_rollouts(session)] == ["r-1", "r-3"]
        assert rollouts.get_rollout(session, rollout_id="r-2") is None
    # Once the first finishes, the fab may start another.
    with db.session() as session:
        done = rollouts.transition(
            session,
            rollout_id="r-1",
            from_stages=rollouts.ACTIVE,
            to_stage=rollouts.ROLLED_BACK,
            decision={"action": "rollback", "reason": "guardrail"},
            now=T0 + timedelta(hours=1),
        )
    assert done is not None and not done.active
    add(db, new_rollout("r-2", at=T0 + timedelta(hours=2)))
    with db.session() as session:
        assert [r.id for r in rollouts.list_rollouts(session, fab_id="fab-1")] == ["r-2", "r-1"]


def test_a_transition_moves_only_from_the_stages_named(db: Database) -> None:
    add(db, new_rollout("r-1"))
    promoted_at = T0 + timedelta(hours=3)
    watch_until = promoted_at + timedelta(hours=48)
    decision = {"action": "promote", "reason": "better", "statistics": {"n": 10}}
    with db.session() as session:
        moved = rollouts.transition(
            session,
            rollout_id="r-1",
            from_stages=(rollouts.CANARY,),
            to_stage=rollouts.WATCHING,
            decision=decision,
            now=promoted_at,
            watch_until=watch_until,
        )
    assert moved is not None
    assert (moved.stage, moved.decision, moved.promoted_at, moved.watch_until) == (
        "watching",
        decision,
        promoted_at,
        watch_until,
    )
    assert moved.active and moved.finished_at is None
    # A second decider that still thinks it is a canary loses.
    with db.session() as session:
        assert (
            rollouts.transition(
                session,
                rollout_id="r-1",
                from_stages=(rollouts.CANARY,),
                to_stage=rollouts.ROLLED_BACK,
                decision={"action": "rollback"},
                now=promoted_at,
            )
            is None
        )
        assert (
            rollouts.transition(
                session,
                rollout_id="r-404",
                from_stages=rollouts.ACTIVE,
                to_stage=rollouts.STOPPED,
                decision=None,
                now=promoted_at,
            )
            is None
        )
    finished_at = promoted_at + timedelta(hours=50)
    with db.session() as session:
        done = rollouts.transition(
            session,
            rollout_id="r-1",
            from_stages=(rollouts.WATCHING,),
            to_stage=rollouts.COMPLETED,
            decision={"action": "promote", "reason": "watch over"},
            now=finished_at,
        )
    assert done is not None
    assert (done.stage, done.finished_at, done.promoted_at) == (
        "completed",
        finished_at,
        promoted_at,
    )
    assert not done.active
    with db.session() as session:
        assert rollouts.get_rollout(session, rollout_id="r-1") == done


def test_a_decision_is_recorded_without_moving_the_rollout(db: Database) -> None:
    add(db, new_rollout("r-1"))
    decision = {"action": "wait", "reason": "waiting for reviews", "statistics": {}}
    with db.session() as session:
        rollouts.record_decision(
            session, rollout_id="r-1", decision=decision, now=T0 + timedelta(minutes=5)
        )
    with db.session() as session:
        read = rollouts.get_rollout(session, rollout_id="r-1")
    assert read is not None and read.stage == "canary" and read.decision == decision


def test_rollouts_are_listed_newest_first_by_fab_and_activity(db: Database) -> None:
    add(db, new_rollout("r-old", at=T0 - timedelta(days=10)))
    with db.session() as session:
        rollouts.transition(
            session,
            rollout_id="r-old",
            from_stages=rollouts.ACTIVE,
            to_stage=rollouts.STOPPED,
            decision=None,
            now=T0 - timedelta(days=9),
        )
    add(db, new_rollout("r-new", at=T0))
    add(db, new_rollout("r-other", fab="fab-2", at=T0 - timedelta(days=1)))
    with db.session() as session:
        assert [r.id for r in rollouts.list_rollouts(session)] == ["r-new", "r-other", "r-old"]
        assert [r.id for r in rollouts.list_rollouts(session, fab_id="fab-1")] == [
            "r-new",
            "r-old",
        ]
        assert [r.id for r in rollouts.list_rollouts(session, active_only=True)] == [
            "r-new",
            "r-other",
        ]
        assert [
            r.id for r in rollouts.list_rollouts(session, fab_id="fab-1", active_only=True)
        ] == ["r-new"]
        assert [r.id for r in rollouts.list_rollouts(session, limit=1)] == ["r-new"]
        assert rollouts.list_rollouts(session, fab_id="fab-3") == []
        latest = rollouts.latest_rollout(session, fab_id="fab-1")
        assert latest is not None and latest.id == "r-new"
        assert rollouts.latest_rollout(session, fab_id="fab-3") is None
