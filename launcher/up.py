"""``wafer-platform up``: every tier on one machine, as child processes, until Ctrl-C.

No containers: the fab server, the cloud (MLflow registry, REST API and CloudSync, and the
Celery worker and beat when a broker answers) and N edge nodes run as the tiers' own commands
(``wafer-fab serve``, ``wafer-cloud registry|serve|worker|beat``, ``wafer-edge serve``), on the
embedded defaults (SQLite and folders under the work dir, Celery's eager mode) unless their
``FAB_*`` / ``CLOUD_*`` settings name real servers. Each tier is started in its own session
(process group), so Ctrl-C in the terminal reaches only this launcher, which then stops the
tiers in reverse order; each writes its output to ``<work-dir>/logs/<tier>.log``. A tier is up
when its health endpoint answers 200 (the worker and beat, which serve nothing: when their log
says they are ready); one that fails stops everything started, its log's tail is shown and the
command exits 1.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from cloud.settings import CloudSettings
from fab_server.settings import FabSettings
from launcher.settings import PlatformSettings
from launcher.tiers import (
    HEALTH_TIMEOUT_S,
    STOP_GRACE_S,
    Supervisor,
    Tier,
    TierFailed,
    check_ports,
    run_tiers,
    table,
)

FC = TypeVar("FC", bound=Callable[..., Any])
UI_USER = "engineer"
"""The review UI's user that `up` creates in a fab database that has none by that name."""
LOCAL = "127.0.0.1"


@dataclass(frozen=True)
class Ports:
    """The ports of every tier (fixed defaults that clash with nothing of the platform's)."""

    http: int = 8080
    grpc: int = 50051
    mlflow: int = 5000
    cloud: int = 8300
    sync: int = 50061
    edge: int = 8001

    def edge_port(self, index: int) -> int:
        """HTTP port of edge node ``index`` (from 1)."""
        return self.edge + index - 1


def _command(name: str) -> list[str]:
    """A console script of this installation (beside this Python, whatever the cwd)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise click.ClickException(f"{name} is not installed beside {sys.executable}")
    return [found]


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, ValueError):
        return False


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=3.0).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Platform:
    """What ``up`` starts, from the options and the tiers' own settings."""

    work_dir: Path
    ports: Ports
    fab_settings: FabSettings
    cloud_settings: CloudSettings
    edges: int
    eager: bool
    notes: list[str] = field(default_factory=list)
    sign_in: str = ""
    node_tokens: dict[str, str] = field(default_factory=dict)
    fab_env: dict[str, str] = field(default_factory=dict)
    cloud_env: dict[str, str] = field(default_factory=dict)
    worker: bool = False

    # -- fab -----------------------------------------------------------------------------------

    def fab(self) -> list[Tier]:
        """The fab server, migrating its database first (SQLite here unless FAB_DATABASE_URL)."""
        configured = self.fab_settings.model_fields_set
        root = self.work_dir / "fab"
        root.mkdir(parents=True, exist_ok=True)
        env = {"FAB_HTTP_PORT": str(self.ports.http), "FAB_GRPC_PORT": str(self.ports.grpc)}
        defaults = {
            "database_url": ("FAB_DATABASE_URL", f"sqlite+aiosqlite:///{root / 'fab.db'}"),
            "artifact_dir": ("FAB_ARTIFACT_DIR", str(root / "artifacts")),
        }
        for name, (variable, value) in defaults.items():
            if name not in configured:
                env[variable] = value
        self.fab_env = env
        database = "SQLite" if "database_url" not in configured else "FAB_DATABASE_URL"
        self.notes.append(f"fab database: {database}")
        return [
            Tier(
                "fab",
                [*_command("wafer-fab"), "-v", "serve", "--migrate"],
                env,
                url=f"http://{LOCAL}:{self.ports.http}/ui/ (gRPC {LOCAL}:{self.ports.grpc})",
                health_url=f"http://{LOCAL}:{self.ports.http}/healthz",
                # `wafer-fab serve` stops cleanly on Ctrl-C only (SIGTERM kills it outright).
                stop_signal=signal.SIGINT,
            )
        ]

    def enrol(self) -> None:
        """Issue the edges' node tokens and, in a database without one, the UI's user."""
        from fab_server.db import make_async_engine, session_factory
        from fab_server.services import nodes, users

        settings = self.fab_settings
        embedded = "FAB_DATABASE_URL" in self.fab_env
        url = self.fab_env.get("FAB_DATABASE_URL", settings.database_url)
        password = secrets.token_urlsafe(12)

        async def run() -> bool:
            engine = make_async_engine(url, settings.db_schema)
            sessions = session_factory(engine)
            try:
                for index in range(1, self.edges + 1):
                    node = f"edge-{index}"
                    if embedded:  # the tokens of this work dir's last run go
                        await nodes.revoke(sessions, node_id=node)
                    self.node_tokens[node] = await nodes.add_token(sessions, node_id=node)
                if any(u.user == UI_USER for u in await users.list_users(sessions)):
                    return False
                await users.add_user(sessions, user=UI_USER, role="engineer", password=password)
                return True
            finally:
                await engine.dispose()

        ui = f"http://{LOCAL}:{self.ports.http}/ui/"
        if asyncio.run(run()):
            self.sign_in = f"review UI {ui}: sign in as {UI_USER} / {password} (shown only now)"
        else:
            where = f"FAB_DATABASE_URL={url} " if embedded else ""
            self.sign_in = (
                f"review UI {ui}: sign in as {UI_USER} with the password shown when it was "
                f"created, or add a user: {where}wafer-fab users add --user NAME"
            )

    # -- cloud ---------------------------------------------------------------------------------

    def cloud_registry(self) -> list[Tier]:
        """The MLflow registry server, unless CLOUD_MLFLOW_TRACKING_URI names a running one.

        Raises:
            TierFailed: the configured registry does not answer.
        """
        settings = self.cloud_settings
        self.cloud_env = {
            "CLOUD_API_HOST": LOCAL,
            "CLOUD_API_PORT": str(self.ports.cloud),
            "CLOUD_API_URL": f"http://{LOCAL}:{self.ports.cloud}",
            "CLOUD_SYNC_HOST": LOCAL,
            "CLOUD_SYNC_PORT": str(self.ports.sync),
        }
        if "work_dir" not in settings.model_fields_set:
            self.cloud_env["CLOUD_WORK_DIR"] = str(self.work_dir / "cloud")
        if "database_url" not in settings.model_fields_set:
            self.notes.append("cloud database: SQLite")
        else:
            self.notes.append("cloud database: CLOUD_DATABASE_URL")
        self._jobs(settings)
        if "mlflow_tracking_uri" in settings.model_fields_set:
            uri = settings.mlflow_tracking_uri
            if not _answers(f"{uri.rstrip('/')}/health"):
                raise TierFailed(f"registry: no MLflow server answers at {uri} (CLOUD_*)")
            self.notes.append(f"registry: MLflow at {uri} (CLOUD_MLFLOW_TRACKING_URI)")
            return []
        uri = f"http://{LOCAL}:{self.ports.mlflow}"
        self.cloud_env["CLOUD_MLFLOW_TRACKING_URI"] = uri
        return [
            Tier(
                "registry",
                [*_command("wafer-cloud"), "registry", "--host", LOCAL],
                {**self.cloud_env, "CLOUD_MLFLOW_TRACKING_URI": uri},
                url=uri,
                health_url=f"{uri}/health",
            )
        ]

    def _jobs(self, settings: CloudSettings) -> None:
        broker = settings.broker_url
        if self.eager:
            self.notes.append("retraining jobs: Celery eager mode, in the API process (--eager)")
        elif _redis_answers(broker):
            self.worker = True
            self.notes.append(f"retraining jobs: Celery worker and beat on {broker}")
            return
        else:
            self.notes.append(
                f"retraining jobs: Celery eager mode, in the API process (no broker answers "
                f"at {broker})"
            )
        self.cloud_env["CLOUD_TASK_ALWAYS_EAGER"] = "true"

    def cloud_api(self) -> list[Tier]:
        """The cloud's REST API and CloudSync (registers the shipped models first)."""
        return [
            Tier(
                "cloud-api",
                [*_command("wafer-cloud"), "-v", "serve"],
                self.cloud_env,
                url=f"http://{LOCAL}:{self.ports.cloud}/docs (CloudSync {LOCAL}:{self.ports.sync})",
                health_url=f"http://{LOCAL}:{self.ports.cloud}/healthz",
            )
        ]

    def cloud_workers(self) -> list[Tier]:
        """The pipeline's Celery worker and beat, when a broker answers."""
        if not self.worker:
            return []
        wafer_cloud = _command("wafer-cloud")
        return [
            Tier(
                "cloud-worker",
                [*wafer_cloud, "worker", "--concurrency", "1"],
                self.cloud_env,
                url="(Celery, no HTTP)",
                ready_text=" ready.",
            ),
            Tier(
                "cloud-beat",
                [*wafer_cloud, "beat"],
                self.cloud_env,
                url="(Celery beat, no HTTP)",
                ready_text="beat: Starting...",
            ),
        ]

    # -- edges ---------------------------------------------------------------------------------

    def edge_nodes(self) -> list[Tier]:
        """N edge nodes on the fab's gRPC, each with the token the fab just issued it."""
        self.enrol()
        tiers = []
        for index in range(1, self.edges + 1):
            node, port = f"edge-{index}", self.ports.edge_port(index)
            env = {
                "EDGE_NODE_ID": node,
                "EDGE_FAB_ADDRESS": f"{LOCAL}:{self.ports.grpc}",
                "EDGE_NODE_TOKEN": self.node_tokens[node],  # never on a command line
                "EDGE_HTTP_HOST": LOCAL,
                "EDGE_HTTP_PORT": str(port),
                "EDGE_WORK_DIR": str(self.work_dir / node),
            }
            tiers.append(
                Tier(
                    node,
                    [*_command("wafer-edge"), "-v", "serve"],
                    env,
                    url=f"http://{LOCAL}:{port}/classify",
                    health_url=f"http://{LOCAL}:{port}/healthz",
                )
            )
        return tiers

    def stages(self) -> list[Callable[[], Sequence[Tier]]]:
        """The start order: fab, registry, cloud API, worker and beat, edges."""
        return [self.fab, self.cloud_registry, self.cloud_api, self.cloud_workers, self.edge_nodes]


def _port_option(name: str, default: int, help_text: str) -> Callable[[FC], FC]:
    return click.option(
        name, default=default, show_default=True, type=click.IntRange(1, 65535), help=help_text
    )


@click.command(
    help="Start every tier on this machine (fab server, MLflow registry, cloud API and "
    "CloudSync, Celery worker and beat when a broker answers, edge nodes) as child processes, "
    "health-checked in that order, one log per tier under WORK_DIR/logs; Ctrl-C stops them "
    "all. Embedded defaults (SQLite, local folders, Celery eager) unless FAB_* / CLOUD_* "
    "settings name real servers."
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Databases, folders and logs of the tiers  [default: WAFER_WORK_DIR/up]",
)
@_port_option("--http-port", Ports.http, "Fab server HTTP: API, review UI, /healthz.")
@_port_option("--grpc-port", Ports.grpc, "Fab server gRPC (edge nodes).")
@_port_option("--mlflow-port", Ports.mlflow, "MLflow registry (when started here).")
@_port_option("--cloud-port", Ports.cloud, "Cloud REST API.")
@_port_option("--sync-port", Ports.sync, "Cloud CloudSync gRPC.")
@_port_option("--edge-port", Ports.edge, "First edge node's HTTP port (then +1 each).")
@click.option(
    "--edges", default=2, show_default=True, type=click.IntRange(0, 64), help="Edge nodes."
)
@click.option(
    "--eager",
    is_flag=True,
    help="Run retraining jobs in the API process even when a broker answers (no worker, no beat).",
)
@click.option(
    "--health-timeout",
    default=HEALTH_TIMEOUT_S,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Seconds each tier has to come up.",
)
@click.option(
    "--grace",
    default=STOP_GRACE_S,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds each tier has to stop before it is killed.",
)
@click.pass_obj
def up(
    settings: PlatformSettings,
    work_dir: Path | None,
    http_port: int,
    grpc_port: int,
    mlflow_port: int,
    cloud_port: int,
    sync_port: int,
    edge_port: int,
    edges: int,
    eager: bool,
    health_timeout: float,
    grace: float,
) -> None:
    """Start every tier, print where each answers, serve until Ctrl-C or SIGTERM."""
    root = (work_dir or settings.work_dir / "up").resolve()
    root.mkdir(parents=True, exist_ok=True)
    ports = Ports(http_port, grpc_port, mlflow_port, cloud_port, sync_port, edge_port)
    fab_settings, cloud_settings = _settings(FabSettings, "FAB"), _settings(CloudSettings, "CLOUD")
    _check_ports(ports, edges, mlflow="mlflow_tracking_uri" not in cloud_settings.model_fields_set)
    platform = Platform(root, ports, fab_settings, cloud_settings, edges, eager)
    supervisor = Supervisor(root, click.echo, health_timeout_s=health_timeout, grace_s=grace)

    def on_up() -> None:
        click.echo(f"\nEvery tier is up ({', '.join(platform.notes)}):\n")
        click.echo(table(supervisor.running, root))
        click.echo(f"\nlogs in {root / 'logs'}")
        click.echo(platform.sign_in)
        click.echo("Ctrl-C stops every tier.")

    click.echo(f"wafer-platform up in {root}: fab, cloud, {edges} edge node(s)")
    with supervisor.signals():
        completed = run_tiers(supervisor, _announced(platform.stages(), click.echo), on_up)
    click.echo("stopped every tier" + ("" if completed else " (stopped during start-up)"))


def _announced(
    stages: list[Callable[[], Sequence[Tier]]], echo: Callable[[str], None]
) -> list[Callable[[], Sequence[Tier]]]:
    """The stages, each saying which tiers it starts."""

    def announce(stage: Callable[[], Sequence[Tier]]) -> Callable[[], Sequence[Tier]]:
        def run() -> Sequence[Tier]:
            tiers = stage()
            if tiers:
                echo(f"starting {', '.join(t.name for t in tiers)} ...")
            return tiers

        return run

    return [announce(stage) for stage in stages]


S = TypeVar("S", bound=BaseSettings)


def _settings(kind: type[S], prefix: str) -> S:
    """The tier's settings from the environment, as its processes will build them."""
    try:
        return kind()
    except ValidationError as exc:
        problems = "; ".join(
            f"{prefix}_{'__'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise click.ClickException(f"bad {prefix}_* settings: {problems}") from None


def _check_ports(ports: Ports, edges: int, *, mlflow: bool) -> None:
    """Refuse ports given twice, beyond 65535 or already listened on, before starting anything."""
    wanted = {
        "--http-port": ports.http,
        "--grpc-port": ports.grpc,
        "--cloud-port": ports.cloud,
        "--sync-port": ports.sync,
    }
    if mlflow:
        wanted["--mlflow-port"] = ports.mlflow
    wanted.update({f"--edge-port (edge-{i})": ports.edge_port(i) for i in range(1, edges + 1)})
    check_ports(wanted, LOCAL)
