"""Review UI users on SQLite: hashed passwords, authentication, disabling, the CLI."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from click.testing import CliRunner
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server.api_tokens import Principal
from fab_server.cli import main
from fab_server.db import make_async_engine, migrate, session_factory
from fab_server.errors import Conflict
from fab_server.services import users
from wafercore.errors import InvalidInput

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "fab.db"
    migrate(f"sqlite+aiosqlite:///{path}")
    return path


@pytest_asyncio.fixture
async def sessions(db: Path) -> AsyncIterator[Sessions]:
    engine = make_async_engine(f"sqlite+aiosqlite:///{db}")
    yield session_factory(engine)
    await engine.dispose()


def _hashes(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute('SELECT "user", password_hash FROM users').fetchall())


@pytest.mark.asyncio
async def test_a_password_is_stored_only_as_a_salted_scrypt_hash(
    sessions: Sessions, db: Path
) -> None:
    await users.add_user(sessions, user="ana", role="engineer", password="same-password")
    await users.add_user(sessions, user="ben", role="admin", password="same-password")
    stored = _hashes(db)
    assert all(h.startswith("scrypt$") and "same-password" not in h for h in stored.values())
    # Per-user salt: the same password hashes differently.
    assert stored["ana"] != stored["ben"]
    assert users.verify_password("same-password", stored["ana"])
    assert not users.verify_password("same-passwore", stored["ana"])
    assert not users.verify_password("same-password", "md5$nonsense")


@pytest.mark.asyncio
async def test_authenticate_returns_the_role_and_fails_alike_for_every_bad_sign_in(
    sessions: Sessions,
) -> None:
    await users.add_user(sessions, user="ana", role="admin", password="correct horse")
    ok = await users.authenticate(sessions, user="ana", password="correct horse")
    assert ok == Principal("ana", "admin")
    assert await users.authenticate(sessions, user="ana", password="wrong horse") is None
    assert await users.authenticate(sessions, user="nobody", password="correct horse") is None
    assert await users.authenticate(sessions, user="ana", password="x" * 5000) is None


@pytest.mark.asyncio
async def test_a_disabled_user_cannot_sign_in_and_the_name_is_not_reused(
    sessions: Sessions,
) -> None:
    await users.add_user(sessions, user="ana", role="engineer", password="correct horse")
    assert await users.is_enabled(sessions, user="ana")
    assert await users.disable(sessions, user="ana")
    assert not await users.disable(sessions, user="ana")  # already disabled
    assert not await users.is_enabled(sessions, user="ana")
    assert await users.authenticate(sessions, user="ana", password="correct horse") is None
    with pytest.raises(Conflict):
        await users.add_user(sessions, user="ana", role="engineer", password="another one")
    listed = await users.list_users(sessions)
    assert [(u.user, u.disabled_at is not None) for u in listed] == [("ana", True)]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("user", "role", "password", "field"),
    [
        ("ana", "engineer", "short", "password"),
        ("ana", "root", "long enough", "role"),
        ("", "engineer", "long enough", "user"),
    ],
)
async def test_invalid_users_are_refused_naming_the_field(
    sessions: Sessions, user: str, role: str, password: str, field: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        await users.add_user(sessions, user=user, role=role, password=password)
    assert err.value.field == field
    assert await users.list_users(sessions) == []


def test_the_cli_adds_lists_and_disables_users(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAB_DATABASE_URL", f"sqlite+aiosqlite:///{db}")
    runner = CliRunner()
    added = runner.invoke(
        main,
        ["users", "add", "--user", "ana", "--role", "admin", "--password-stdin"],
        input="s3cret-pass\n",
    )
    assert added.exit_code == 0, added.output
    assert users.verify_password("s3cret-pass", _hashes(db)["ana"])
    prompted = runner.invoke(
        main, ["users", "add", "--user", "ben"], input="other-pass\nother-pass\n"
    )
    assert prompted.exit_code == 0, prompted.output
    assert "other-pass" not in prompted.output  # hidden input is not echoed
    listed = runner.invoke(main, ["users", "list"])
    assert "ana" in listed.output and "admin" in listed.output and "ben" in listed.output
    assert runner.invoke(main, ["users", "disable", "ana"]).exit_code == 0
    again = runner.invoke(main, ["users", "disable", "ana"])
    assert again.exit_code == 1 and "no enabled user" in again.output
    taken = runner.invoke(
        main, ["users", "add", "--user", "ben", "--password-stdin"], input="other-pass\n"
    )
    assert taken.exit_code == 1 and "exists already" in taken.output
