"""Node credentials on SQLite: tokens and certificates issued, looked up, revoked, listed."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server.certs import DevCerts, make_dev_certs
from fab_server.db import make_async_engine, migrate, session_factory
from fab_server.domain import CredentialKind
from fab_server.errors import Conflict
from fab_server.services import nodes
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


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("pki"), clients=("edge-01", "edge-02"))


def _stored(db: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT node_id, kind, digest FROM node_credentials ORDER BY id")
        return [tuple(r) for r in rows]


@pytest.mark.asyncio
async def test_a_token_is_returned_once_and_only_its_digest_is_stored(
    sessions: Sessions, db: Path
) -> None:
    token = await nodes.add_token(sessions, node_id="edge-01")
    assert token.startswith("wfn_") and len(token) >= 40
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert _stored(db) == [("edge-01", "token", digest)]
    assert token not in db.read_bytes().decode("latin-1")
    assert await nodes.node_for_token(sessions, token=token) == "edge-01"
    assert await nodes.add_token(sessions, node_id="edge-01") != token  # random each time


@pytest.mark.parametrize(
    "token", ["", "wfn_", "wfn_not-issued", "no-prefix-at-all", "wfn_" + "a" * 300]
)
@pytest.mark.asyncio
async def test_unknown_tokens_name_no_node(sessions: Sessions, token: str) -> None:
    await nodes.add_token(sessions, node_id="edge-01")
    assert await nodes.node_for_token(sessions, token=token) is None


@pytest.mark.asyncio
async def test_revoke_ends_every_credential_of_the_node_and_only_of_that_node(
    sessions: Sessions, pki: DevCerts
) -> None:
    first = await nodes.add_token(sessions, node_id="edge-01")
    second = await nodes.add_token(sessions, node_id="edge-01")
    cert = pki.clients["edge-01"].cert.read_bytes()
    await nodes.add_certificate(sessions, node_id="edge-01", cert_pem=cert)
    other = await nodes.add_token(sessions, node_id="edge-02")

    assert await nodes.revoke(sessions, node_id="edge-01") == 3
    assert await nodes.node_for_token(sessions, token=first) is None
    assert await nodes.node_for_token(sessions, token=second) is None
    assert not await nodes.certificate_is_enrolled(sessions, node_id="edge-01", cert_pem=cert)
    assert await nodes.node_for_token(sessions, token=other) == "edge-02"
    assert await nodes.revoke(sessions, node_id="edge-01") == 0
    assert await nodes.revoke(sessions, node_id="edge-unknown") == 0


@pytest.mark.asyncio
async def test_a_certificate_is_enrolled_for_its_common_name_only(
    sessions: Sessions, db: Path, pki: DevCerts
) -> None:
    pem = pki.clients["edge-01"].cert.read_bytes()
    credential = await nodes.add_certificate(sessions, node_id="edge-01", cert_pem=pem)
    assert (credential.node_id, credential.kind) == ("edge-01", CredentialKind.CERTIFICATE)
    assert _stored(db) == [("edge-01", "certificate", nodes.certificate_fingerprint(pem))]
    assert await nodes.certificate_is_enrolled(sessions, node_id="edge-01", cert_pem=pem)
    assert not await nodes.certificate_is_enrolled(sessions, node_id="edge-02", cert_pem=pem)
    other = pki.clients["edge-02"].cert.read_bytes()  # same CA, never enrolled
    assert not await nodes.certificate_is_enrolled(sessions, node_id="edge-02", cert_pem=other)
    assert not await nodes.certificate_is_enrolled(sessions, node_id="edge-01", cert_pem=b"junk")
    # Enrolling again changes nothing; a certificate is not a token.
    assert await nodes.add_certificate(sessions, node_id="edge-01", cert_pem=pem) == credential
    assert len(_stored(db)) == 1
    assert await nodes.node_for_token(sessions, token=pem.decode()) is None


@pytest.mark.asyncio
async def test_a_certificate_of_another_node_or_no_certificate_is_refused(
    sessions: Sessions, db: Path, pki: DevCerts
) -> None:
    pem = pki.clients["edge-02"].cert.read_bytes()
    with pytest.raises(InvalidInput, match="common name is 'edge-02', not the node id 'edge-01'"):
        await nodes.add_certificate(sessions, node_id="edge-01", cert_pem=pem)
    with pytest.raises(InvalidInput, match=r"^certificate: holds no PEM certificate"):
        await nodes.add_certificate(
            sessions, node_id="edge-01", cert_pem=pki.clients["edge-01"].key.read_bytes()
        )
    assert _stored(db) == []


@pytest.mark.asyncio
async def test_a_revoked_certificate_cannot_be_enrolled_again(
    sessions: Sessions, pki: DevCerts
) -> None:
    pem = pki.clients["edge-01"].cert.read_bytes()
    await nodes.add_certificate(sessions, node_id="edge-01", cert_pem=pem)
    await nodes.revoke(sessions, node_id="edge-01")
    with pytest.raises(Conflict, match=r"revoked at .*issue the node a new one"):
        await nodes.add_certificate(sessions, node_id="edge-01", cert_pem=pem)
    assert not await nodes.certificate_is_enrolled(sessions, node_id="edge-01", cert_pem=pem)


@pytest.mark.parametrize("node_id", ["", "   ", "edge\x00-1", "edge\x1b[31m", "n" * 129])
@pytest.mark.asyncio
async def test_bad_node_ids_are_refused_naming_the_field(sessions: Sessions, node_id: str) -> None:
    with pytest.raises(InvalidInput) as token:
        await nodes.add_token(sessions, node_id=node_id)
    with pytest.raises(InvalidInput) as revoked:
        await nodes.revoke(sessions, node_id=node_id)
    assert token.value.field == revoked.value.field == "node_id"


@pytest.mark.asyncio
async def test_list_nodes_summarises_each_node(sessions: Sessions, pki: DevCerts) -> None:
    assert await nodes.list_nodes(sessions) == []
    await nodes.add_token(sessions, node_id="edge-02")
    await nodes.add_certificate(
        sessions, node_id="edge-02", cert_pem=pki.clients["edge-02"].cert.read_bytes()
    )
    await nodes.add_token(sessions, node_id="edge-01")
    await nodes.revoke(sessions, node_id="edge-01")

    gone, active = await nodes.list_nodes(sessions)
    assert (gone.node_id, gone.active_kinds, gone.credentials) == ("edge-01", (), 1)
    assert gone.revoked_at is not None and gone.revoked_at >= gone.created_at
    assert active.node_id == "edge-02" and active.credentials == 2
    assert active.active_kinds == (CredentialKind.TOKEN, CredentialKind.CERTIFICATE)
    assert active.revoked_at is None
