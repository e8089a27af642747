"""Every HTTP route's access rule, over the app's own route table (SQLite, no servers).

The table is the app's OpenAPI description, so a route added without a token check fails here,
and a route missing from ``ADMIN_ONLY`` / ``OPEN`` is held to the engineer rule.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import async_sessionmaker

from fab_server.api import create_app
from fab_server.api.auth import TokenAuth
from fab_server.db import make_async_engine, migrate, session_factory
from fab_server.settings import ApiToken, FabSettings

ENGINEER = "engineer-token-0123456789"
ADMIN = "admin-token-0123456789abcdef"
TOKENS = [
    ApiToken(token=ENGINEER, user="ana", role="engineer"),
    ApiToken(token=ADMIN, user="boss", role="admin"),
]
OPEN = {("GET", "/healthz"), ("GET", "/metrics")}
ADMIN_ONLY = {
    ("POST", "/api/alerts/{alert_id}/ack"),
    ("POST", "/api/review/admin/items/{item_id}/release"),
    ("POST", "/api/review/admin/items/{item_id}/resolve"),
}
PATH_VALUES = {
    "item_id": "3f1c2d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
    "lot_id": "LOT-1",
    "alert_id": "1",
    "wafer_id": "W-1",
}


def _openapi() -> dict[str, Any]:
    return create_app(FabSettings(api_tokens=TOKENS), async_sessionmaker()).openapi()


def _routes() -> list[tuple[str, str]]:
    paths = _openapi()["paths"]
    return sorted((method.upper(), path) for path, ops in paths.items() for method in ops)


ROUTES = _routes()


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fab.db'}"
    migrate(url)
    engine = make_async_engine(url)
    app = create_app(FabSettings(database_url=url, api_tokens=TOKENS), session_factory(engine))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://fab") as http:
        yield http
    await engine.dispose()


def test_the_route_table_is_what_the_access_rules_describe() -> None:
    assert OPEN <= set(ROUTES)
    assert ADMIN_ONLY <= set(ROUTES)
    assert all(path.startswith("/api/") for method, path in set(ROUTES) - OPEN)
    # The OpenAPI document tells clients which operations need the token.
    for path, ops in _openapi()["paths"].items():
        for method, op in ops.items():
            secured = op.get("security") == [{"HTTPBearer": []}]
            assert secured == ((method.upper(), path) not in OPEN), (method, path)


@pytest.mark.asyncio
@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
async def test_every_route_enforces_its_role(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    url = re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], path)
    anonymous = await client.request(method, url)
    if (method, path) in OPEN:
        assert anonymous.status_code == 200
        return
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    for bad in ("Bearer not-a-token-at-all", f"Basic {ENGINEER}", f"Bearer {ENGINEER}x", "Bearer"):
        response = await client.request(method, url, headers={"Authorization": bad})
        assert response.status_code == 401, bad
    engineer = await client.request(method, url, headers={"Authorization": f"Bearer {ENGINEER}"})
    if (method, path) in ADMIN_ONLY:
        assert engineer.status_code == 403
    else:
        assert engineer.status_code not in (401, 403, 500)
    admin = await client.request(method, url, headers={"Authorization": f"Bearer {ADMIN}"})
    # An admin can do whatever an engineer can; an empty request is a 4xx, never a 500.
    assert admin.status_code not in (401, 403, 500)


def test_tokens_are_matched_exactly_and_may_be_any_text() -> None:
    auth = TokenAuth([*TOKENS, ApiToken(token="ünïcode-token-☃☃☃☃", user="u", role="engineer")])
    admin = auth.authenticate(ADMIN)
    assert admin is not None and (admin.user, admin.role) == ("boss", "admin")
    assert auth.authenticate("ünïcode-token-☃☃☃☃") is not None
    assert auth.authenticate(ADMIN[:-1]) is None
    assert auth.authenticate("") is None
    with pytest.raises(ValueError, match="more than once"):
        TokenAuth([*TOKENS, ApiToken(token=ENGINEER, user="eve", role="admin")])
    with pytest.raises(ValueError, match="user names"):
        TokenAuth([ApiToken(token="long-user-token-0001", user="u" * 129, role="engineer")])
