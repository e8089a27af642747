"""Edge node identity: the tokens and client certificates a fab accepts from its nodes.

A node proves who it is with a token the fab issued (`add_token`) or with a client certificate
whose common name is its id (`add_certificate`, over mutual TLS). Only SHA-256 digests are
stored (of the token string, of the certificate's DER), so a copy of the database lets nobody
act as a node. `revoke` ends every credential of a node at once; a revoked credential stays
in the table, so it can never be enrolled again by mistake.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.errors import Conflict
from fab_server.repository import nodes as repo
from wafercore.errors import InvalidInput
from wafercore.validation import check_id

TOKEN_PREFIX = "wfn_"
"""Start of every node token: tells a leaked secret's kind at a glance (and to scanners)."""
MAX_TOKEN_CHARS = 256
"""Longer bearer strings are no token of ours: refused without a database lookup."""


@dataclass(frozen=True)
class NodeSummary:
    """One node's credentials, as ``wafer-fab nodes list`` shows them."""

    node_id: str
    active_kinds: tuple[domain.CredentialKind, ...]
    """Kinds of the credentials not revoked (empty: the node cannot call the fab)."""
    credentials: int
    """Credentials ever issued to the node, revoked ones included."""
    created_at: datetime
    """When its first credential was issued."""
    revoked_at: datetime | None
    """When its last credential was revoked; None while one is active."""


def token_digest(token: str) -> str:
    """The stored form of a node token: lowercase hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(token.encode()).hexdigest()


def _load_certificate(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise InvalidInput("certificate", "holds no PEM certificate") from None


def certificate_fingerprint(cert_pem: bytes) -> str:
    """The stored form of a client certificate: lowercase hex SHA-256 of its DER encoding.

    Raises:
        InvalidInput: ``cert_pem`` holds no PEM certificate.
    """
    der = _load_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def _common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        return None
    return names[0].value


async def add_token(sessions: async_sessionmaker[AsyncSession], *, node_id: str) -> str:
    """Issue a new token to ``node_id`` (the node's other credentials stay valid).

    Returns:
        The token, ``wfn_`` and 43 URL-safe characters. It is not stored: show it once.

    Raises:
        InvalidInput: ``node_id`` is not a valid id.
    """
    check_id(node_id, "node_id")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    async with sessions() as session, session.begin():
        await repo.insert_credential(
            session,
            node_id=node_id,
            kind=domain.CredentialKind.TOKEN,
            digest=token_digest(token),
            created_at=datetime.now(UTC),
        )
    return token


async def add_certificate(
    sessions: async_sessionmaker[AsyncSession], *, node_id: str, cert_pem: bytes
) -> domain.NodeCredential:
    """Enrol an existing client certificate of ``node_id`` (idempotent while not revoked).

    The certificate's chain of trust is checked by TLS (``settings.tls_client_ca``) on each
    connection; enrolment adds that the fab knows this very certificate, so one issued by the
    CA but never enrolled, or revoked, is refused.

    Raises:
        InvalidInput: a bad ``node_id``, no PEM certificate, or a certificate whose common name
            is not ``node_id``.
        Conflict: the certificate was revoked (issue a new one), or is enrolled for another node.
    """
    check_id(node_id, "node_id")
    cert = _load_certificate(cert_pem)
    common_name = _common_name(cert)
    if common_name != node_id:
        raise InvalidInput(
            "certificate", f"its common name is {common_name!r}, not the node id {node_id!r}"
        )
    digest = certificate_fingerprint(cert_pem)
    async with sessions() as session, session.begin():
        known = await repo.find_by_digest(session, digest=digest)
        if known is None:
            return await repo.insert_credential(
                session,
                node_id=node_id,
                kind=domain.CredentialKind.CERTIFICATE,
                digest=digest,
                created_at=datetime.now(UTC),
            )
    if known.node_id != node_id or known.kind is not domain.CredentialKind.CERTIFICATE:
        raise Conflict(f"certificate: already enrolled for node {known.node_id!r}")
    if known.revoked_at is not None:
        # A revoked certificate may be in the wrong hands: never take it back.
        raise Conflict(
            f"certificate: revoked at {known.revoked_at.isoformat()}; issue the node a new one"
        )
    return known


async def revoke(sessions: async_sessionmaker[AsyncSession], *, node_id: str) -> int:
    """Revoke every credential of ``node_id``; its next call (or stream batch) is refused.

    Returns:
        How many credentials were revoked (0: the node had none active).

    Raises:
        InvalidInput: ``node_id`` is not a valid id.
    """
    check_id(node_id, "node_id")
    async with sessions() as session, session.begin():
        return await repo.revoke_node(session, node_id=node_id, revoked_at=datetime.now(UTC))


async def list_nodes(sessions: async_sessionmaker[AsyncSession]) -> list[NodeSummary]:
    """Every node that was ever issued a credential, by node id."""
    async with sessions() as session:
        credentials = await repo.list_credentials(session)
    by_node: dict[str, list[domain.NodeCredential]] = {}
    for credential in credentials:
        by_node.setdefault(credential.node_id, []).append(credential)
    summaries = []
    for node_id, issued in by_node.items():
        active = {c.kind for c in issued if c.revoked_at is None}
        revocations = [c.revoked_at for c in issued if c.revoked_at is not None]
        summaries.append(
            NodeSummary(
                node_id=node_id,
                active_kinds=tuple(k for k in domain.CredentialKind if k in active),
                credentials=len(issued),
                created_at=min(c.created_at for c in issued),
                revoked_at=None if active else max(revocations),
            )
        )
    return summaries


async def node_for_token(sessions: async_sessionmaker[AsyncSession], *, token: str) -> str | None:
    """The node a token was issued to, or None when it is unknown or revoked."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_CHARS:
        return None
    async with sessions() as session:
        found = await repo.find_by_digest(session, digest=token_digest(token))
    if found is None or found.revoked_at is not None:
        return None
    if found.kind is not domain.CredentialKind.TOKEN:
        return None
    return found.node_id


async def certificate_is_enrolled(
    sessions: async_sessionmaker[AsyncSession], *, node_id: str, cert_pem: bytes
) -> bool:
    """Whether ``cert_pem`` is enrolled for ``node_id`` and not revoked.

    Anything unreadable is simply not enrolled: a caller's bad certificate must be refused as
    a credential, never fail as a request.
    """
    try:
        digest = certificate_fingerprint(cert_pem)
    except InvalidInput:
        return False
    async with sessions() as session:
        found = await repo.find_by_digest(session, digest=digest)
    return (
        found is not None
        and found.revoked_at is None
        and found.kind is domain.CredentialKind.CERTIFICATE
        and found.node_id == node_id
    )
