"""``wafer-cloud registry`` (the MLflow server) and ``wafer-cloud models list|import|alias``.

Heavy imports (MLflow, the registry) happen inside the commands, so ``wafer-cloud --help``
stays fast.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import click

from cloud.settings import CloudSettings

if TYPE_CHECKING:
    from cloud.registry.registry import ModelRegistry

REACHABLE_TIMEOUT_S = 5.0
"""How long a command waits for the MLflow server before saying it is not running."""
ALIAS_CHOICES = ("champion", "candidate", "previous")
"""`cloud.registry.registry.ALIASES`, spelled here so ``--help`` imports no MLflow."""


def cli_actor() -> str:
    """Who runs the command, for the history: ``cli:<OS user>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = "unknown"
    return f"cli:{user}"


def tracking_host_port(uri: str) -> tuple[str, int]:
    """Host and port of an ``http://host:port`` tracking URI (port 5000 when it has none)."""
    parts = urlsplit(uri)
    return parts.hostname or "127.0.0.1", parts.port or 5000


def open_registry(settings: CloudSettings) -> ModelRegistry:
    """The registry on the settings' MLflow server and cloud database (migrated to the head).

    Raises:
        click.ClickException: the MLflow server does not answer.
    """
    from cloud.registry.registry import ModelRegistry
    from cloud.registry.server import wait_healthy
    from cloud.storage.db import Database, migrate

    try:
        wait_healthy(settings.mlflow_tracking_uri, REACHABLE_TIMEOUT_S)
    except RuntimeError:
        raise click.ClickException(
            f"no MLflow server answers at {settings.mlflow_tracking_uri}: "
            "start one with 'wafer-cloud registry' (or set CLOUD_MLFLOW_TRACKING_URI)"
        ) from None
    migrate(settings.db_url, settings.db_schema)
    return ModelRegistry(settings, Database(settings.db_url, settings.db_schema))


@click.command(help="Run the MLflow tracking and registry server on the settings' stores.")
@click.option("--host", help="Interface to listen on (default: from CLOUD_MLFLOW_TRACKING_URI).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: from the same).")
@click.pass_obj
def registry(settings: CloudSettings, host: str | None, port: int | None) -> None:
    """Replace this process with ``mlflow server`` (signals and exit status are its own)."""
    from cloud.registry.server import server_command, server_env

    default_host, default_port = tracking_host_port(settings.mlflow_tracking_uri)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    command = server_command(settings, host or default_host, port or default_port)
    click.echo(
        f"MLflow registry on http://{host or default_host}:{port or default_port} "
        f"(store {settings.mlflow_store}, artifacts {settings.mlflow_artifacts})"
    )
    # exec, not a child: a service manager's SIGTERM reaches the server and nothing is orphaned.
    os.execvpe(command[0], command, server_env())


@click.group(help="Registered model versions: list them, import a model folder, move aliases.")
def models() -> None:
    """The ``models`` command group."""


@models.command("list", help="Every registered version, newest first, with aliases and metrics.")
@click.pass_obj
def list_command(settings: CloudSettings) -> None:
    """Print a table of the registered versions."""
    from cloud.services.models import list_models

    versions = list_models(open_registry(settings))
    if not versions:
        click.echo(f"no version of {settings.registered_model} is registered")
        return
    click.echo("version          mlflow  aliases                macro-F1  accuracy  registered")
    for v in versions:
        f1, accuracy = v.metrics.get("macro_f1"), v.metrics.get("accuracy")
        click.echo(
            f"{v.version:<16} {v.mlflow_version:>6}  {','.join(v.aliases) or '-':<22} "
            f"{_number(f1):>8}  {_number(accuracy):>8}  {v.created_at:%Y-%m-%d %H:%M}Z"
        )


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@models.command("import", help="Package, sign and register a model folder (once per version).")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--alias", type=click.Choice(ALIAS_CHOICES), help="Give the new version an alias.")
@click.option("--reason", default="imported from the command line", show_default=True)
@click.option(
    "--golden",
    type=click.IntRange(9, 100_000),
    default=64,
    show_default=True,
    help="Golden wafers in its signed artifact.",
)
@click.pass_obj
def import_command(
    settings: CloudSettings, folder: Path, alias: str | None, reason: str, golden: int
) -> None:
    """Register a model folder."""
    from cloud.registry.importer import import_model_folder
    from wafercore.errors import InvalidInput
    from wafercore.runtime import ModelLoadError

    registry_ = open_registry(settings)
    try:
        version = import_model_folder(
            registry_,
            settings,
            folder,
            actor=cli_actor(),
            reason=reason,
            alias=alias,
            golden=golden,
        )
    except (InvalidInput, ModelLoadError) as err:
        raise click.BadParameter(str(err), param_hint="FOLDER") from None
    held = f", aliases {', '.join(version.aliases)}" if version.aliases else ""
    click.echo(f"{version.version}: MLflow version {version.mlflow_version}{held}")
    click.echo(f"artifact sha256: {version.artifact_sha256}")


@models.command("alias", help="Point an alias at a version (champion moves the old to previous).")
@click.argument("version")
@click.argument("alias", type=click.Choice(ALIAS_CHOICES))
@click.option("--reason", required=True, help="Why, for the deployment history.")
@click.pass_obj
def alias_command(settings: CloudSettings, version: str, alias: str, reason: str) -> None:
    """Move an alias."""
    from cloud.errors import NotFound
    from cloud.services.models import set_alias
    from wafercore.errors import InvalidInput

    registry_ = open_registry(settings)
    seen = max((event.id for event in registry_.history()), default=0)
    try:
        moved = set_alias(registry_, version, alias, actor=cli_actor(), reason=reason)
    except NotFound as err:
        raise click.ClickException(str(err)) from None
    except InvalidInput as err:
        raise click.BadParameter(err.reason, param_hint=err.field) from None
    click.echo(f"{moved.version} now holds {', '.join(moved.aliases)}")
    # The moves this command made (a champion move also moves the old one to previous).
    for event in registry_.history():
        if event.id > seen:
            click.echo(
                f"  {event.action} {event.alias} -> {event.model_version} "
                f"(was {event.previous_version or '-'})"
            )
