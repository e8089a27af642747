"""Rollouts through the service on PostgreSQL and the real `mlflow server`: the canary's
decisions (promote, guardrail rollbacks, window end, wait), the watch after a promotion, the
emergency stop, refused starts, and the deployment history of every transition.

The situations are made by writing what a fab would sync (daily aggregates, reviewed labels)
straight through the storage repositories; the services take ``now``, so windows are crossed
by passing a later time, never by sleeping.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from cloud.errors import Conflict, NotFound
from cloud.registry.importer import import_model_folder
from cloud.registry.registry import ModelRegistry
from cloud.services import rollouts as service
from cloud.settings import CloudSettings, RolloutSettings
from cloud.storage import aggregates, history, labels
from cloud.storage.aggregates import DailyAggregate
from cloud.storage.db import Database
from cloud.storage.labels import ReviewedLabel
from cloud.storage.rollouts import Rollout
from wafercore.classes import DefectClass
from wafercore.errors import InvalidInput
from wafercore.shipped import shipped_model_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHAMPION, CANDIDATE = "cnn-v1.0.0", "cnn-v1.1.0"
FAB = "fab-1"
NODES = ("node-a", "node-b", "node-c", "node-d")
T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
SETTINGS = RolloutSettings(
    canary_nodes=2,
    trial_window_s=3600.0,
    min_reviewed_per_arm=30,
    min_class_support=5,
    bootstrap_resamples=200,
    watch_s=1800.0,
    min_reviewed_watch=10,
)
CANARY_SAMPLE = 4
CLASSES = [c for c in DefectClass]


@dataclass
class World:
    """The test's database and registry: the champion and a candidate registered."""

    db: Database
    registry: ModelRegistry

    def report(
        self,
        version: str,
        nodes: Sequence[str],
        *,
        fab: str = FAB,
        wafers: int = 1000,
        flagged: int = 50,
        p99: float = 20.0,
        day: datetime = T0,
    ) -> None:
        """Daily aggregates of ``nodes`` running ``version``, as the fab uploads them."""
        counts = [wafers // 9] * 9
        counts[0] += wafers - sum(counts)
        rows = [
            DailyAggregate(
                fab_id=fab,
                node_id=node,
                day=day.date(),
                model_version=version,
                class_counts=tuple(counts),
                wafers_classified=wafers,
                flagged_count=flagged,
                reviewed_count=0,
                reviewed_correct_count=0,
                latency_p50_ms=4.0,
                latency_p90_ms=8.0,
                latency_p99_ms=p99,
                avg_recursion_steps=3.0,
            )
            for node in nodes
        ]
        with self.db.session() as session:
            aggregates.upsert_aggregates(session, aggregates=rows, now=day)

    def review(
        self,
        version: str,
        n: int,
        correct: int,
        *,
        at: datetime,
        fab: str = FAB,
        reason: int = CANARY_SAMPLE,
        true_class: DefectClass | None = None,
    ) -> None:
        """``n`` reviewed labels of ``version``'s predictions, the first ``correct`` confirmed,
        the others predicted as the next class; true classes cycle (or are ``true_class``)."""
        rows = []
        for i in range(n):
            true = true_class if true_class is not None else CLASSES[i % len(CLASSES)]
            predicted = true if i < correct else CLASSES[(true + 1) % len(CLASSES)]
            rows.append(
                ReviewedLabel(
                    fab_id=fab,
                    wafer_key=uuid.uuid4().hex,
                    lot_key="lot",
                    reviewer_key="reviewer",
                    label=true.display_name,
                    reviewed_at=at + timedelta(seconds=i),
                    predicted_label=predicted.display_name,
                    model_version=version,
                    confidence=0.9,
                    review_reason=reason,
                )
            )
        with self.db.session() as session:
            labels.add_reviewed_labels(session, labels=rows, now=at)

    def start(self, nodes: Sequence[str] = ("node-a", "node-b"), **kw: object) -> Rollout:
        args: dict[str, object] = {
            "fab_id": FAB,
            "version": CANDIDATE,
            "nodes": nodes,
            "actor": "adm-cy",
            "reason": "new model",
            "now": T0,
        }
        args.update(kw)
        return service.start(self.db, self.registry, SETTINGS, **args)  # type: ignore[arg-type]

    def evaluate(self, rollout: Rollout, now: datetime) -> Rollout:
        current = service.get(self.db, rollout.id)
        return service.evaluate(self.db, self.registry, SETTINGS, rollout=current, now=now)

    def champion(self) -> str | None:
        held = self.registry.by_alias("champion")
        return held.version if held is not None else None

    def events(self, rollout: Rollout) -> list[history.DeploymentEvent]:
        """The history events of this rollout, in order."""
        with self.db.session() as session:
            every = history.list_events(session)
        return [e for e in every if e.reason.startswith(f"rollout {rollout.id}:")]


@pytest.fixture
def world(cloud_settings: CloudSettings) -> Iterator[World]:
    """The champion and the candidate registered; fab-1 has reported its four nodes."""
    db = Database(cloud_settings.db_url, cloud_settings.db_schema)
    registry = ModelRegistry(cloud_settings, db)
    for version, alias in ((CHAMPION, "champion"), (CANDIDATE, None)):
        import_model_folder(
            registry,
            cloud_settings,
            shipped_model_dir(version),
            actor="cli:importer",
            reason="imported for the test",
            alias=alias,
            golden=16,
        )
    built = World(db, registry)
    built.report(CHAMPION, NODES)
    yield built
    db.dispose()


def canary_wins(world: World) -> Rollout:
    """A started canary whose arm is clearly better on enough canary samples, promoted."""
    rollout = world.start()
    world.report(CANDIDATE, rollout.canary_nodes)
    world.review(CANDIDATE, 36, 36, at=T0 + timedelta(minutes=1))
    world.review(CHAMPION, 36, 18, at=T0 + timedelta(minutes=2))
    return world.evaluate(rollout, T0 + timedelta(minutes=10))


def test_a_canary_starts_on_the_named_nodes_with_the_others_as_control(world: World) -> None:
    rollout = world.start(nodes=["node-c", "node-a"])
    assert rollout.stage == "canary" and rollout.active
    assert (rollout.model_version, rollout.baseline_version) == (CANDIDATE, CHAMPION)
    assert rollout.canary_nodes == ("node-a", "node-c")
    assert rollout.control_nodes == ("node-b", "node-d")
    assert rollout.started_at == T0
    assert rollout.canary_ends_at == T0 + timedelta(seconds=SETTINGS.trial_window_s)
    assert service.get(world.db, rollout.id) == rollout
    assert service.list_all(world.db) == [rollout]
    assert service.list_all(world.db, fab_id="fab-2") == []
    (started,) = world.events(rollout)
    assert (started.action, started.actor, started.model_version) == (
        "rollout_started",
        "adm-cy",
        CANDIDATE,
    )
    assert (started.fab_id, started.nodes, started.previous_version) == (
        FAB,
        ("node-a", "node-c"),
        CHAMPION,
    )
    assert world.champion() == CHAMPION  # a canary moves no alias


def test_unnamed_canary_nodes_are_picked_among_the_fabs_nodes(world: World) -> None:
    rollout = world.start(nodes=[])
    assert len(rollout.canary_nodes) == SETTINGS.canary_nodes
    assert set(rollout.canary_nodes) | set(rollout.control_nodes) == set(NODES)
    assert not set(rollout.canary_nodes) & set(rollout.control_nodes)


def test_a_two_node_fab_gets_a_one_node_canary_and_keeps_a_control_node(world: World) -> None:
    world.report(CHAMPION, ["pair-a", "pair-b"], fab="fab-pair")
    rollout = world.start(fab_id="fab-pair", nodes=[])
    assert len(rollout.canary_nodes) == 1 and len(rollout.control_nodes) == 1


def test_starts_that_cannot_be_carried_out_are_refused_naming_why(world: World) -> None:
    with pytest.raises(InvalidInput) as unknown_node:
        world.start(nodes=["node-a", "node-x"])
    assert unknown_node.value.field == "nodes[1]" and "node-x" in str(unknown_node.value)
    with pytest.raises(InvalidInput) as bad_node:
        world.start(nodes=["node-a", "bad\x00id"])
    assert bad_node.value.field == "nodes[1]"
    with pytest.raises(InvalidInput) as every_node:
        world.start(nodes=list(NODES))
    assert every_node.value.field == "nodes"
    with pytest.raises(InvalidInput) as twice:
        world.start(nodes=["node-a", "node-a"])
    assert twice.value.field == "nodes"
    world.report(CHAMPION, ["solo"], fab="fab-solo")
    with pytest.raises(InvalidInput) as one_node:
        world.start(fab_id="fab-solo", nodes=[])
    assert one_node.value.field == "nodes"
    with pytest.raises(InvalidInput) as no_nodes:
        world.start(fab_id="fab-unknown")
    assert no_nodes.value.field == "fab_id"
    with pytest.raises(InvalidInput) as bad_fab:
        world.start(fab_id="  ")
    assert bad_fab.value.field == "fab_id"
    with pytest.raises(NotFound):
        world.start(version="cnn-v9.9.9")
    with pytest.raises(Conflict, match="already runs"):
        world.start(version=CHAMPION)
    assert service.list_all(world.db) == []  # nothing refused was stored

    first = world.start()
    with pytest.raises(Conflict, match="under way"):
        world.start(nodes=["node-c"])
    assert service.list_all(world.db) == [first]
    with pytest.raises(NotFound):
        service.get(world.db, str(uuid.uuid4()))


def test_a_clearly_better_canary_is_promoted_and_becomes_champion(world: World) -> None:
    promoted = canary_wins(world)
    assert promoted.stage == "watching" and promoted.active
    assert promoted.promoted_at == T0 + timedelta(minutes=10)
    assert promoted.watch_until == promoted.promoted_at + timedelta(seconds=SETTINGS.watch_s)
    decision = promoted.decision
    assert decision is not None and decision["action"] == "promote"
    assert "significant improvement" in decision["reason"]
    stats = decision["statistics"]
    assert (stats["canary"]["n"], stats["control"]["n"]) == (36, 36)
    assert stats["canary"]["macro_f1"] == pytest.approx(1.0)
    assert stats["f1_difference"]["low"] > 0
    assert stats["canary"]["latency_p99_ms"] == pytest.approx(20.0)
    assert world.champion() == CANDIDATE
    assert world.registry.by_alias("previous").version == CHAMPION  # type: ignore[union-attr]
    started, moved = world.events(promoted)
    assert started.action == "rollout_started"
    assert (moved.action, moved.actor, moved.fab_id) == ("rollout_promoted", "rollout", FAB)
    assert set(moved.nodes or ()) == set(NODES)
    assert "significant improvement" in moved.reason
    # Evaluating a finished or already-moved decision changes nothing more.
    assert world.evaluate(promoted, T0 + timedelta(minutes=11)).stage == "watching"


def test_non_canary_reviews_do_not_count_for_the_ab_decision(world: World) -> None:
    rollout = world.start()
    world.report(CANDIDATE, rollout.canary_nodes)
    world.review(CANDIDATE, 36, 36, at=T0 + timedelta(minutes=1), reason=1)
    world.review(CHAMPION, 36, 18, at=T0 + timedelta(minutes=2), reason=1)
    decided = world.evaluate(rollout, T0 + timedelta(minutes=10))
    assert decided.stage == "canary"
    assert decided.decision is not None and decided.decision["action"] == "wait"
    assert decided.decision["statistics"]["canary"]["n"] == 0


@pytest.mark.parametrize(
    ("breach", "expected"),
    [("p99", "p99 latency"), ("class_f1", "class F1"), ("review_rate", "review rate")],
)
def test_a_broken_guardrail_rolls_back_at_once(world: World, breach: str, expected: str) -> None:
    rollout = world.start()
    good_reviews = breach != "class_f1"
    world.report(
        CANDIDATE,
        rollout.canary_nodes,
        p99=80.0 if breach == "p99" else 20.0,
        flagged=300 if breach == "review_rate" else 50,
    )
    if good_reviews:
        world.review(CANDIDATE, 10, 10, at=T0 + timedelta(minutes=1))
    else:  # Scratch wafers mostly mistaken by the candidate: its F1 far below 0.70
        world.review(CANDIDATE, 8, 2, at=T0 + timedelta(minutes=1), true_class=DefectClass.SCRATCH)
    world.review(CHAMPION, 10, 10, at=T0 + timedelta(minutes=2))
    # Well inside the trial window and far from enough reviews: only a guardrail can decide.
    decided = world.evaluate(rollout, T0 + timedelta(minutes=5))
    assert decided.stage == "rolled_back" and not decided.active
    assert decided.finished_at == T0 + timedelta(minutes=5)
    assert decided.decision is not None and decided.decision["action"] == "rollback"
    assert expected in decided.decision["reason"]
    assert world.champion() == CHAMPION
    _, rolled_back = world.events(rollout)
    assert (rolled_back.action, rolled_back.fab_id) == ("rollout_rolled_back", FAB)
    assert set(rolled_back.nodes or ()) == set(NODES)
    # The fab is free for another rollout, whose baseline is still the champion.
    again = world.start(now=T0 + timedelta(minutes=6))
    assert again.baseline_version == CHAMPION


def test_a_canary_waits_for_reviews_then_rolls_back_when_the_window_ends(world: World) -> None:
    rollout = world.start()
    world.report(CANDIDATE, rollout.canary_nodes)
    world.review(CANDIDATE, 5, 5, at=T0 + timedelta(minutes=1))
    waiting = world.evaluate(rollout, T0 + timedelta(minutes=5))
    assert waiting.stage == "canary"
    assert waiting.decision is not None and waiting.decision["action"] == "wait"
    assert "waiting for reviews" in waiting.decision["reason"]
    assert world.events(rollout)[-1].action == "rollout_started"  # waiting is no transition

    ended_at = rollout.canary_ends_at + timedelta(seconds=1)
    ended = world.evaluate(rollout, ended_at)
    assert ended.stage == "rolled_back" and ended.finished_at == ended_at
    assert ended.decision is not None and "trial window ended" in ended.decision["reason"]
    assert world.champion() == CHAMPION
    assert [e.action for e in world.events(rollout)] == ["rollout_started", "rollout_rolled_back"]


def test_identical_arms_with_enough_reviews_wait_for_significance(world: World) -> None:
    rollout = world.start()
    world.report(CANDIDATE, rollout.canary_nodes)
    world.review(CANDIDATE, 36, 30, at=T0 + timedelta(minutes=1))
    world.review(CHAMPION, 36, 30, at=T0 + timedelta(minutes=2))
    waiting = world.evaluate(rollout, T0 + timedelta(minutes=10))
    assert waiting.stage == "canary"
    assert waiting.decision is not None and waiting.decision["action"] == "wait"
    assert "not significant yet" in waiting.decision["reason"]
    difference = waiting.decision["statistics"]["f1_difference"]
    assert difference["difference"] == pytest.approx(0.0)
    assert difference["low"] <= 0 <= difference["high"]


def test_the_watch_rolls_back_a_promoted_version_reviewed_worse_than_its_baseline(
    world: World,
) -> None:
    promoted = canary_wins(world)
    assert world.champion() == CANDIDATE
    after = promoted.promoted_at + timedelta(minutes=1)  # type: ignore[operator]
    # The baseline was reviewed right 18/36 during the canary; the new version 3/12 now.
    world.review(CANDIDATE, 12, 3, at=after, reason=1)
    watched = world.evaluate(promoted, after + timedelta(minutes=5))
    assert watched.stage == "rolled_back"
    assert watched.decision is not None and watched.decision["action"] == "rollback"
    assert "below the previous version's baseline" in watched.decision["reason"]
    assert watched.decision["statistics"]["new"]["n"] == 12
    assert world.champion() == CHAMPION  # the champion alias moved back
    actions = [e.action for e in world.events(promoted)]
    assert actions == ["rollout_started", "rollout_promoted", "rollout_rolled_back"]
    moved_back = [
        e
        for e in world.registry.history(CHAMPION)
        if (e.action, e.alias, e.model_version) == ("alias_set", "champion", CHAMPION)
    ]
    assert moved_back[-1].actor == "rollout" and promoted.id in moved_back[-1].reason
    # The next rollout in the fab starts from the restored baseline.
    assert world.start(now=after + timedelta(hours=1)).baseline_version == CHAMPION


def test_the_watch_waits_then_completes_and_the_version_stays(world: World) -> None:
    promoted = canary_wins(world)
    assert promoted.promoted_at is not None and promoted.watch_until is not None
    world.review(CANDIDATE, 12, 12, at=promoted.promoted_at + timedelta(minutes=1), reason=1)
    waiting = world.evaluate(promoted, promoted.promoted_at + timedelta(minutes=5))
    assert waiting.stage == "watching"
    assert waiting.decision is not None and waiting.decision["action"] == "wait"

    done_at = promoted.watch_until + timedelta(seconds=1)
    done = world.evaluate(promoted, done_at)
    assert done.stage == "completed" and not done.active and done.finished_at == done_at
    assert world.champion() == CANDIDATE
    actions = [e.action for e in world.events(promoted)]
    assert actions == ["rollout_started", "rollout_promoted", "rollout_completed"]
    assert all(e.fab_id == FAB for e in world.events(promoted))
    # The fab now runs the candidate: rolling it out again is a conflict.
    with pytest.raises(Conflict, match="already runs"):
        world.start(now=done_at)


def test_an_emergency_stop_of_a_canary_ends_it_and_a_second_stop_conflicts(world: World) -> None:
    rollout = world.start()
    stopped = service.stop(
        world.db,
        world.registry,
        SETTINGS,
        rollout_id=rollout.id,
        actor="adm-cy",
        reason="line 3 alarms",
        now=T0 + timedelta(minutes=3),
    )
    assert stopped.stage == "stopped" and stopped.finished_at == T0 + timedelta(minutes=3)
    assert stopped.decision is not None and "emergency stop by adm-cy" in stopped.decision["reason"]
    assert world.champion() == CHAMPION
    _, event = world.events(rollout)
    assert (event.action, event.actor, event.fab_id) == ("rollout_stopped", "adm-cy", FAB)
    assert set(event.nodes or ()) == set(NODES) and "line 3 alarms" in event.reason
    with pytest.raises(Conflict, match="already finished"):
        service.stop(
            world.db,
            world.registry,
            SETTINGS,
            rollout_id=rollout.id,
            actor="adm-cy",
            reason="again",
            now=T0 + timedelta(minutes=4),
        )
    with pytest.raises(NotFound):
        service.stop(
            world.db,
            world.registry,
            SETTINGS,
            rollout_id=str(uuid.uuid4()),
            actor="adm-cy",
            reason="r",
            now=T0,
        )
    # A finished rollout is left as it is by a later evaluation.
    assert world.evaluate(stopped, T0 + timedelta(days=30)) == service.get(world.db, rollout.id)


def test_an_emergency_stop_while_watching_restores_the_champion(world: World) -> None:
    promoted = canary_wins(world)
    assert world.champion() == CANDIDATE
    stopped = service.stop(
        world.db,
        world.registry,
        SETTINGS,
        rollout_id=promoted.id,
        actor="adm-cy",
        reason="customer complaint",
        now=T0 + timedelta(minutes=20),
    )
    assert stopped.stage == "stopped"
    assert world.champion() == CHAMPION
    actions = [e.action for e in world.events(promoted)]
    assert actions == ["rollout_started", "rollout_promoted", "rollout_stopped"]


def test_evaluate_active_decides_every_rollout_under_way(world: World) -> None:
    world.report(CHAMPION, ["node-x", "node-y"], fab="fab-2")
    first = world.start()
    second = world.start(fab_id="fab-2", nodes=["node-x"])
    ended = service.evaluate_active(world.db, world.registry, SETTINGS, now=T0 + timedelta(hours=2))
    assert {r.id: r.stage for r in ended} == {first.id: "rolled_back", second.id: "rolled_back"}
    assert service.list_all(world.db, active_only=True) == []
    assert service.evaluate_active(world.db, world.registry, SETTINGS, now=T0) == []


def test_beats_rollout_task_decides_the_rollouts_under_way(
    world: World, cloud_settings: CloudSettings
) -> None:
    from cloud.pipeline.celery_app import make_celery
    from cloud.pipeline.dispatch import ROLLOUT_TASK

    app = make_celery(cloud_settings)
    schedule = app.conf.beat_schedule["evaluate-rollouts"]
    assert schedule["task"] == ROLLOUT_TASK
    assert schedule["schedule"] == cloud_settings.rollouts.evaluate_every_s
    # Started long enough ago that the default trial window (7 days) has ended by now.
    old = world.start(now=datetime.now(UTC) - timedelta(days=8))
    assert app.tasks[ROLLOUT_TASK]() == ["rolled_back"]  # run here, as a worker would
    decided = service.get(world.db, old.id)
    assert decided.stage == "rolled_back" and decided.decision is not None
    assert "trial window ended" in decided.decision["reason"]
    assert app.tasks[ROLLOUT_TASK]() == []
