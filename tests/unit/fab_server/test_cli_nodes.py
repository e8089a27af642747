"""``wafer-fab nodes add | revoke | list`` on an embedded SQLite database."""

from __future__ import annotations

import hashlib
import sqlite3
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fab_server.certs import DevCerts, make_dev_certs
from fab_server.cli import main


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = {"FAB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'fab.db'}"}
    migrated = CliRunner().invoke(main, ["migrate"], env=env)
    assert migrated.exit_code == 0, migrated.output
    return env


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("pki"), clients=("edge-07", "edge-08"))


def _credentials(env: dict[str, str]) -> list[tuple[str, str, str, bool]]:
    db = env["FAB_DATABASE_URL"].removeprefix("sqlite+aiosqlite:///")
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT node_id, kind, digest, revoked_at IS NOT NULL FROM node_credentials ORDER BY id"
        )
        return [(r[0], r[1], r[2], bool(r[3])) for r in rows]


def _fingerprint(pem: bytes) -> str:
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def test_add_prints_a_token_once_and_stores_only_its_digest(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["nodes", "add", "edge-07"], env=env)
    assert result.exit_code == 0, result.output
    [token] = [line for line in result.output.splitlines() if line.startswith("wfn_")]
    assert "EDGE_NODE_TOKEN" in result.output
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert _credentials(env) == [("edge-07", "token", digest, False)]


def test_add_issues_a_client_certificate_from_the_ca_and_enrols_it(
    env: dict[str, str], pki: DevCerts, tmp_path: Path
) -> None:
    out = tmp_path / "issued"
    args = ["nodes", "add", "edge-09", "--cert-dir", str(out)]
    args += ["--ca-cert", str(pki.ca.cert), "--ca-key", str(pki.ca.key)]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    pem = (out / "edge-09.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edge-09"
    assert cert.issuer == x509.load_pem_x509_certificate(pki.ca.cert.read_bytes()).subject
    assert stat.S_IMODE((out / "edge-09.key").stat().st_mode) == 0o600
    assert _credentials(env) == [("edge-09", "certificate", _fingerprint(pem), False)]
    assert "EDGE_TLS_CERT=" in result.output and "wfn_" not in result.output


def test_add_enrols_an_existing_certificate_of_that_node_only(
    env: dict[str, str], pki: DevCerts
) -> None:
    runner = CliRunner()
    cert = pki.clients["edge-07"].cert
    ok = runner.invoke(main, ["nodes", "add", "edge-07", "--certificate", str(cert)], env=env)
    assert ok.exit_code == 0, ok.output
    assert _fingerprint(cert.read_bytes()) in ok.output
    wrong = runner.invoke(main, ["nodes", "add", "edge-08", "--certificate", str(cert)], env=env)
    assert wrong.exit_code == 1 and "not the node id 'edge-08'" in wrong.output
    assert [c[:2] for c in _credentials(env)] == [("edge-07", "certificate")]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cert-dir", "DIR"], "--cert-dir needs --ca-cert and --ca-key"),
        (["--ca-cert", "CA"], "--ca-cert and --ca-key issue a certificate into --cert-dir"),
        (["--certificate", "CA", "--cert-dir", "DIR"], "--certificate enrols an existing"),
    ],
)
def test_add_refuses_contradictory_options(
    env: dict[str, str], pki: DevCerts, tmp_path: Path, extra: list[str], message: str
) -> None:
    paths = {"DIR": str(tmp_path / "out"), "CA": str(pki.ca.cert)}
    args = ["nodes", "add", "edge-07", *(paths.get(a, a) for a in extra)]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 2 and message in result.output
    assert _credentials(env) == []


def test_a_bad_node_id_exits_with_the_reason(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["nodes", "add", " "], env=env)
    assert result.exit_code == 1 and "node_id: must not be blank" in result.output


def test_revoke_then_list(env: dict[str, str], pki: DevCerts) -> None:
    runner = CliRunner()
    for args in (
        ["nodes", "add", "edge-07"],
        ["nodes", "add", "edge-07", "--certificate", str(pki.clients["edge-07"].cert)],
        ["nodes", "add", "edge-08"],
    ):
        assert runner.invoke(main, args, env=env).exit_code == 0
    revoked = runner.invoke(main, ["nodes", "revoke", "edge-07"], env=env)
    assert revoked.exit_code == 0 and "revoked 2 credentials" in revoked.output
    assert [c[3] for c in _credentials(env)] == [True, True, False]
    again = runner.invoke(main, ["nodes", "revoke", "edge-07"], env=env)
    assert again.exit_code == 1 and "no credential to revoke" in again.output

    listed = runner.invoke(main, ["nodes", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    header, first, second = listed.output.splitlines()
    assert header.split() == ["node", "kinds", "created", "revoked"]
    assert first.split()[:2] == ["edge-07", "-"] and first.split()[3] != "-"
    assert second.split()[:2] == ["edge-08", "token"] and second.split()[3] == "-"


def test_list_says_when_no_node_is_enrolled(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["nodes", "list"], env=env)
    assert result.exit_code == 0 and "no node enrolled" in result.output
