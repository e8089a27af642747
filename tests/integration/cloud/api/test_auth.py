"""Every route of the cloud API but health and docs refuses a caller without a valid token
(401, before the body is read) and a caller whose role is too low (403).

The test walks the app's route table: a new route without a role guard, or with a role other
than the one listed in `EXPECTED_ROLES`, fails it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest
from fastapi.routing import APIRoute

from cloud.api.app import create_app
from cloud.api.auth import OPEN_PATHS, RoleGuard
from cloud.services.tokens import ROLES, Role, list_tokens, revoke_token
from cloud.settings import CloudSettings
from cloud.storage.db import Database

try:
    # FastAPI >= 0.16x keeps included routers as such: this yields their routes, prefixed.
    from fastapi.routing import iter_route_contexts
except ImportError:  # older FastAPI copies included routes into app.routes
    iter_route_contexts = iter  # type: ignore[assignment]

pytestmark = pytest.mark.integration

EXPECTED_ROLES: dict[tuple[str, str], Role] = {
    ("POST", "/training/trigger"): "ml-engineer",
    ("GET", "/training/jobs"): "viewer",
    ("GET", "/training/jobs/{job_id}"): "viewer",
    ("POST", "/training/jobs/{job_id}/cancel"): "ml-engineer",
    ("GET", "/models"): "viewer",
    ("POST", "/models/deploy"): "admin",
    ("GET", "/models/{version}"): "viewer",
    ("POST", "/models/{version}/aliases"): "ml-engineer",
    ("GET", "/models/{version}/artifact"): "viewer",
    ("GET", "/models/{version}/artifact.sig"): "viewer",
    ("GET", "/rollouts"): "viewer",
    ("GET", "/rollouts/{rollout_id}"): "viewer",
    ("POST", "/rollouts/{rollout_id}/stop"): "admin",
    ("GET", "/analytics/drift"): "viewer",
    ("GET", "/analytics/drift.png"): "viewer",
    ("POST", "/analytics/drift/compute"): "ml-engineer",
}
"""The least role of each route (moving champion needs admin: see test_models)."""
PATH_VALUES = {
    "job_id": str(uuid.uuid4()),
    "version": "cnn-v2.0.0",
    "rollout_id": str(uuid.uuid4()),
}


@pytest.fixture
def guarded(cloud_settings: CloudSettings) -> dict[tuple[str, str], list[str]]:
    """(method, path) -> the roles of the route's guards, for every route but the open ones."""
    found: dict[tuple[str, str], list[str]] = {}
    for context in iter_route_contexts(create_app(cloud_settings).routes):
        route = getattr(context, "original_route", context)
        if not isinstance(route, APIRoute) or context.path in OPEN_PATHS:
            continue
        roles: list[str] = []
        pending = [route.dependant]
        while pending:
            dependant = pending.pop()
            roles += [d.call.role for d in dependant.dependencies if isinstance(d.call, RoleGuard)]
            pending += dependant.dependencies
        for method in context.methods or ():
            found[(method, str(context.path))] = roles
    return found


def _url(path: str) -> str:
    return path.format(**PATH_VALUES)


def test_every_route_has_exactly_the_expected_role_guard(
    guarded: dict[tuple[str, str], list[str]],
) -> None:
    assert guarded == {key: [role] for key, role in EXPECTED_ROLES.items()}


def test_every_route_refuses_a_caller_without_a_valid_token(
    api: httpx.Client,
    guarded: dict[tuple[str, str], list[str]],
    issue: Callable[..., str],
    cloud_db: Database,
) -> None:
    revoked = issue("admin", "gone")
    (listed,) = list_tokens(cloud_db)
    revoke_token(cloud_db, listed.id)
    refused = {
        "no header": {},
        "unknown token": {"Authorization": "Bearer not-a-token"},
        "revoked token": {"Authorization": f"Bearer {revoked}"},
        "other scheme": {"Authorization": f"Basic {revoked}"},
        "bare scheme": {"Authorization": "Bearer"},
    }
    for method, path in guarded:
        for what, headers in refused.items():
            # A body that would be a 422 if anyone read it: the gate answers first.
            response = api.request(method, _url(path), headers=headers, content=b"{not json")
            assert response.status_code == 401, (method, path, what, response.text)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert response.json()["detail"][0]["loc"] == ["header", "authorization"]


def test_every_route_refuses_a_role_below_its_own(
    api: httpx.Client, issue: Callable[..., str]
) -> None:
    tokens = {role: issue(role) for role in ROLES}
    checked = 0
    for (method, path), role in EXPECTED_ROLES.items():
        for lower in ROLES[: ROLES.index(role)]:
            response = api.request(
                method, _url(path), headers={"Authorization": f"Bearer {tokens[lower]}"}
            )
            assert response.status_code == 403, (method, path, lower, response.text)
            assert role in response.json()["detail"][0]["msg"]
            checked += 1
    assert checked >= 5


def test_health_and_docs_are_open(api: httpx.Client) -> None:
    assert api.get("/healthz").json()["status"] == "ok"
    assert api.get("/openapi.json").status_code == 200
    docs = api.get("/docs")
    assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text
    assert api.get("/docs/static/swagger-ui-bundle.js").status_code == 200
    assert api.get("/redoc").status_code == 200


def test_the_openapi_document_declares_bearer_auth_on_every_guarded_operation(
    api: httpx.Client,
) -> None:
    document = api.get("/openapi.json").json()
    for method, path in EXPECTED_ROLES:
        operation = document["paths"][path][method.lower()]
        assert operation["security"] == [{"HTTPBearer": []}], (method, path)
        assert {"401", "403"} <= set(operation["responses"]), (method, path)
