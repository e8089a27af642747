"""``wafer-cloud bench-heads``: the classical and quantum heads on the default classifier's
frozen features, under the report's random split and the platform's lot-disjoint one."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from wafercore.shipped import shipped_model_dir


@click.command(
    "bench-heads",
    help="Compare a classical MLP head and a 4-qubit variational (PennyLane) head on the frozen "
    "penultimate features of a classifier: identical splits, seed and hyper-parameters; "
    "thresholds tuned on validation; bench_{variant}.json, comparison.md and figures in --out.",
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Backbone model directory (default: the shipped default model).",
)
@click.option(
    "--data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Labelled wafers (npz, WM-811K layout).",
)
@click.option(
    "--variant",
    type=click.Choice(["classical", "quantum", "both"]),
    default="both",
    show_default=True,
)
@click.option(
    "--protocol",
    "protocols",
    type=click.Choice(["random", "lots"]),
    multiple=True,
    help="Split protocol (repeatable; default both).",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--epochs", default=12, show_default=True, type=click.IntRange(1, 1000))
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1, 65536))
@click.option("--lr", default=3e-3, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--threads", default=0, show_default=True, help="PyTorch threads (0: all cores).")
def bench_heads(
    model_dir: Path | None,
    data: Path,
    variant: str,
    protocols: tuple[str, ...],
    out: Path,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    threads: int,
) -> None:
    """Run the benchmark and write its reports."""
    from cloud.heads.bench import PROTOCOLS, set_threads
    from cloud.heads.models import VARIANTS, QuantumUnavailable, quantum_head
    from cloud.heads.training import HeadConfig

    variants = VARIANTS if variant == "both" else (variant,)
    if "quantum" in variants:
        try:
            quantum_head(4, 2)
        except QuantumUnavailable as exc:
            raise click.ClickException(str(exc)) from None
    set_threads(threads)
    config = HeadConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    command = shlex.join(["wafer-cloud", "bench-heads", *sys.argv[2:]]) if len(sys.argv) > 2 else ""
    _run(
        model_dir or shipped_model_dir(),
        data,
        variants,
        protocols or PROTOCOLS,
        out,
        config,
        command,
    )


def _run(
    model_dir: Path,
    data: Path,
    variants: tuple[Any, ...],
    protocols: tuple[str, ...],
    out: Path,
    config: Any,
    command: str,
) -> None:
    from cloud.heads import report
    from cloud.heads.bench import Features, run_variant, split_for
    from cloud.heads.features import BackboneError, extract_features, load_backbone
    from wafercore.dataset import UNLABELLED
    from wafercore.readers.npz import read_npz

    try:
        backbone = load_backbone(model_dir)
    except BackboneError as exc:
        raise click.ClickException(str(exc)) from None
    dataset = read_npz(data)
    dataset = dataset.subset(np.flatnonzero(dataset.labels != UNLABELLED))
    started = time.perf_counter()
    x = extract_features(backbone, dataset)
    features = Features(
        x,
        np.asarray(dataset.labels, dtype=np.int64),
        backbone.version,
        backbone.dim,
        time.perf_counter() - started,
    )
    click.echo(
        f"{len(x):,} labelled wafers -> {backbone.dim} features of {backbone.version} "
        f"in {features.seconds:.1f} s"
    )
    by_protocol = {}
    for protocol in protocols:
        split = split_for(protocol, dataset, config.seed)
        results = [run_variant(v, features, split, config, protocol) for v in variants]
        reports = [r for r, _ in results]
        for one in reports:
            path = report.write_json(one, out / protocol)
            click.echo(
                f"{protocol:<6} {one['variant']:<9} test macro-F1 "
                f"{one['test']['macro_f1']:.4f}  params {one['head_trainable_params']:,}"
                f"  -> {path}"
            )
        report.write_figures(reports, [p for _, p in results], out / protocol / "figures")
        by_protocol[protocol] = reports
    comparison = report.write_markdown(by_protocol, out / "comparison.md", command)
    click.echo(f"comparison: {comparison}")
