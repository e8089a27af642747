"""The review UI's users: add, authenticate, disable, list.

Passwords are stored as ``scrypt$n$r$p$salt$hash`` (hashlib.scrypt, a random 16-byte salt per
user), so a copy of the database yields no password and the same password of two users hashes
differently. `authenticate` compares in constant time and spends the same scrypt work on an
unknown or disabled user as on a known one, so its answer time does not tell which names
exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import UTC, datetime
from typing import get_args

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.api_tokens import Principal
from fab_server.errors import Conflict
from fab_server.repository import users as repo
from fab_server.settings import Role
from wafercore.errors import InvalidInput
from wafercore.validation import check_id

# scrypt cost: 16 MiB and ~50 ms per check on one core, OWASP's minimum for scrypt.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024  # longer inputs are refused before hashing (no work amplification)
_DUMMY_HASH: str | None = None

Sessions = async_sessionmaker[AsyncSession]


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """The storable scrypt hash of ``password`` with a fresh random salt."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, n, r, p)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a `hash_password` string (constant-time comparison)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


async def add_user(
    sessions: Sessions, *, user: str, role: str, password: str, now: datetime | None = None
) -> domain.User:
    """Create a user who can sign in to the review UI.

    Raises:
        InvalidInput: a malformed name, an unknown role, or a password shorter than
            ``MIN_PASSWORD_CHARS`` (or absurdly long).
        Conflict: the name is taken (also by a disabled user: names are never reused).
    """
    check_id(user, "user")
    if role not in get_args(Role):
        raise InvalidInput("role", f"must be one of {', '.join(get_args(Role))}, not {role!r}")
    _check_password(password)
    password_hash = hash_password(password)
    async with sessions.begin() as session:
        if await repo.get_user(session, user=user) is not None:
            raise Conflict(f"user {user!r} exists already")
        return await repo.insert_user(
            session,
            user=user,
            role=role,
            password_hash=password_hash,
            created_at=now or datetime.now(UTC),
        )


async def authenticate(sessions: Sessions, *, user: str, password: str) -> Principal | None:
    """The signed-in principal when ``user`` exists, is enabled and ``password`` matches.

    None for every failure alike (unknown user, disabled, wrong password), after the same
    scrypt work, so callers answer with one generic message.
    """
    if len(password) > MAX_PASSWORD_CHARS or len(user) > 128:
        return None
    async with sessions() as session:
        found = await repo.get_credentials(session, user=user)
    if found is None:
        verify_password(password, _dummy_hash())
        return None
    account, stored = found
    matches = verify_password(password, stored)
    if not matches or account.disabled_at is not None:
        return None
    role: Role = "admin" if account.role == "admin" else "engineer"
    return Principal(account.user, role)


async def disable(sessions: Sessions, *, user: str, now: datetime | None = None) -> bool:
    """Disable ``user``: their next sign-in fails; False when no enabled user has that name."""
    async with sessions.begin() as session:
        return await repo.disable_user(session, user=user, disabled_at=now or datetime.now(UTC))


async def is_enabled(sessions: Sessions, *, user: str) -> bool:
    """Whether ``user`` exists and is not disabled (checked on every signed-in request)."""
    async with sessions() as session:
        account = await repo.get_user(session, user=user)
    return account is not None and account.disabled_at is None


async def list_users(sessions: Sessions) -> list[domain.User]:
    """Every user, enabled or disabled, by name."""
    async with sessions() as session:
        return await repo.list_users(session)


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidInput("password", f"must have at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidInput("password", f"must have at most {MAX_PASSWORD_CHARS} characters")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=2**26, dklen=32)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _dummy_hash() -> str:
    # Made once per process: an unknown user's check costs the same scrypt as a real one.
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
    return _DUMMY_HASH
