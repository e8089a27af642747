"""``wafer-cloud rollout start|status|stop`` and ``wafer-cloud drift report``: through the API.

They act as the holder of ``CLOUD_API_TOKEN`` (admin for rollouts, ml-engineer to compute a
drift report, viewer to read), at ``CLOUD_API_URL``, like ``train --remote``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cloud.settings import CloudSettings

if TYPE_CHECKING:
    from cloud.api.client import CloudApiClient


@contextmanager
def _client(settings: CloudSettings) -> Iterator[CloudApiClient]:
    from cloud.api.client import ApiError, CloudApiClient

    if not settings.api_token:
        raise click.UsageError("set CLOUD_API_TOKEN (a token from `wafer-cloud tokens add`)")
    with CloudApiClient(settings.api_url, settings.api_token) as client:
        try:
            yield client
        except ApiError as exc:
            raise click.ClickException(str(exc)) from None


def _show(rollout: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rollout, indent=2))
        return
    click.echo(
        f"rollout {rollout['id']}: {rollout['model_version']} in fab {rollout['fab_id']} "
        f"({rollout['stage']}); baseline {rollout['baseline_version']}"
    )
    click.echo(f"  canary: {', '.join(rollout['canary_nodes'])}")
    click.echo(f"  control: {', '.join(rollout['control_nodes']) or '-'}")
    decision = rollout.get("decision")
    if decision:
        click.echo(f"  decision: {decision['action']}: {decision['reason']}")


@click.group(help="Canary rollouts of a model version in a fab (through the cloud API).")
def rollout() -> None:
    """``wafer-cloud rollout``."""


@rollout.command("start", help="Start a canary: the version on some nodes, then production.")
@click.option("--fab", "fab_id", required=True, help="The fab.")
@click.option("--version", required=True, help="The version to roll out (registered).")
@click.option("--node", "nodes", multiple=True, help="A canary node (repeatable; default: 2).")
@click.option("--reason", required=True, help="Why (recorded in the deployment history).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@click.pass_obj
def start(
    settings: CloudSettings,
    fab_id: str,
    version: str,
    nodes: tuple[str, ...],
    reason: str,
    as_json: bool,
) -> None:
    """POST /models/deploy."""
    with _client(settings) as client:
        _show(
            client.deploy(fab_id=fab_id, version=version, nodes=list(nodes), reason=reason), as_json
        )


@rollout.command("status", help="One rollout (by id), or the rollouts (newest first).")
@click.argument("rollout_id", required=False)
@click.option("--fab", "fab_id", help="Only this fab's.")
@click.option("--active", is_flag=True, help="Only those under way.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@click.pass_obj
def status(
    settings: CloudSettings, rollout_id: str | None, fab_id: str | None, active: bool, as_json: bool
) -> None:
    """GET /rollouts[/{id}]."""
    with _client(settings) as client:
        found = (
            [client.rollout(rollout_id)]
            if rollout_id
            else client.rollouts(fab_id=fab_id, active=active)
        )
    if as_json and not rollout_id:
        click.echo(json.dumps(found, indent=2))
        return
    for item in found:
        _show(item, as_json)
    if not found:
        click.echo("no rollouts")


@rollout.command("stop", help="Emergency stop: every node of the fab back to the baseline.")
@click.argument("rollout_id")
@click.option("--reason", required=True, help="Why (recorded in the deployment history).")
@click.pass_obj
def stop(settings: CloudSettings, rollout_id: str, reason: str) -> None:
    """POST /rollouts/{id}/stop."""
    with _client(settings) as client:
        _show(client.stop_rollout(rollout_id, reason=reason), False)


@click.group(help="Drift of the predicted-class mix, halting steps and reviewed accuracy.")
def drift() -> None:
    """``wafer-cloud drift``."""


@drift.command("report", help="Show the newest drift report (--compute: compute one now).")
@click.option("--compute", is_flag=True, help="Compute one now (may start retraining).")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), help="Save the plot.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@click.pass_obj
def report(settings: CloudSettings, compute: bool, png: Path | None, as_json: bool) -> None:
    """GET /analytics/drift (or POST /analytics/drift/compute), and /analytics/drift.png."""
    from cloud.services.drift import summary

    with _client(settings) as client:
        stored = client.drift(compute=compute)
        if png is not None:
            png.write_bytes(client.drift_png())
    if as_json:
        click.echo(json.dumps(stored, indent=2))
    else:
        click.echo(f"drift report {stored['id']} of {stored['computed_at']}")
        for line in summary(stored["report"]):
            click.echo(f"  {line}")
        for job_id in stored["job_ids"]:
            click.echo(f"  retraining started: job {job_id}")
    if png is not None:
        click.echo(f"plot: {png}")
