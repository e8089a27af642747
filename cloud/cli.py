"""Command line of the cloud tier (``wafer-cloud``)."""

import click


@click.group(help="Cloud tier: training, evaluation, model registry, drift detection and rollouts.")
@click.version_option(package_name="wafer-platform")
def main() -> None:
    """Entry point of ``wafer-cloud``."""
