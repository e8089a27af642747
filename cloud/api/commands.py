"""``wafer-cloud serve``, ``wafer-cloud tokens add|revoke|list`` and the remote half of
``wafer-cloud train --remote``.

Registered on the ``wafer-cloud`` group at the bottom of `cloud.cli`. Heavy modules (uvicorn,
MLflow, the app) are imported inside the commands, so ``wafer-cloud --help`` stays quick.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cloud.settings import CloudSettings

if TYPE_CHECKING:
    from cloud.api.client import CloudApiClient
    from cloud.storage.db import Database

FOLLOW_INTERVAL_S = 1.0
"""How often ``train --remote`` asks the API how its job stands."""
REGISTRY_REACHABLE_S = 10.0
"""How long ``serve`` waits for the MLflow server before saying it is not running."""
EXIT_CODES = {"succeeded": 0, "failed": 1, "rejected": 3, "cancelled": 4}
"""``train --remote``'s exit status per final state of the job (2 is click's usage error)."""


@click.command(help="Serve the cloud REST API (uvicorn) until stopped; OpenAPI at /docs.")
@click.option(
    "--import-shipped/--no-import-shipped",
    default=True,
    show_default=True,
    help="Register the shipped models first (those already registered are skipped).",
)
@click.pass_obj
def serve(settings: CloudSettings, import_shipped: bool) -> None:
    """Run the API in the foreground on ``settings.api_host:api_port``."""
    from cloud.api.server import serve_forever

    if import_shipped:
        _import_shipped_models(settings)
    try:
        serve_forever(settings)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None


def _import_shipped_models(settings: CloudSettings) -> None:
    """Register every shipped model not yet registered (the default one as champion)."""
    from cloud.registry.importer import import_shipped
    from cloud.registry.registry import ModelRegistry
    from cloud.registry.server import wait_healthy
    from cloud.storage.db import Database, migrate

    try:
        # MLflow's client retries a refused connection for minutes: ask once, quickly.
        wait_healthy(settings.mlflow_tracking_uri, REGISTRY_REACHABLE_S)
    except RuntimeError:
        raise click.ClickException(
            f"no MLflow server answers at {settings.mlflow_tracking_uri}: start one with "
            "'wafer-cloud registry' (or set CLOUD_MLFLOW_TRACKING_URI), or serve with "
            "--no-import-shipped"
        ) from None
    migrate(settings.db_url, settings.db_schema)
    db = Database(settings.db_url, settings.db_schema)
    try:
        imported = import_shipped(ModelRegistry(settings, db), settings)
    finally:
        db.dispose()
    for model in imported:
        aliases = f" ({', '.join(model.aliases)})" if model.aliases else ""
        click.echo(f"registered {model.version}{aliases}")


@click.group(
    help="Bearer tokens of the REST API (roles: viewer < ml-engineer < admin) and of the fabs' "
    "CloudSync (role fab; the user is the fab's id)."
)
def tokens() -> None:
    """The ``tokens`` commands."""


@tokens.command("add", help="Issue a token; it is printed once and stored only hashed.")
@click.option("--user", required=True, help="Who holds it (recorded as the actor).")
@click.option(
    "--role",
    required=True,
    type=click.Choice(["viewer", "ml-engineer", "admin", "fab"]),
    help="Role; fab: a fab server's sync token, --user its fab id.",
)
@click.pass_obj
def tokens_add(settings: CloudSettings, user: str, role: str) -> None:
    """Print a new token of ``user``."""
    from cloud.services.tokens import add_token
    from wafercore.errors import InvalidInput

    with _database(settings) as db:
        try:
            token = add_token(db, user=user, role=role)
        except InvalidInput as exc:
            raise click.BadParameter(exc.reason, param_hint=f"--{exc.field}") from None
    click.echo(token)


@tokens.command("revoke", help="Revoke a token by its id (see 'tokens list').")
@click.argument("token_id", type=click.IntRange(min=1))
@click.pass_obj
def tokens_revoke(settings: CloudSettings, token_id: int) -> None:
    """Revoke token ``token_id``."""
    from cloud.errors import NotFound
    from cloud.services.tokens import revoke_token

    with _database(settings) as db:
        try:
            revoked = revoke_token(db, token_id)
        except NotFound as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"token {revoked.id} of {revoked.user} ({revoked.role}) revoked")


@tokens.command("list", help="The issued tokens: id, holder, role, dates (never the token).")
@click.option("--all", "include_revoked", is_flag=True, help="Revoked ones too.")
@click.pass_obj
def tokens_list(settings: CloudSettings, include_revoked: bool) -> None:
    """Print one line per token."""
    from cloud.services.tokens import list_tokens

    with _database(settings) as db:
        found = list_tokens(db, include_revoked=include_revoked)
    click.echo(f"{'id':>5}  {'user':<24} {'role':<12} {'created':<25} revoked")
    for t in found:
        revoked = t.revoked_at.isoformat(timespec="seconds") if t.revoked_at else "-"
        created = t.created_at.isoformat(timespec="seconds")
        click.echo(f"{t.id:>5}  {t.user:<24} {t.role:<12} {created:<25} {revoked}")


@contextmanager
def _database(settings: CloudSettings) -> Iterator[Database]:
    """The cloud database, migrated first, disposed on exit."""
    from cloud.storage.db import Database, migrate

    migrate(settings.db_url, settings.db_schema)
    db = Database(settings.db_url, settings.db_schema)
    try:
        yield db
    finally:
        db.dispose()


def config_name(config: str) -> str:
    """The name of a config given as a name (``tiny``) or a path (``configs/tiny.yaml``)."""
    path = Path(config)
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path.stem
    return config


def parse_overrides(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` pairs as overrides; each value read as JSON, else YAML, else as text
    (``2`` and ``3e-4`` are numbers, ``[4, 8]`` a list, ``sample.npz`` a string).

    Raises:
        click.BadParameter: a pair without ``=`` or with an empty key.
    """
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--set")
        overrides[key.strip()] = _override_value(value)
    return overrides


def _override_value(text: str) -> Any:
    import yaml

    try:
        # JSON first: YAML 1.1 reads 3e-4 as a string.
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def train_remote(
    settings: CloudSettings, *, config: str, overrides: Mapping[str, Any], reason: str
) -> None:
    """Trigger a job through the API, follow it with a progress bar, print its verdict.

    Exits with `EXIT_CODES` of the job's final state.
    """
    from cloud.api.client import ApiError, CloudApiClient

    if not settings.api_token:
        raise click.UsageError("--remote needs a token: set CLOUD_API_TOKEN")
    with CloudApiClient(settings.api_url, settings.api_token) as client:
        try:
            job_id = client.trigger(
                config_name=config_name(config), overrides=dict(overrides), reason=reason
            )
            click.echo(f"job {job_id} queued at {settings.api_url}")
            detail = _follow(client, job_id)
        except ApiError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo(f"\nstopped following; job {job_id} goes on (GET /training/jobs/{job_id})")
            raise SystemExit(130) from None
    job = detail["job"]
    _print_outcome(job)
    code = EXIT_CODES.get(job["state"], 1)
    if code:
        raise SystemExit(code)


def _follow(client: CloudApiClient, job_id: str) -> dict[str, Any]:
    """Poll a job until it finishes, showing its progress and current step."""
    from tqdm import tqdm

    from cloud.api.client import TERMINAL_STATES

    with tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}]") as bar:
        while True:
            detail: dict[str, Any] = client.job(job_id, log_limit=0)
            job = detail["job"]
            bar.n = round(100 * float(job["progress"]), 1)
            bar.set_description(f"{job['state']}: {job['current_step'] or '-'}")
            if job["state"] in TERMINAL_STATES:
                return client.job(job_id, log_limit=20)
            time.sleep(FOLLOW_INTERVAL_S)


def _print_outcome(job: Mapping[str, Any]) -> None:
    click.echo(f"job {job['id']}: {job['state']}")
    verdict = job.get("verdict")
    if isinstance(verdict, Mapping):
        _print_verdict(verdict)
    if job.get("model_version"):
        click.echo(f"model version: {job['model_version']}")
    if job.get("error"):
        click.echo(f"error: {job['error']}", err=True)


def _print_verdict(verdict: Mapping[str, Any]) -> None:
    """The gate's checks one a line (the whole verdict as JSON when it has no checks)."""
    checks = verdict.get("checks")
    if not isinstance(checks, list):
        click.echo("verdict: " + json.dumps(verdict, indent=2, sort_keys=True))
        return
    click.echo(f"gate: {'passed' if verdict.get('passed') else 'failed'}")
    for check in checks:
        mark = "pass" if check.get("passed") else "FAIL"
        click.echo(f"  {mark}  {check.get('name')}: {check.get('detail')}")
