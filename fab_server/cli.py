"""Command line of the fab server (``wafer-fab``)."""

import click


@click.group(
    help="Fab server: aggregates edge results, runs the review queue and distributes models."
)
@click.version_option(package_name="wafer-platform")
def main() -> None:
    """Entry point of ``wafer-fab``."""
