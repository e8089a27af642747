"""Command line of the edge node (``wafer-edge``): serve, and replay real maps to a node."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from edge.node import EdgeNode
from edge.replay import classify_bodies, replay
from edge.settings import EdgeSettings
from wafercore.readers.npz import read_npz
from wafercore.runtime import ModelLoadError


@click.group(
    help="Edge node: classifies wafer maps at a test station and streams results to its fab. "
    "Configured by EDGE_* environment variables (EDGE_NODE_ID, EDGE_FAB_ADDRESS, ...); "
    "command-line flags override them."
)
@click.version_option(package_name="wafer-platform")
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(verbose: bool) -> None:
    """Entry point of ``wafer-edge``."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@main.command(help="Serve /classify until SIGINT or SIGTERM; with --fab, deliver to the fab.")
@click.option("--fab", "fab_address", metavar="HOST:PORT", help="Fab server gRPC address.")
@click.option("--node-id", help="This node's name at the fab.")
@click.option("--host", "http_host", help="HTTP address to listen on.")
@click.option("--port", "http_port", type=click.IntRange(0, 65535), help="HTTP port (0: any).")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--model-dir",
    "default_model_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Model served until an OTA update installs another.",
)
def serve(**flags: Any) -> None:
    """Run the node in the foreground."""
    overrides = {name: value for name, value in flags.items() if value is not None}
    try:
        settings = EdgeSettings(**overrides)
    except ValidationError as exc:
        raise click.UsageError(_settings_problems(exc)) from None
    try:
        asyncio.run(_serve(settings))
    except (ModelLoadError, ValueError, OSError) as exc:
        raise click.ClickException(f"cannot start: {exc}") from None


async def _serve(settings: EdgeSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    node = EdgeNode(settings)
    await node.start()
    try:
        assert node.store is not None
        # One line on stdout (flushed) that scripts can wait for; it carries the real port.
        click.echo(
            f"edge node {settings.node_id} serving model {node.store.current.version} on "
            f"http://{settings.http_host}:{node.http_port}",
        )
        sys.stdout.flush()
        await stop.wait()
    finally:
        await node.stop()


def _settings_problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
    )


@main.command(
    "replay", help="Send real wafer maps from an npz file to a running node at a fixed rate."
)
@click.option(
    "--data",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="WM-811K npz file (labelled.npz, sample_stratified.npz, ...).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Wafers per second.",
)
@click.option(
    "--target", default="http://127.0.0.1:8000", show_default=True, help="The node's base URL."
)
@click.option("--limit", type=click.IntRange(min=1), help="Send at most this many maps.")
@click.option("--wm811k", is_flag=True, help="Send maps in WM-811K's encoding (encoding: wm811k).")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Most requests in flight.",
)
def replay_cmd(
    path: Path, rate: float, target: str, limit: int | None, wm811k: bool, concurrency: int
) -> None:
    """Replay maps and print the latency summary; exit status 1 when any request failed."""
    try:
        dataset = read_npz(path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    total = len(dataset) if limit is None else min(limit, len(dataset))
    summary = asyncio.run(
        replay(
            classify_bodies(dataset, limit=limit, wm811k=wm811k),
            target=target,
            rate=rate,
            total=total,
            concurrency=concurrency,
        )
    )
    click.echo(summary.report())
    if summary.errors:
        sys.exit(1)
