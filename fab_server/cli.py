"""Command line of the fab server (``wafer-fab``): migrate, serve, seed, certs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import click
from sqlalchemy.engine import make_url

from fab_server.app import FabServer, NotMigrated
from fab_server.certs import make_dev_certs
from fab_server.db import make_async_engine, migrate, session_factory
from fab_server.services.classify import Classifier
from fab_server.services.seed import seed_synthetic
from fab_server.settings import FabSettings


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


def _safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
