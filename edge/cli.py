"""Command line of the edge node (``wafer-edge``)."""

import click


@click.group(
    help="Edge node: classifies wafer maps at a test station and streams results to its fab."
)
@click.version_option(package_name="wafer-platform")
def main() -> None:
    """Entry point of ``wafer-edge``."""
