"""Sign-in, sessions and CSRF of the review UI, over the ASGI app on SQLite (no browser)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr

from fab_server.api import create_app
from fab_server.db import make_async_engine, migrate, session_factory
from fab_server.services import users
from fab_server.settings import FabSettings
from review_ui.app import LOGIN_FAILED

PASSWORD = "a-long-password"
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fab.db'}"
    migrate(url)
    settings = FabSettings(database_url=url, ui_session_secret=SecretStr("unit-test-secret"))
    engine = make_async_engine(url)
    sessions = session_factory(engine)
    await users.add_user(sessions, user="ana", role="engineer", password=PASSWORD)
    await users.add_user(sessions, user="gone", role="engineer", password=PASSWORD)
    transport = httpx.ASGITransport(app=create_app(settings, sessions))
    async with httpx.AsyncClient(transport=transport, base_url="http://fab") as http:
        http.sessions = sessions  # type: ignore[attr-defined]
        yield http
    await engine.dispose()


async def _token(client: httpx.AsyncClient, path: str = "/ui/login") -> str:
    page = await client.get(path)
    match = TOKEN.search(page.text)
    assert match, page.text
    return match.group(1)


async def _sign_in(
    client: httpx.AsyncClient, user: str = "ana", password: str = PASSWORD, next_path: str = ""
) -> httpx.Response:
    token = await _token(client)
    form = {"user": user, "password": password, "csrf_token": token, "next": next_path}
    return await client.post("/ui/login", data=form)


@pytest.mark.asyncio
async def test_pages_need_a_session_and_sign_in_starts_one(client: httpx.AsyncClient) -> None:
    anonymous = await client.get("/ui/queue?lot=L1")
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == "/ui/login?next=%2Fui%2Fqueue%3Flot%3DL1"
    signed = await _sign_in(client, next_path="/ui/queue?lot=L1")
    assert signed.status_code == 303 and signed.headers["location"] == "/ui/queue?lot=L1"
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert "Secure" not in cookie  # no TLS configured
    queue = await client.get("/ui/queue")
    assert queue.status_code == 200 and "Signed in as" in queue.text
    assert queue.headers["x-frame-options"] == "DENY"


@pytest.mark.asyncio
async def test_failed_sign_ins_look_alike(client: httpx.AsyncClient) -> None:
    wrong = await _sign_in(client, password="wrong-password")
    unknown = await _sign_in(client, user="nobody")
    for answer in (wrong, unknown):
        assert answer.status_code == 401
        assert LOGIN_FAILED in answer.text
    assert (await client.get("/ui/queue")).status_code == 303


@pytest.mark.asyncio
async def test_posts_need_the_sessions_csrf_token(client: httpx.AsyncClient) -> None:
    no_token = await client.post("/ui/login", data={"user": "ana", "password": PASSWORD})
    assert no_token.status_code == 403
    await _sign_in(client)
    token = await _token(client, "/ui/queue")
    assert (await client.post("/ui/logout")).status_code == 403
    assert (await client.post("/ui/logout", data={"csrf_token": "x" + token})).status_code == 403
    out = await client.post("/ui/logout", headers={"X-CSRF-Token": token})
    assert out.status_code == 303
    assert (await client.get("/ui/queue")).status_code == 303


@pytest.mark.asyncio
async def test_a_forged_cookie_or_a_disabled_user_is_signed_out(
    client: httpx.AsyncClient,
) -> None:
    await _sign_in(client, user="gone")
    assert (await client.get("/ui/queue")).status_code == 200
    await users.disable(client.sessions, user="gone")  # type: ignore[attr-defined]
    assert (await client.get("/ui/queue")).status_code == 303
    client.cookies.set("wafer_ui", "eyJ1c2VyIjoiYW5hIn0.forged.sig", path="/ui")
    assert (await client.get("/ui/queue")).status_code == 303


@pytest.mark.asyncio
@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/api/lots"])
async def test_sign_in_never_redirects_off_the_ui(client: httpx.AsyncClient, target: str) -> None:
    signed = await _sign_in(client, next_path=target)
    assert signed.headers["location"] == "/ui/queue"
