"""Rollouts: start a canary in a fab, decide it from the A/B statistics, promote or roll back.

A rollout begins as a canary: the candidate on ``settings.rollouts.canary_nodes`` nodes (named,
or picked at random among the nodes the fab has reported), the baseline on the others, the
control arm. `evaluate` (beat, every ``evaluate_every_s``) gathers both arms' figures from what
the fab synced and applies `cloud.analytics.ab_test.decide`: promote (every node moves to the
version, which becomes champion, watched for ``watch_s``), roll back at once on a broken
guardrail, or wait until the trial window ends and then roll back. While watched, the brief's
automatic rollback applies. `stop` is the emergency stop. Every transition is an event of the
deployment history; the fabs follow through their deployment plan (`cloud.services.sync`).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloud.analytics.ab_test import ArmData, Decision, decide, watch_decision
from cloud.analytics.reviews import reviewed_pairs
from cloud.errors import Conflict, NotFound
from cloud.registry.registry import ModelRegistry
from cloud.settings import RolloutSettings
from cloud.storage import aggregates, history, labels, rollouts
from cloud.storage.db import Database
from cloud.storage.rollouts import Rollout
from wafercore.errors import InvalidInput
from wafercore.validation import check_id

CHAMPION = "champion"
_ACTOR = "rollout"


def _baseline(db: Database, registry: ModelRegistry, fab_id: str) -> str:
    """What the fab runs now: its last rollout's outcome, else the champion."""
    with db.session() as session:
        last = rollouts.latest_rollout(session, fab_id=fab_id)
    if last is not None and last.stage == rollouts.COMPLETED:
        return last.model_version
    if last is not None and last.stage in (rollouts.ROLLED_BACK, rollouts.STOPPED):
        return last.baseline_version
    champion = registry.by_alias(CHAMPION)
    if champion is None:
        raise Conflict("no champion is registered: there is nothing to compare a canary with")
    return champion.version


def _canary_nodes(known: Sequence[str], named: Sequence[str], count: int) -> list[str]:
    """The canary arm: the named nodes, or ``count`` picked at random, always leaving at least
    one node of the fab as the control arm (a two-node fab gets a one-node canary)."""
    for i, node in enumerate(named):
        check_id(node, f"nodes[{i}]")
        if node not in known:
            raise InvalidInput(f"nodes[{i}]", f"{node!r} is not a node this fab has reported")
    if len(set(named)) != len(named):
        raise InvalidInput("nodes", "names a node twice")
    picked = min(count, len(known) - 1)
    chosen = list(named) or random.SystemRandom().sample(list(known), max(picked, 0))
    if not chosen or len(chosen) >= len(known):
        raise InvalidInput(
            "nodes", f"the fab has {len(known)} known nodes; a canary needs a control node too"
        )
    return sorted(chosen)


def start(
    db: Database,
    registry: ModelRegistry,
    settings: RolloutSettings,
    *,
    fab_id: str,
    version: str,
    nodes: Sequence[str],
    actor: str,
    reason: str,
    now: datetime,
) -> Rollout:
    """Start a canary of ``version`` in ``fab_id`` (``nodes``: the canary arm, or empty).

    Raises:
        InvalidInput: a bad fab or node id, an unknown node, too few nodes for two arms.
        NotFound: no such version.
        Conflict: no champion, the fab already runs ``version``, or has an active rollout.
    """
    check_id(fab_id, "fab_id")
    registry.get(version)  # NotFound when unregistered
    baseline = _baseline(db, registry, fab_id)
    if baseline == version:
        raise Conflict(f"fab {fab_id} already runs {version}")
    with db.session() as session:
        known = aggregates.fab_nodes(session, fab_id=fab_id)
    if not known:
        raise InvalidInput("fab_id", f"fab {fab_id!r} has reported no nodes yet (sync first)")
    canary = _canary_nodes(known, nodes, settings.canary_nodes)
    rollout = Rollout(
        id=str(uuid.uuid4()),
        fab_id=fab_id,
        model_version=version,
        baseline_version=baseline,
        canary_nodes=tuple(canary),
        control_nodes=tuple(n for n in known if n not in canary),
        stage=rollouts.CANARY,
        requested_by=actor,
        reason=reason,
        started_at=now,
        canary_ends_at=now + timedelta(seconds=settings.trial_window_s),
    )
    try:
        with db.session() as session:
            stored = rollouts.add_rollout(session, rollout=rollout)
            _record(session, stored, history.ROLLOUT_STARTED, actor, reason, canary)
    except IntegrityError:
        raise Conflict(f"fab {fab_id} already has a rollout under way") from None
    return stored


def _record(
    session: Session, rollout: Rollout, action: str, actor: str, reason: str, nodes: Sequence[str]
) -> None:
    history.record_event(
        session,
        actor=actor,
        action=action,
        model_version=rollout.model_version,
        previous_version=rollout.baseline_version,
        fab_id=rollout.fab_id,
        nodes=list(nodes),
        reason=f"rollout {rollout.id}: {reason}",
    )


def get(db: Database, rollout_id: str) -> Rollout:
    """A rollout. Raises NotFound."""
    with db.session() as session:
        found = rollouts.get_rollout(session, rollout_id=rollout_id)
    if found is None:
        raise NotFound("rollout", rollout_id)
    return found


def list_all(
    db: Database, *, fab_id: str | None = None, active_only: bool = False
) -> list[Rollout]:
    """Rollouts, newest first."""
    with db.session() as session:
        return rollouts.list_rollouts(session, fab_id=fab_id, active_only=active_only)


def _arm(db: Database, rollout: Rollout, version: str, nodes: Sequence[str]) -> ArmData:
    """One arm's figures since the canary started, from what the fab synced."""
    with db.session() as session:
        reviewed = labels.reviewed_labels(
            session, fab_id=rollout.fab_id, since=rollout.started_at, model_versions=[version]
        )
        days = aggregates.aggregates_since(
            session,
            since=rollout.started_at.date(),
            fab_id=rollout.fab_id,
            model_versions=[version],
        )
    days = [a for a in days if a.node_id in nodes]
    return ArmData(
        version=version,
        pairs=reviewed_pairs(reviewed, canary_only=True),
        wafers_classified=sum(a.wafers_classified for a in days),
        flagged_count=sum(a.flagged_count for a in days),
        latency_p99_ms=max((a.latency_p99_ms for a in days if a.wafers_classified), default=None),
    )


def _accuracy(
    db: Database, fab_id: str, version: str, since: datetime, until: datetime
) -> tuple[int, int]:
    """(confirmed, reviewed) of a version's reviewed wafers in a time range."""
    with db.session() as session:
        reviewed = labels.reviewed_labels(
            session, fab_id=fab_id, since=since, model_versions=[version]
        )
    pairs = reviewed_pairs([r for r in reviewed if r.reviewed_at < until])
    return sum(1 for true, pred in pairs if true == pred), len(pairs)


def evaluate(
    db: Database,
    registry: ModelRegistry,
    settings: RolloutSettings,
    *,
    rollout: Rollout,
    now: datetime,
) -> Rollout:
    """Decide an active rollout now and apply the decision (a finished one is returned as is)."""
    if rollout.stage == rollouts.CANARY:
        canary = _arm(db, rollout, rollout.model_version, rollout.canary_nodes)
        control = _arm(db, rollout, rollout.baseline_version, rollout.control_nodes)
        decision = decide(canary, control, settings, started_at=rollout.started_at, now=now)
        targets = {"promote": rollouts.WATCHING, "rollback": rollouts.ROLLED_BACK}
    elif rollout.stage == rollouts.WATCHING:
        assert rollout.promoted_at is not None  # set with the stage
        new = _accuracy(db, rollout.fab_id, rollout.model_version, rollout.promoted_at, now)
        before = _accuracy(
            db, rollout.fab_id, rollout.baseline_version, rollout.started_at, rollout.promoted_at
        )
        decision = watch_decision(new, before, settings, promoted_at=rollout.promoted_at, now=now)
        targets = {"promote": rollouts.COMPLETED, "rollback": rollouts.ROLLED_BACK}
    else:
        return rollout
    target = targets.get(decision.action)
    if target is None:
        with db.session() as session:
            rollouts.record_decision(
                session, rollout_id=rollout.id, decision=decision.to_dict(), now=now
            )
        return get(db, rollout.id)
    return _move(db, registry, settings, rollout, target, decision, actor=_ACTOR, now=now)


_EVENTS = {
    rollouts.WATCHING: history.ROLLOUT_PROMOTED,
    rollouts.COMPLETED: history.ROLLOUT_COMPLETED,
    rollouts.ROLLED_BACK: history.ROLLOUT_ROLLED_BACK,
    rollouts.STOPPED: history.ROLLOUT_STOPPED,
}


def _move(
    db: Database,
    registry: ModelRegistry,
    settings: RolloutSettings,
    rollout: Rollout,
    target: str,
    decision: Decision,
    *,
    actor: str,
    now: datetime,
) -> Rollout:
    """Apply a transition (if nobody else did first), its history event and alias moves."""
    watch_until = now + timedelta(seconds=settings.watch_s) if target == rollouts.WATCHING else None
    with db.session() as session:
        moved = rollouts.transition(
            session,
            rollout_id=rollout.id,
            from_stages=(rollout.stage,),
            to_stage=target,
            decision=decision.to_dict(),
            now=now,
            watch_until=watch_until,
        )
        if moved is None:  # another decider got there first
            return get(db, rollout.id)
        nodes = moved.canary_nodes + moved.control_nodes
        _record(session, moved, _EVENTS[target], actor, decision.reason, nodes)
    reason = f"rollout {rollout.id} in {rollout.fab_id}: {decision.reason}"
    if target == rollouts.WATCHING:
        registry.set_alias(rollout.model_version, CHAMPION, actor=actor, reason=reason)
    elif rollout.stage == rollouts.WATCHING and target in (rollouts.ROLLED_BACK, rollouts.STOPPED):
        champion = registry.by_alias(CHAMPION)
        if champion is not None and champion.version == rollout.model_version:
            registry.set_alias(rollout.baseline_version, CHAMPION, actor=actor, reason=reason)
    return moved


def stop(
    db: Database,
    registry: ModelRegistry,
    settings: RolloutSettings,
    *,
    rollout_id: str,
    actor: str,
    reason: str,
    now: datetime,
) -> Rollout:
    """Emergency stop: every node of the fab back to the baseline.

    Raises:
        NotFound: no such rollout.
        Conflict: it has already finished.
    """
    rollout = get(db, rollout_id)
    if not rollout.active:
        raise Conflict(f"rollout {rollout_id} has already finished ({rollout.stage})")
    decision = Decision("rollback", f"emergency stop by {actor}: {reason}")
    moved = _move(db, registry, settings, rollout, rollouts.STOPPED, decision, actor=actor, now=now)
    if moved.stage != rollouts.STOPPED:
        raise Conflict(f"rollout {rollout_id} finished ({moved.stage}) before the stop")
    return moved


def evaluate_active(
    db: Database, registry: ModelRegistry, settings: RolloutSettings, *, now: datetime
) -> list[Rollout]:
    """Decide every active rollout (the beat task); returns them after their decisions."""
    return [
        evaluate(db, registry, settings, rollout=rollout, now=now)
        for rollout in list_all(db, active_only=True)
    ]
