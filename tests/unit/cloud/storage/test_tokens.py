"""The token repository on a migrated SQLite cloud database: digests only, revocation, listing."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from cloud.storage import tokens
from cloud.storage.db import Database
from cloud.storage.tables import ApiTokenRow


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def test_a_token_is_found_by_its_digest_until_it_is_revoked(db: Database) -> None:
    with db.session() as session:
        added = tokens.add_token(session, user="ana", role="viewer", digest=_digest("t-1"))
    with db.session() as session:
        found = tokens.find_active(session, digest=_digest("t-1"))
        assert tokens.find_active(session, digest=_digest("t-2")) is None
    assert found == added
    assert (found.user, found.role, found.revoked_at) == ("ana", "viewer", None)
    assert found.created_at.tzinfo is not None

    with db.session() as session:
        revoked = tokens.revoke_token(session, token_id=added.id)
    assert revoked is not None and revoked.revoked_at is not None
    with db.session() as session:
        assert tokens.find_active(session, digest=_digest("t-1")) is None
        # Revoking again keeps the first revocation time.
        again = tokens.revoke_token(session, token_id=added.id)
    assert again is not None and again.revoked_at == revoked.revoked_at


def test_only_the_digest_is_stored(db: Database) -> None:
    with db.session() as session:
        tokens.add_token(session, user="ana", role="admin", digest=_digest("secret-token"))
    with db.session() as session:
        rows = session.scalars(select(ApiTokenRow)).all()
    assert [row.digest for row in rows] == [_digest("secret-token")]
    assert all("secret-token" not in str(vars(row)) for row in rows)


def test_revoking_an_unknown_token_says_so(db: Database) -> None:
    with db.session() as session:
        assert tokens.revoke_token(session, token_id=12345) is None


def test_the_list_shows_valid_tokens_oldest_first_and_revoked_ones_on_request(
    db: Database,
) -> None:
    with db.session() as session:
        first = tokens.add_token(session, user="ana", role="viewer", digest=_digest("a"))
        second = tokens.add_token(session, user="bo", role="ml-engineer", digest=_digest("b"))
        tokens.revoke_token(session, token_id=first.id)
    with db.session() as session:
        valid = tokens.list_tokens(session)
        every = tokens.list_tokens(session, include_revoked=True)
    assert [t.id for t in valid] == [second.id]
    assert [t.id for t in every] == [first.id, second.id]
    assert every[0].revoked_at is not None


def test_a_digest_is_stored_once(db: Database) -> None:
    with db.session() as session:
        tokens.add_token(session, user="ana", role="viewer", digest=_digest("same"))
    with pytest.raises(IntegrityError), db.session() as session:
        tokens.add_token(session, user="bo", role="viewer", digest=_digest("same"))
