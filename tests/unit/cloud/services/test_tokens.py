"""The token service on SQLite: issued once, authenticated by digest, roles ranked, revoked."""

from __future__ import annotations

import pytest

from cloud.errors import NotFound
from cloud.services import tokens
from cloud.storage.db import Database
from wafercore.errors import InvalidInput


def test_an_issued_token_authenticates_its_holder_until_revoked(db: Database) -> None:
    token = tokens.add_token(db, user="ana", role="ml-engineer")
    assert len(token) >= 43
    assert tokens.authenticate(db, token) == tokens.Principal("ana", "ml-engineer")
    assert tokens.authenticate(db, token + "x") is None
    assert tokens.authenticate(db, "") is None
    assert tokens.authenticate(db, "x" * 10_000) is None

    (listed,) = tokens.list_tokens(db)
    tokens.revoke_token(db, listed.id)
    assert tokens.authenticate(db, token) is None
    assert tokens.list_tokens(db) == []
    assert tokens.list_tokens(db, include_revoked=True)[0].revoked_at is not None


def test_every_token_is_new(db: Database) -> None:
    issued = {tokens.add_token(db, user="ana", role="viewer") for _ in range(5)}
    assert len(issued) == 5


@pytest.mark.parametrize(
    ("user", "role", "field"),
    [("ana", "superuser", "role"), ("", "viewer", "user"), ("a\x1bb", "viewer", "user")],
)
def test_a_bad_user_or_role_is_refused_naming_it(
    db: Database, user: str, role: str, field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        tokens.add_token(db, user=user, role=role)
    assert caught.value.field == field
    assert tokens.list_tokens(db) == []


def test_revoking_an_unknown_token_is_not_found(db: Database) -> None:
    with pytest.raises(NotFound):
        tokens.revoke_token(db, 999)


def test_roles_are_ranked_viewer_engineer_admin() -> None:
    assert tokens.role_at_least("admin", "ml-engineer")
    assert tokens.role_at_least("ml-engineer", "ml-engineer")
    assert not tokens.role_at_least("viewer", "ml-engineer")
    assert not tokens.role_at_least("ml-engineer", "admin")
