"""``POST /models/deploy`` and ``/rollouts/*`` through the real API (PostgreSQL, the session's
`mlflow server`): a deploy starts a canary (201 + Location), rollouts are listed, read and
stopped, bad requests are 422 naming the field, conflicts 409. And the ``fab`` role: a fab
server's token downloads artifacts and nothing else."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest
from fastapi.routing import APIRoute

from cloud.api.app import create_app
from cloud.api.auth import OPEN_PATHS
from cloud.registry.registry import ModelRegistry
from cloud.services.tokens import add_token
from cloud.settings import CloudSettings
from cloud.storage.db import Database

try:
    from fastapi.routing import iter_route_contexts
except ImportError:  # older FastAPI copies included routes into app.routes
    iter_route_contexts = iter  # type: ignore[assignment]

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHAMPION, CANDIDATE = "cnn-v1.0.0", "cnn-v1.1.0"
NODES = ("node-a", "node-b", "node-c", "node-d")
Headers = Callable[..., dict[str, str]]


@pytest.fixture
def registered(two_versions: ModelRegistry, report_day: Callable[..., None]) -> ModelRegistry:
    """The champion and a candidate registered; fab-1 reported four nodes, fab-2 three."""
    mix = (90, 2, 1, 1, 1, 1, 1, 1, 2)
    for fab, nodes in (("fab-1", NODES), ("fab-2", ("node-x", "node-y", "node-z"))):
        report_day(fab, nodes, mix, flagged=5, reviewed=1, correct=1)
    return two_versions


def deploy_body(**kw: object) -> dict[str, object]:
    body: dict[str, object] = {
        "version": CANDIDATE,
        "fab_id": "fab-1",
        "nodes": ["node-b", "node-a"],
        "reason": "canary on line 3",
    }
    body.update(kw)
    return body


def test_a_deploy_starts_a_canary_that_is_listed_read_and_stopped(
    api: httpx.Client, headers: Headers, registered: ModelRegistry
) -> None:
    admin, viewer = headers("admin", "adm-cy"), headers("viewer")
    started = api.post("/models/deploy", headers=admin, json=deploy_body())
    assert started.status_code == 201, started.text
    rollout = started.json()
    assert started.headers["Location"] == f"/rollouts/{rollout['id']}"
    assert uuid.UUID(rollout["id"])
    assert rollout == {
        **rollout,
        "fab_id": "fab-1",
        "model_version": CANDIDATE,
        "baseline_version": CHAMPION,
        "stage": "canary",
        "canary_nodes": ["node-a", "node-b"],
        "control_nodes": ["node-c", "node-d"],
        "requested_by": "adm-cy",
        "reason": "canary on line 3",
        "decision": None,
        "promoted_at": None,
        "finished_at": None,
    }
    other = api.post(
        "/models/deploy", headers=admin, json=deploy_body(fab_id="fab-2", nodes=[])
    ).json()
    assert len(other["canary_nodes"]) == 2 and len(other["control_nodes"]) == 1

    read = api.get(started.headers["Location"], headers=viewer)
    assert read.status_code == 200 and read.json() == rollout
    listed = api.get("/rollouts", headers=viewer).json()
    assert {r["id"] for r in listed} == {rollout["id"], other["id"]}
    fab1 = api.get("/rollouts", headers=viewer, params={"fab_id": "fab-1"}).json()
    assert [r["id"] for r in fab1] == [rollout["id"]]
    assert api.get("/rollouts", headers=viewer, params={"fab_id": "fab-9"}).json() == []

    # Only an admin stops; the stop is the rollout's end, a second one a conflict.
    url = f"/rollouts/{rollout['id']}/stop"
    refused = api.post(url, headers=headers("ml-engineer"), json={"reason": "alarm"})
    assert refused.status_code == 403
    stopped = api.post(url, headers=admin, json={"reason": "alarm on line 3"})
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["stage"] == "stopped" and stopped.json()["finished_at"] is not None
    assert "emergency stop by adm-cy" in stopped.json()["decision"]["reason"]
    again = api.post(url, headers=admin, json={"reason": "again"})
    assert again.status_code == 409
    assert again.json()["detail"][0]["type"] == "conflict"

    active = api.get("/rollouts", headers=viewer, params={"active": True}).json()
    assert [r["id"] for r in active] == [other["id"]]
    both = api.get("/rollouts", headers=viewer, params={"active": False}).json()
    assert len(both) == 2

    history = api.get(f"/models/{CANDIDATE}", headers=viewer).json()["history"]
    events = [(e["action"], e["fab_id"], e["nodes"]) for e in history if e["fab_id"] == "fab-1"]
    assert events == [
        ("rollout_started", "fab-1", ["node-a", "node-b"]),
        ("rollout_stopped", "fab-1", list(NODES)),
    ]


def test_unknown_rollouts_are_404_and_malformed_ids_422(
    api: httpx.Client, headers: Headers, registered: ModelRegistry
) -> None:
    unknown = str(uuid.uuid4())
    viewer, admin = headers("viewer"), headers("admin")
    missing = api.get(f"/rollouts/{unknown}", headers=viewer)
    assert missing.status_code == 404 and missing.json()["detail"][0]["type"] == "not_found"
    stop = api.post(f"/rollouts/{unknown}/stop", headers=admin, json={"reason": "r"})
    assert stop.status_code == 404
    bad = api.get("/rollouts/not-a-uuid", headers=viewer)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["path", "rollout_id"]
    no_reason = api.post(f"/rollouts/{unknown}/stop", headers=admin, json={})
    assert no_reason.status_code == 422
    assert no_reason.json()["detail"][0]["loc"] == ["body", "reason"]
    bad_fab = api.get("/rollouts", headers=viewer, params={"fab_id": "  "})
    assert bad_fab.status_code == 422 and bad_fab.json()["detail"][0]["loc"] == ["query", "fab_id"]


def test_bad_deploys_are_refused_naming_the_field_and_conflicts_are_409(
    api: httpx.Client, headers: Headers, registered: ModelRegistry
) -> None:
    admin = headers("admin")

    def deploy(**kw: object) -> httpx.Response:
        return api.post("/models/deploy", headers=admin, json=deploy_body(**kw))

    bad_node = deploy(nodes=["node-a", ""])
    assert bad_node.status_code == 422
    assert bad_node.json()["detail"][0]["loc"] == ["body", "nodes", 1]
    unknown_node = deploy(nodes=["node-a", "node-zz"])
    assert unknown_node.status_code == 422, unknown_node.text
    (problem,) = unknown_node.json()["detail"]
    assert problem["loc"] == ["nodes[1]"] and "node-zz" in problem["msg"]
    every_node = deploy(nodes=list(NODES))
    assert every_node.status_code == 422 and every_node.json()["detail"][0]["loc"] == ["nodes"]
    no_nodes = deploy(fab_id="fab-none", nodes=[])
    assert no_nodes.status_code == 422 and no_nodes.json()["detail"][0]["loc"] == ["fab_id"]
    extra = api.post("/models/deploy", headers=admin, json={**deploy_body(), "stage": "x"})
    assert extra.status_code == 422 and extra.json()["detail"][0]["loc"] == ["body", "stage"]
    assert deploy(version="cnn-v9.9.9").status_code == 404
    same = deploy(version=CHAMPION)
    assert same.status_code == 409 and "already runs" in same.json()["detail"][0]["msg"]
    engineer = api.post("/models/deploy", headers=headers("ml-engineer"), json=deploy_body())
    assert engineer.status_code == 403
    assert api.get("/rollouts", headers=admin).json() == []  # nothing refused was stored

    assert deploy().status_code == 201
    busy = deploy(nodes=["node-c"])
    assert busy.status_code == 409 and "under way" in busy.json()["detail"][0]["msg"]
    assert len(api.get("/rollouts", headers=admin).json()) == 1


def test_a_fab_token_downloads_artifacts_and_nothing_else(
    api: httpx.Client,
    cloud_settings: CloudSettings,
    cloud_db: Database,
    registered: ModelRegistry,
) -> None:
    fab = {"Authorization": f"Bearer {add_token(cloud_db, user='fab-1', role='fab')}"}
    artifact = api.get(f"/models/{CHAMPION}/artifact", headers=fab)
    assert artifact.status_code == 200, artifact.text
    assert artifact.headers["X-Artifact-SHA256"] == registered.get(CHAMPION).artifact_sha256
    signature = api.get(f"/models/{CHAMPION}/artifact.sig", headers=fab)
    assert signature.status_code == 200 and len(signature.content) == 64

    allowed = {("GET", "/models/{version}/artifact"), ("GET", "/models/{version}/artifact.sig")}
    values = {"version": CHAMPION, "job_id": str(uuid.uuid4()), "rollout_id": str(uuid.uuid4())}
    checked = []
    for context in iter_route_contexts(create_app(cloud_settings).routes):
        route = getattr(context, "original_route", context)
        if not isinstance(route, APIRoute) or context.path in OPEN_PATHS:
            continue
        for method in context.methods or ():
            if (method, str(context.path)) in allowed:
                continue
            url = str(context.path).format(**values)
            response = api.request(method, url, headers=fab, json={"reason": "r"})
            assert response.status_code == 403, (method, url, response.text)
            checked.append((method, url))
    assert len(checked) >= 14, checked
