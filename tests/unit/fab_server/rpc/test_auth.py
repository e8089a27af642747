"""FabService's caller rules without a server: the bearer header, who may act as which node."""

from __future__ import annotations

import pytest

from fab_server.rpc.auth import (
    Caller,
    CallerKind,
    PermissionDenied,
    Unauthenticated,
    bearer_token,
    require_node,
    require_person,
)
from wafercore.errors import InvalidInput

NODE = Caller(CallerKind.NODE, name="edge-1", token="wfn_secret")
PERSON = Caller(CallerKind.PERSON, name="ana", role="engineer")
ANONYMOUS = Caller(CallerKind.ANONYMOUS)


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ((), None),
        ((("user-agent", "grpc"),), None),
        ((("authorization", "Bearer wfn_abc"),), "wfn_abc"),
        ((("authorization", "bearer   wfn_abc  "),), "wfn_abc"),
    ],
)
def test_the_bearer_token_is_read_from_the_metadata(
    metadata: tuple[tuple[str, str], ...], token: str | None
) -> None:
    assert bearer_token(metadata) == token


@pytest.mark.parametrize(
    "metadata",
    [
        (("authorization", "Basic dXNlcjpwYXNz"),),
        (("authorization", "Bearer"),),
        (("authorization", "Bearer a"), ("authorization", "Bearer b")),
    ],
)
def test_a_malformed_or_repeated_header_is_unauthenticated(
    metadata: tuple[tuple[str, str], ...],
) -> None:
    with pytest.raises(Unauthenticated):
        bearer_token(metadata)


def test_a_node_acts_only_as_itself_and_a_person_never_as_a_node() -> None:
    assert require_node(NODE, "edge-1") is NODE
    with pytest.raises(PermissionDenied, match="'edge-2' is not the calling node 'edge-1'"):
        require_node(NODE, "edge-2")
    with pytest.raises(PermissionDenied, match="only edge nodes"):
        require_node(PERSON, "edge-1")
    with pytest.raises(InvalidInput) as blank:
        require_node(NODE, "")
    assert blank.value.field == "node_id"


def test_an_anonymous_caller_is_trusted_as_the_node_it_names() -> None:
    acting = require_node(ANONYMOUS, "edge-9")
    assert (acting.kind, acting.name) == (CallerKind.ANONYMOUS, "edge-9")
    with pytest.raises(PermissionDenied, match="only people"):
        require_person(ANONYMOUS)


def test_people_only_means_people() -> None:
    assert require_person(PERSON) is PERSON
    with pytest.raises(PermissionDenied):
        require_person(NODE)


def test_a_caller_never_shows_its_secret() -> None:
    assert "wfn_secret" not in repr(NODE)
