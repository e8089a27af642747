"""Who is calling FabService and what they may do (the contract comment of ``fab.proto``).

The caller is resolved from the call, first match wins:

1. ``authorization: Bearer <token>`` holding a configured API token (``settings.api_tokens``,
   the HTTP API's table): a person, with their user name and role.
2. The peer's client certificate (mutual TLS): the node its common name names, only if this
   very certificate is enrolled (``wafer-fab nodes add``) and not revoked. A presented
   certificate decides: one not enrolled is refused even with a node token beside it.
3. A node token in the bearer header: the node it was issued to, unless revoked.
4. No credential at all and ``settings.grpc_allow_unauthenticated``: an anonymous caller,
   trusted as whichever node a request names (one-machine demos only).

Anything else is `Unauthenticated`. A credential that is presented but not valid is refused
even when anonymous calls are allowed: a misconfigured node should fail loudly, not write as
nobody. Then the rules: StreamResults, PushMetrics, GetModelAssignment and DownloadModel are for
nodes, about themselves; GetLotSummary is for people; FlagForReview for people, or a node for
its own results; ClassifyBatch for both. Breaking a rule is `PermissionDenied`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server.api_tokens import ApiTokenTable
from fab_server.errors import FabError
from fab_server.services import nodes
from fab_server.settings import FabSettings, Role
from wafercore import grpc_auth
from wafercore.validation import check_id

_NO_CREDENTIALS = (
    "no credentials: send 'authorization: Bearer <token>' (a node token from `wafer-fab nodes "
    "add`, or an API token) or a client certificate enrolled at this fab"
)


class Unauthenticated(FabError):  # noqa: N818 (named as gRPC's status, like NotFound)
    """No valid credential (gRPC UNAUTHENTICATED)."""


class PermissionDenied(FabError):  # noqa: N818 (named as gRPC's status)
    """A valid caller asked for what its kind may not do, or named another node."""


class CallerKind(enum.StrEnum):
    """What kind of caller a credential proves."""

    PERSON = "person"
    NODE = "node"
    ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Caller:
    """An authenticated caller.

    Attributes:
        kind: person, node, or anonymous (only with ``grpc_allow_unauthenticated``).
        name: the user name or node id, recorded as who did what; for an anonymous caller
            acting as a node (see `Authenticator.node`), the node it claims.
        role: a person's role; None for nodes.
    """

    kind: CallerKind
    name: str = ""
    role: Role | None = None
    # What proved a node's identity, kept to check it again during a long stream. Not in the
    # repr: a token must not reach a log line.
    token: str | None = field(default=None, repr=False)
    cert_pem: bytes | None = field(default=None, repr=False)


def bearer_token(metadata: Iterable[tuple[str, Any]]) -> str | None:
    """The token of the call's ``authorization: Bearer`` header, or None when there is none.

    Raises:
        Unauthenticated: the header is repeated or is not ``Bearer <token>``.
    """
    try:
        return grpc_auth.bearer_token(metadata)
    except ValueError as err:
        raise Unauthenticated(str(err)) from None


def peer_certificate(context: Any) -> tuple[str, bytes] | None:
    """The common name and PEM of the peer's client certificate, or None without mTLS.

    Raises:
        Unauthenticated: a certificate without one readable common name.
    """
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        return None
    names = auth.get("x509_common_name") or []
    try:
        common_name = names[0].decode() if len(names) == 1 else ""
    except UnicodeDecodeError:
        common_name = ""
    if not common_name:
        raise Unauthenticated("the client certificate has no usable common name (the node id)")
    return common_name, bytes(pems[0])


def require_node_kind(caller: Caller) -> Caller:
    """The caller if a node (or anonymous, trusted as a node).

    Raises:
        PermissionDenied: a person.
    """
    if caller.kind is CallerKind.PERSON:
        raise PermissionDenied("only edge nodes make this call, with their own credentials")
    return caller


def require_node(caller: Caller, node_id: str, field_name: str = "node_id") -> Caller:
    """The caller acting as ``node_id``: a node about itself (or anonymous, when allowed).

    Raises:
        PermissionDenied: a person, or a node naming another node.
        InvalidInput: ``node_id`` is not a valid id (checked after the caller's kind).
    """
    require_node_kind(caller)
    check_id(node_id, field_name)
    if caller.kind is CallerKind.ANONYMOUS:
        return Caller(CallerKind.ANONYMOUS, name=node_id)
    if node_id != caller.name:
        raise PermissionDenied(
            f"{field_name}: {node_id!r} is not the calling node {caller.name!r}; "
            "a node acts only as itself"
        )
    return caller


def require_person(caller: Caller) -> Caller:
    """The caller if a person (an API token's holder).

    Raises:
        PermissionDenied: a node or an anonymous caller.
    """
    if caller.kind is not CallerKind.PERSON:
        raise PermissionDenied("only people (API tokens) make this call, not edge nodes")
    return caller


class Authenticator:
    """Resolves the caller of a FabService call (see the module docstring for the order)."""

    def __init__(self, settings: FabSettings, sessions: async_sessionmaker[AsyncSession]) -> None:
        """Index the API tokens.

        Raises:
            ValueError: ``settings.api_tokens`` is inconsistent (see `ApiTokenTable`).
        """
        self._people = ApiTokenTable(settings.api_tokens)
        self._sessions = sessions
        self._allow_anonymous = settings.grpc_allow_unauthenticated

    async def authenticate(self, context: Any) -> Caller:
        """The caller of this call.

        Raises:
            Unauthenticated: no valid credential (and anonymous calls not allowed).
        """
        token = bearer_token(context.invocation_metadata() or ())
        if token is not None:
            person = self._people.authenticate(token)
            if person is not None:
                return Caller(CallerKind.PERSON, name=person.user, role=person.role)
        certificate = peer_certificate(context)
        if certificate is not None:
            common_name, pem = certificate
            if await nodes.certificate_is_enrolled(
                self._sessions, node_id=common_name, cert_pem=pem
            ):
                return Caller(CallerKind.NODE, name=common_name, cert_pem=pem)
            raise Unauthenticated(
                f"the client certificate of {common_name!r} is not enrolled at this fab, or "
                "was revoked (`wafer-fab nodes add --certificate`)"
            )
        if token is not None:
            node_id = await nodes.node_for_token(self._sessions, token=token)
            if node_id is not None:
                return Caller(CallerKind.NODE, name=node_id, token=token)
            raise Unauthenticated("the bearer token is not valid at this fab (unknown or revoked)")
        if self._allow_anonymous:
            return Caller(CallerKind.ANONYMOUS)
        raise Unauthenticated(_NO_CREDENTIALS)

    async def still_valid(self, caller: Caller) -> None:
        """Check again that a node's credential is not revoked (a cheap indexed lookup).

        Raises:
            Unauthenticated: the credential was revoked since the call began.
        """
        if caller.kind is not CallerKind.NODE:
            return  # API tokens change only with the settings, that is with a restart
        if caller.cert_pem is not None:
            valid = await nodes.certificate_is_enrolled(
                self._sessions, node_id=caller.name, cert_pem=caller.cert_pem
            )
        else:
            token = caller.token or ""
            valid = await nodes.node_for_token(self._sessions, token=token) == caller.name
        if not valid:
            raise Unauthenticated(f"the credential of node {caller.name!r} was revoked")

    async def node(self, context: Any, node_id: str) -> Caller:
        """The caller, if a node acting as ``node_id`` (see `require_node`)."""
        return require_node(await self.authenticate(context), node_id)

    async def person(self, context: Any) -> Caller:
        """The caller, if a person (see `require_person`)."""
        return require_person(await self.authenticate(context))

    async def person_or_node(self, context: Any, node_id: str) -> Caller:
        """The caller, if a person, or a node acting as ``node_id`` (FlagForReview)."""
        caller = await self.authenticate(context)
        if caller.kind is CallerKind.PERSON:
            return caller
        return require_node(caller, node_id)
