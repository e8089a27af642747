"""``wafer-cloud novelty retrieval``: which embedding retrieves similar wafers better, and
does a k-NN vote over their confirmed labels beat the classifier (`cloud.evaluation.retrieval`).

The command object is registered on the ``novelty`` group by the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cloud.evaluation.retrieval import KINDS, command_line, evaluate_retrieval

_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command(
    "retrieval",
    help="Retrieval quality of similar-wafer search on unseen (Test) lots: precision@k per "
    "class of the VAE latent and of the classifier's penultimate features, and a k-NN vote over "
    "the retrieved labels against the classifier; retrieval.json and retrieval.md in --out.",
)
@click.option("--classifier", type=_DIR, required=True, help="Classifier model directory.")
@click.option("--novelty", type=_DIR, required=True, help="Novelty (VAE) model directory.")
@click.option(
    "--data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Labelled wafers with the official split (npz, WM-811K layout).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for retrieval.json and retrieval.md.",
)
@click.option("--k", default=10, show_default=True, type=click.IntRange(1), help="Neighbours.")
@click.option(
    "--history-limit", type=click.IntRange(1), default=None, help="At most N (seeded draw)."
)
@click.option(
    "--query-limit", type=click.IntRange(1), default=None, help="At most N (seeded draw)."
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--threads", default=0, show_default=True, help="ONNX Runtime threads (0: all).")
def retrieval(
    classifier: Path,
    novelty: Path,
    data: Path,
    out: Path,
    k: int,
    history_limit: int | None,
    query_limit: int | None,
    seed: int,
    threads: int,
) -> None:
    """``wafer-cloud novelty retrieval``: compare the VAE latent and the classifier's features
    for similar-wafer search (register it on the ``novelty`` group)."""
    opts: dict[str, Any] = {
        "k": k,
        "history_limit": history_limit,
        "query_limit": query_limit,
        "seed": seed,
    }
    command = command_line(classifier, novelty, data, out, **opts)
    try:
        result = evaluate_retrieval(
            classifier, novelty, data, out, threads=threads, command=command, **opts
        )
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    for kind in KINDS:
        one = result["kinds"][kind]
        click.echo(
            f"{kind:<20} precision@{result['k']} macro {one['precision_at_k']['macro']:.4f}  "
            f"vote macro-F1 {one['vote']['macro_f1']:.4f}  "
            f"{one['timing']['ms_per_wafer']:.3f} ms/wafer"
        )
    click.echo(f"classifier macro-F1 {result['classifier']['macro_f1']:.4f}")
    click.echo(f"best: {result['best']}  -> {out / 'retrieval.md'}")
