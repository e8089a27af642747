"""Command line of the fab server (``wafer-fab``): migrate, serve, seed, certs, models, nodes,
users, sync."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server.app import FabServer, NotMigrated
from fab_server.certs import CertPair, issue_client_cert, make_dev_certs
from fab_server.db import make_async_engine, migrate, session_factory
from fab_server.errors import FabError
from fab_server.services import distribution, nodes, users
from fab_server.services.classify import Classifier
from fab_server.services.seed import seed_synthetic
from fab_server.settings import FabSettings
from fab_server.sync import agent as sync_agent
from fab_server.sync.client import SyncError
from wafercore.errors import InvalidInput

T = TypeVar("T")
Sessions = async_sessionmaker[AsyncSession]


@click.group(
    help="Fab server: aggregates edge results, runs the review queue and distributes models. "
    "Configured by FAB_* environment variables (FAB_DATABASE_URL, FAB_GRPC_PORT, ...)."
)
@click.version_option(package_name="wafer-platform")
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Entry point of ``wafer-fab``."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = FabSettings()


@main.command("migrate", help="Upgrade the database schema to this version's head.")
@click.pass_obj
def migrate_cmd(settings: FabSettings) -> None:
    """Run Alembic's upgrade to head."""
    migrate(settings.database_url, settings.db_schema)
    click.echo(f"database migrated to head: {_safe_url(settings.database_url)}")


@main.command(help="Serve gRPC (FabService), the HTTP API and the alert loop until stopped.")
@click.option("--migrate", "run_migrate", is_flag=True, help="Migrate the database first.")
@click.pass_obj
def serve(settings: FabSettings, run_migrate: bool) -> None:
    """Run the fab server in the foreground."""
    if run_migrate:
        migrate(settings.database_url, settings.db_schema)
    server = FabServer(settings)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(server.serve_forever())
    except NotMigrated as exc:
        raise click.ClickException(str(exc)) from None
    except (ValueError, RuntimeError, OSError) as exc:
        raise click.ClickException(f"cannot start: {exc}") from None


@main.command(help="Store N synthetic wafers classified by the default model (demo data).")
@click.option("--synthetic", "count", type=click.IntRange(1, 1_000_000), required=True)
@click.option("--seed", default=0, show_default=True, help="Random seed of the generator.")
@click.pass_obj
def seed(settings: FabSettings, count: int, seed: int) -> None:
    """Generate, classify and store synthetic wafers."""

    async def run() -> None:
        engine = make_async_engine(settings.database_url, settings.db_schema)
        try:
            outcome = await seed_synthetic(
                session_factory(engine),
                Classifier(settings.model_dir),
                settings=settings,
                count=count,
                seed=seed,
            )
        finally:
            await engine.dispose()
        click.echo(
            f"stored {outcome.accepted:,} synthetic results (node {outcome.node_id}, "
            f"up to sequence {outcome.acked_sequence:,})"
        )

    asyncio.run(run())


@main.command(help="Make a development CA, a server certificate and edge client certificates.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--host", "hosts", multiple=True, default=("localhost", "127.0.0.1"))
@click.option("--client", "clients", multiple=True, default=("edge-dev",), help="Node ids.")
def certs(out: Path, hosts: tuple[str, ...], clients: tuple[str, ...]) -> None:
    """Write PEM files for mutual TLS between edge nodes and the fab server."""
    try:
        made = make_dev_certs(out, hosts=hosts, clients=clients)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    click.echo(f"CA:     {made.ca.cert}")
    click.echo(f"server: {made.server.cert} (key {made.server.key})")
    for node, pair in made.clients.items():
        click.echo(f"client {node}: {pair.cert} (key {pair.key})")
    click.echo(
        f"serve with FAB_TLS_CERT={made.server.cert} FAB_TLS_KEY={made.server.key} "
        f"FAB_TLS_CLIENT_CA={made.ca.cert}"
    )


@main.group(help="Publish signed model artifacts and tell nodes which version to run.")
def models() -> None:
    """The ``models`` commands."""


@models.command(
    "register", help="Register a signed artifact FILE (its signature is read from FILE.sig)."
)
@click.option(
    "--artifact",
    "artifact_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Artifact from 'wafer-cloud package'.",
)
@click.option("--version", required=True, help="Model version, like trm-v1.1.0.")
@click.option("--key-id", required=True, help="Id of the key that signed it.")
@click.option(
    "--format",
    "artifact_format",
    default=distribution.DEFAULT_FORMAT,
    show_default=True,
    help="What runs it on the nodes.",
)
@click.pass_obj
def models_register(
    settings: FabSettings, artifact_path: Path, version: str, key_id: str, artifact_format: str
) -> None:
    """Copy an artifact into the fab's artifact store and register it."""
    signature_path = artifact_path.with_name(artifact_path.name + ".sig")
    if not signature_path.is_file():
        raise click.BadParameter(
            f"no signature {signature_path} beside the artifact", param_hint="--artifact"
        )
    signature = signature_path.read_bytes()

    async def run() -> None:
        engine = make_async_engine(settings.database_url, settings.db_schema)
        try:
            artifact = await distribution.register_artifact(
                session_factory(engine),
                version=version,
                artifact_format=artifact_format,
                path=artifact_path,
                signature=signature,
                signing_key_id=key_id,
                settings=settings,
            )
        finally:
            await engine.dispose()
        click.echo(
            f"registered {artifact.version} ({artifact.artifact_format}): sha256 "
            f"{artifact.sha256}, {artifact.size_bytes} bytes, key {artifact.signing_key_id}"
        )

    _run_service(run())


@models.command("assign", help="Set the version a node (or '*': every node) should run.")
@click.option("--node", "node_id", required=True, help="Node id, or '*' for the fab default.")
@click.option("--version", required=True, help="A registered model version.")
@click.option(
    "--rollback", is_flag=True, help="Switch back to VERSION as the node's kept previous model."
)
@click.pass_obj
def models_assign(settings: FabSettings, node_id: str, version: str, rollback: bool) -> None:
    """Upsert a node's model assignment."""

    async def run() -> None:
        engine = make_async_engine(settings.database_url, settings.db_schema)
        try:
            assignment = await distribution.assign(
                session_factory(engine), node_id=node_id, version=version, rollback=rollback
            )
        finally:
            await engine.dispose()
        what = "roll back to" if assignment.rollback else "run"
        click.echo(f"node {assignment.node_id} should {what} {assignment.version}")

    _run_service(run())


@main.group(help="Enrol edge nodes (token or client certificate), revoke and list them.")
def nodes_group() -> None:
    """The ``nodes`` commands."""


main.add_command(nodes_group, "nodes")


_PEM_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@nodes_group.command(
    "add",
    help="Give NODE a credential to call the fab with: a new token (printed once), a client "
    "certificate issued from a CA (--cert-dir, --ca-cert, --ca-key), or an existing client "
    "certificate (--certificate). The node's other credentials stay valid.",
)
@click.argument("node_id", metavar="NODE")
@click.option("--certificate", type=_PEM_FILE, help="Enrol this client certificate (CN = NODE).")
@click.option(
    "--cert-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Issue NODE.pem and NODE.key here and enrol them (needs --ca-cert, --ca-key).",
)
@click.option("--ca-cert", type=_PEM_FILE, help="CA certificate that signs client certificates.")
@click.option("--ca-key", type=_PEM_FILE, help="That CA's private key.")
@click.pass_obj
def nodes_add(
    settings: FabSettings,
    node_id: str,
    certificate: Path | None,
    cert_dir: Path | None,
    ca_cert: Path | None,
    ca_key: Path | None,
) -> None:
    """Enrol a node with a token or a client certificate."""
    if certificate is not None and (cert_dir or ca_cert or ca_key):
        raise click.UsageError("--certificate enrols an existing certificate: no --cert-dir/--ca-*")
    if cert_dir is None and (ca_cert or ca_key):
        raise click.UsageError("--ca-cert and --ca-key issue a certificate into --cert-dir")
    if cert_dir is not None:
        if ca_cert is None or ca_key is None:
            raise click.UsageError("--cert-dir needs --ca-cert and --ca-key")
        try:
            pair = issue_client_cert(cert_dir, node_id, ca=CertPair(ca_cert, ca_key))
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        _enrol_certificate(settings, node_id, pair.cert)
        click.echo(
            f"on the node: EDGE_TLS_CERT={pair.cert} EDGE_TLS_KEY={pair.key} EDGE_TLS_CA=<the CA "
            "of the fab's server certificate>"
        )
        return
    if certificate is not None:
        _enrol_certificate(settings, node_id, certificate)
        return
    token = _on_database(settings, lambda sessions: nodes.add_token(sessions, node_id=node_id))
    click.echo(f"node {node_id}: new token (shown once; the fab keeps only its SHA-256):")
    click.echo(token)
    click.echo(
        "set it on the node as EDGE_NODE_TOKEN (in its environment or service unit, never on a "
        "command line)"
    )


def _enrol_certificate(settings: FabSettings, node_id: str, path: Path) -> None:
    pem = path.read_bytes()
    _on_database(
        settings, lambda sessions: nodes.add_certificate(sessions, node_id=node_id, cert_pem=pem)
    )
    fingerprint = nodes.certificate_fingerprint(pem)
    click.echo(f"node {node_id}: certificate {path} enrolled (sha256 {fingerprint})")


@nodes_group.command("revoke", help="Revoke every credential of NODE: its next call is refused.")
@click.argument("node_id", metavar="NODE")
@click.pass_obj
def nodes_revoke(settings: FabSettings, node_id: str) -> None:
    """Revoke a node's tokens and certificates."""
    count = _on_database(settings, lambda sessions: nodes.revoke(sessions, node_id=node_id))
    if not count:
        raise click.ClickException(f"node {node_id!r} has no credential to revoke")
    click.echo(f"node {node_id}: revoked {count} credential{'s' if count > 1 else ''}")


@nodes_group.command("list", help="Every enrolled node: active kinds, first issue, revocation.")
@click.pass_obj
def nodes_list(settings: FabSettings) -> None:
    """Print one line per node."""
    summaries = _on_database(settings, nodes.list_nodes)
    if not summaries:
        click.echo("no node enrolled (wafer-fab nodes add NODE)")
        return
    width = max(12, *(len(n.node_id) for n in summaries))
    click.echo(f"{'node':<{width}}  {'kinds':<17}  {'created':<25}  revoked")
    for node in summaries:
        kinds = ",".join(node.active_kinds) or "-"
        revoked = node.revoked_at.isoformat(timespec="seconds") if node.revoked_at else "-"
        created = node.created_at.isoformat(timespec="seconds")
        click.echo(f"{node.node_id:<{width}}  {kinds:<17}  {created:<25}  {revoked}")


@main.group(help="The review UI's users (engineer, admin): add, list, disable.")
def users_group() -> None:
    """The ``users`` commands."""


main.add_command(users_group, "users")


@users_group.command(
    "add",
    help="Create a user of the review UI. The password is asked for (hidden, twice) or read "
    "from the first line of standard input with --password-stdin; never on a command line.",
)
@click.option("--user", "user", required=True, help="Sign-in name.")
@click.option(
    "--role", type=click.Choice(["engineer", "admin"]), default="engineer", show_default=True
)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_obj
def users_add(settings: FabSettings, user: str, role: str, password_stdin: bool) -> None:
    """Add a user with a hashed password."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    _on_database(
        settings,
        lambda sessions: users.add_user(sessions, user=user, role=role, password=password),
    )
    click.echo(f"user {user} ({role}) added")


@users_group.command("disable", help="Disable USER: their next sign-in is refused.")
@click.argument("user", metavar="USER")
@click.pass_obj
def users_disable(settings: FabSettings, user: str) -> None:
    """Disable a user (kept for the audit trail)."""
    if not _on_database(settings, lambda sessions: users.disable(sessions, user=user)):
        raise click.ClickException(f"no enabled user {user!r}")
    click.echo(f"user {user} disabled")


@users_group.command("list", help="Every user: role, creation, disabling.")
@click.pass_obj
def users_list(settings: FabSettings) -> None:
    """Print one line per user."""
    accounts = _on_database(settings, users.list_users)
    if not accounts:
        click.echo("no user (wafer-fab users add --user NAME --role engineer)")
        return
    width = max(12, *(len(a.user) for a in accounts))
    click.echo(f"{'user':<{width}}  {'role':<9}  {'created':<25}  disabled")
    for account in accounts:
        created = account.created_at.isoformat(timespec="seconds")
        disabled = account.disabled_at.isoformat(timespec="seconds") if account.disabled_at else "-"
        click.echo(f"{account.user:<{width}}  {account.role:<9}  {created:<25}  {disabled}")


@main.group(help="The cloud sync: upload labels and aggregates, pull deployments (FAB_SYNC__*).")
def sync_group() -> None:
    """The ``sync`` commands."""


main.add_command(sync_group, "sync")


@sync_group.command(
    "run", help="One sync pass now; prints its summary (JSON). Exit 1 when it failed."
)
@click.pass_obj
def sync_run(settings: FabSettings) -> None:
    """Run one pass of the sync agent."""
    try:
        summary = _on_database(settings, lambda sessions: sync_agent.run_once(sessions, settings))
    except SyncError as exc:
        raise click.ClickException(f"sync failed: {exc}") from None
    click.echo(json.dumps(summary, indent=2, sort_keys=True))
    if not summary["ok"]:
        raise click.ClickException("an artifact of the cloud's plan failed verification")


@sync_group.command("status", help="Watermarks, the applied plan's time and the last run (JSON).")
@click.pass_obj
def sync_status(settings: FabSettings) -> None:
    """Print the sync's stored state."""
    status = _on_database(settings, sync_agent.sync_status)
    click.echo(json.dumps(status, indent=2, sort_keys=True))


def _on_database(settings: FabSettings, call: Callable[[Sessions], Awaitable[T]]) -> T:
    """Run one service call on the configured database; its errors exit 1 with the message."""

    async def run() -> T:
        engine = make_async_engine(settings.database_url, settings.db_schema)
        try:
            return await call(session_factory(engine))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except (FabError, InvalidInput) as exc:
        raise click.ClickException(str(exc)) from None


def _run_service(work: Coroutine[Any, Any, None]) -> None:
    """Run a service call, turning its errors into a clean message and exit status 1."""
    try:
        asyncio.run(work)
    except (FabError, InvalidInput) as exc:
        raise click.ClickException(str(exc)) from None


def _safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
