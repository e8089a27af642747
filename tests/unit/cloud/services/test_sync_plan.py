"""`cloud.services.sync.plan_nodes`: which version each node of a fab runs, at every stage of
its rollout (pure: no database)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from cloud.services.sync import STAGE_CANARY, STAGE_PRODUCTION, NodePlan, plan_nodes
from cloud.storage import rollouts
from cloud.storage.rollouts import Rollout

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
NODES = ("node-a", "node-b", "node-c", "node-d")
ROLLOUT = Rollout(
    id="r-1",
    fab_id="fab-1",
    model_version="v2",
    baseline_version="v1",
    canary_nodes=("node-b", "node-d"),
    control_nodes=("node-a", "node-c"),
    stage=rollouts.CANARY,
    requested_by="adm-cy",
    reason="new model",
    started_at=T0,
    canary_ends_at=T0 + timedelta(days=7),
)


def test_without_a_rollout_every_node_runs_the_champion_outside_any_rollout() -> None:
    assert plan_nodes(NODES, None, "v1") == [
        NodePlan(node, "v1", STAGE_PRODUCTION, "") for node in NODES
    ]
    assert plan_nodes(NODES, None, None) == []  # nothing to run yet
    assert plan_nodes([], None, "v1") == []


def test_during_a_canary_the_canary_arm_runs_the_candidate_and_the_rest_are_the_control() -> None:
    assert plan_nodes(NODES, ROLLOUT, "v1") == [
        NodePlan("node-a", "v1", STAGE_PRODUCTION, "r-1"),
        NodePlan("node-b", "v2", STAGE_CANARY, "r-1"),
        NodePlan("node-c", "v1", STAGE_PRODUCTION, "r-1"),
        NodePlan("node-d", "v2", STAGE_CANARY, "r-1"),
    ]
    # A node reported after the canary started is in the control arm too.
    assert plan_nodes([*NODES, "node-e"], ROLLOUT, "v1")[-1] == NodePlan(
        "node-e", "v1", STAGE_PRODUCTION, "r-1"
    )


def test_promoted_and_watched_every_node_runs_the_new_version_in_the_rollout() -> None:
    watching = replace(ROLLOUT, stage=rollouts.WATCHING, promoted_at=T0 + timedelta(days=1))
    assert plan_nodes(NODES, watching, "v2") == [
        NodePlan(node, "v2", STAGE_PRODUCTION, "r-1") for node in NODES
    ]


def test_completed_every_node_runs_the_new_version_as_plain_production() -> None:
    completed = replace(ROLLOUT, stage=rollouts.COMPLETED)
    # The rollout decides, not the champion alias passed along.
    assert plan_nodes(NODES, completed, "v9") == [
        NodePlan(node, "v2", STAGE_PRODUCTION, "") for node in NODES
    ]


@pytest.mark.parametrize("stage", [rollouts.ROLLED_BACK, rollouts.STOPPED])
def test_rolled_back_or_stopped_every_node_returns_to_the_baseline(stage: str) -> None:
    ended = replace(ROLLOUT, stage=stage)
    assert plan_nodes(NODES, ended, "v2") == [
        NodePlan(node, "v1", STAGE_PRODUCTION, "") for node in NODES
    ]


def test_every_stage_is_planned_and_keeps_the_nodes_in_order() -> None:
    for stage in rollouts.STAGES:
        planned = plan_nodes(NODES, replace(ROLLOUT, stage=stage), "v1")
        assert [p.node_id for p in planned] == list(NODES), stage
        assert {p.model_version for p in planned} <= {"v1", "v2"}, stage
