"""The cloud API's bearer tokens: issued once, stored as SHA-256 digests, with a role each.

Roles, from least to most: ``viewer`` (reads jobs and models), ``ml-engineer`` (triggers and
cancels training, moves the ``candidate`` alias), ``admin`` (everything, including the
``champion`` and ``previous`` aliases and deployments). Apart from them, ``fab``: a fab server,
whose token's user is the fab id; it may sync (CloudSync) as that fab and download artifacts,
nothing else.

A token is 32 random bytes (``secrets.token_urlsafe``); only its SHA-256 is kept, so a copy of
the database yields no usable token. It is looked up by digest: timing that leaks how much of a
digest matched tells an attacker nothing about a token that hashes to it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Literal, get_args

from cloud.errors import NotFound
from cloud.storage import tokens as repository
from cloud.storage.db import Database
from cloud.storage.tokens import ApiToken
from wafercore.errors import InvalidInput
from wafercore.validation import check_id

Role = Literal["viewer", "ml-engineer", "admin", "fab"]
ROLES: tuple[Role, ...] = ("viewer", "ml-engineer", "admin")
"""The people's roles, least first."""
FAB: Role = "fab"
"""The role of a fab server's token (outside the people's order)."""
TOKEN_BYTES = 32
"""Random bytes in a token (43 URL-safe characters)."""
MAX_TOKEN_CHARS = 512
"""A presented token longer than this is not looked up (it cannot be one of ours)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling, as their token says."""

    user: str
    role: Role


def role_at_least(role: Role, minimum: Role) -> bool:
    """Whether ``role`` may do what ``minimum`` may (``fab`` only what ``fab`` may)."""
    if role not in ROLES or minimum not in ROLES:
        return role == minimum
    return ROLES.index(role) >= ROLES.index(minimum)


def check_role(value: str, field: str = "role") -> Role:
    """``value`` as a `Role`.

    Raises:
        InvalidInput: naming ``field`` when it is not a role.
    """
    for role in get_args(Role):
        if value == role:
            return role
    raise InvalidInput(field, f"{value!r} is not a role; one of {', '.join(get_args(Role))}")


def token_digest(token: str) -> str:
    """The hex SHA-256 of a token, as stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def add_token(db: Database, *, user: str, role: str) -> str:
    """Issue a new token to ``user`` with ``role``.

    Returns:
        The token itself: shown once, never stored.

    Raises:
        InvalidInput: ``user`` is not a valid id, or ``role`` is not a role.
    """
    check_id(user, "user")
    checked = check_role(role)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    with db.session() as session:
        repository.add_token(session, user=user, role=checked, digest=token_digest(token))
    return token


def authenticate(db: Database, token: str) -> Principal | None:
    """The holder of an unrevoked ``token``, or None."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    with db.session() as session:
        found = repository.find_active(session, digest=token_digest(token))
    if found is None:
        return None
    return Principal(user=found.user, role=check_role(found.role))


def revoke_token(db: Database, token_id: int) -> ApiToken:
    """Revoke token ``token_id``; revoking it again changes nothing.

    Raises:
        NotFound: no such token.
    """
    with db.session() as session:
        revoked = repository.revoke_token(session, token_id=token_id)
    if revoked is None:
        raise NotFound("token", str(token_id))
    return revoked


def list_tokens(db: Database, *, include_revoked: bool = False) -> list[ApiToken]:
    """The issued tokens (holder, role, dates; never the token), oldest first."""
    with db.session() as session:
        return repository.list_tokens(session, include_revoked=include_revoked)
