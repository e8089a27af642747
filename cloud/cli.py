"""Command line of the cloud tier (``wafer-cloud``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from cloud.settings import CloudSettings
from wafercore.splits import PROTOCOLS

FC = TypeVar("FC", bound=Callable[..., object])

model_dir_option = click.option(
    "--model",
    "model_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Model directory (model.onnx + model.json).",
)


def model_dirs_option(help_text: str) -> Callable[[FC], FC]:
    """``--model`` given once per model directory (``model_dirs``, a tuple of paths)."""
    return click.option(
        "--model",
        "model_dirs",
        multiple=True,
        required=True,
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help=help_text,
    )


@click.group(help="Cloud tier: training, evaluation, model registry, drift detection and rollouts.")
@click.version_option(package_name="wafer-platform")
@click.option("-v", "--verbose", is_flag=True, help="Log progress at INFO level.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Entry point of ``wafer-cloud``."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = CloudSettings()


@main.command(
    help="Train a model from a YAML config; resumable; exports and evaluates it. With --remote, "
    "queue a retraining job on the cloud API (CLOUD_API_URL, CLOUD_API_TOKEN) and follow it; "
    "exit status 0 succeeded, 1 failed, 3 rejected by the gate, 4 cancelled."
)
@click.option(
    "--config",
    "config",
    required=True,
    help="Training config: a file (configs/*.yaml); with --remote, a config name of the server "
    "(a path stands for its name).",
)
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), help="Checkpoints.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Model directory.")
@click.option("--resume", is_flag=True, help="Continue from the run's last checkpoint.")
@click.option("--remote", is_flag=True, help="Train on the cloud's workers, through the API.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="With --remote: override a config value by dotted path (repeatable; YAML values).",
)
@click.option("--reason", default="", help="With --remote: why (recorded with the job).")
@click.pass_obj
def train(
    settings: CloudSettings,
    config: str,
    run_dir: Path | None,
    out: Path | None,
    resume: bool,
    remote: bool,
    overrides: tuple[str, ...],
    reason: str,
) -> None:
    """Run a training config end to end, here or (``--remote``) on the cloud's workers."""
    if remote:
        from cloud.api.commands import parse_overrides, train_remote

        if run_dir or out or resume:
            raise click.UsageError("--run-dir, --out and --resume are for local training")
        train_remote(
            settings,
            config=config,
            overrides=parse_overrides(overrides),
            reason=reason or "wafer-cloud train --remote",
        )
        return
    if overrides:
        raise click.UsageError("--set is for --remote (edit the config file to train here)")
    _train_here(settings, Path(config), run_dir, out, resume)


def _train_here(
    settings: CloudSettings, config_path: Path, run_dir: Path | None, out: Path | None, resume: bool
) -> None:
    from cloud.training.config import load_config
    from cloud.training.pipeline import TrainingDataError, run_training

    if not config_path.is_file():
        raise click.BadParameter(f"file {str(config_path)!r} does not exist", param_hint="--config")
    try:
        config = load_config(config_path)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--config") from None
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    from cloud.training.distributed import DistributedContext

    try:  # under torchrun: one DDP replica per process (WORLD_SIZE, RANK, ...)
        distributed = DistributedContext.from_environment()
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    if not distributed.is_main:  # rank 0 alone logs
        logging.getLogger().setLevel(logging.WARNING)
    run_dir = run_dir or settings.work_dir / "runs" / config.version
    try:
        model_dir = run_training(
            config, settings, run_dir, out=out, resume=resume, distributed=distributed
        )
    except TrainingDataError as err:
        raise click.ClickException(str(err)) from None
    if distributed.is_main:
        click.echo(f"model written to {model_dir}")


@main.command(help="Evaluate a model directory on a data file; writes report.json, .md, plots.")
@model_dir_option
@click.option(
    "--data",
    "data_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="npz file; a file of Test lots only is the test set as a whole.",
)
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="official")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option(
    "--baseline",
    "baselines",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Model directory with a report.json to compare against (repeatable).",
)
def evaluate(
    model_dir: Path, data_path: Path, protocol: str, out: Path, baselines: tuple[Path, ...]
) -> None:
    """Write the evaluation report of a model."""
    from cloud.evaluation.evaluate import evaluate_model

    report = evaluate_model(model_dir, data_path, protocol, out, baseline_dirs=list(baselines))
    lo, hi = report["bootstrap_ci"]["macro_f1"]
    click.echo(
        f"{report['model_version']} on {report['data']['n']:,} wafers: macro-F1 "
        f"{report['macro_f1']:.4f} [{lo:.4f}, {hi:.4f}], accuracy {report['accuracy']:.4f}, "
        f"ECE {report['ece']:.4f}; report in {out}"
    )


@main.command(
    "pseudo-label",
    help="Label the unlabelled production maps with a teacher model, keep the confident ones "
    "(at most --max-per-class per class) and write them for a config's `pseudo` section.",
)
@model_dir_option
@click.option(
    "--unlabelled",
    "unlabelled_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="npz file of unlabelled maps (WM-811K's unlabelled.npz).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write them; default pseudo/<teacher version>.npz in the work dir "
    "(what a config's `pseudo.labels: pseudo/<version>.npz` reads).",
)
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), default=0.9)
@click.option("--max-per-class", type=click.IntRange(min=1), default=None)
@click.option(
    "--look-below",
    type=click.FloatRange(0, 1),
    default=0.95,
    help="Average the views (the teacher's tta_views) of maps whose first-pass confidence "
    "is below this.",
)
@click.pass_obj
def pseudo_label_command(
    settings: CloudSettings,
    model_dir: Path,
    unlabelled_path: Path,
    out: Path | None,
    threshold: float,
    max_per_class: int | None,
    look_below: float,
) -> None:
    """Write the pseudo-label file and print what it kept per class."""
    from cloud.training.pseudo import pseudo_label
    from wafercore.classes import CLASS_NAMES

    labels = pseudo_label(
        model_dir,
        unlabelled_path,
        threshold=threshold,
        max_per_class=max_per_class,
        look_below=look_below,
        threads=settings.torch_threads,
    )
    out = labels.save(out or settings.work_dir / "pseudo" / f"{labels.teacher}.npz")
    kept = ", ".join(
        f"{name} {n:,}" for name, n in zip(CLASS_NAMES, labels.class_counts(), strict=True)
    )
    click.echo(f"{len(labels.index):,} maps kept by {labels.teacher} ({kept}); written to {out}")


@main.command(
    help="Choose the default model: the best validation macro-F1 within the edge's budget."
)
@model_dirs_option("Candidate model directory, evaluated (repeatable).")
@click.option(
    "--data",
    "data_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The labelled file the candidates were trained on: needed to judge candidates of "
    "different splits on one gate part none of them trained on.",
)
def champion(model_dirs: tuple[Path, ...], data_path: Path | None) -> None:
    """Print every candidate, best first, and the one to ship."""
    from cloud.evaluation.champion import choose_champion

    try:
        chosen, candidates = choose_champion(list(model_dirs), data_path=data_path)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"judged on {candidates[0].judged_on}")
    click.echo(
        "version        val macro-F1  test macro-F1 (part)            GFLOP/wafer  params    "
        "p99 ms  budget"
    )
    for c in candidates:
        click.echo(
            f"{c.version:<14} {c.validation_macro_f1:>12.4f} {c.test_macro_f1:>14.4f} "
            f"{'(' + c.test_part + ')':<17} {c.gflops_per_wafer:>11.3f} {c.params:>9,} "
            f"{c.latency_p99_ms:>7.2f}  "
            f"{'over: ' + ', '.join(c.over_budget) if c.over_budget else 'ok'}"
        )
    if chosen is None:
        raise click.ClickException("no candidate is within the budget")
    click.echo(f"champion: {chosen.version} ({chosen.path})")


@main.command(
    help="Average several classifiers of one input into one model directory (a candidate for "
    "`champion`), calibrated on their validation lots and evaluated on the test lots."
)
@model_dirs_option("Member model directory (two or more).")
@click.option("--version", required=True, help="The ensemble's version (cnn-vX.Y.Z).")
@click.option(
    "--data",
    "data_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The npz file the members were trained on.",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.pass_obj
def ensemble(
    settings: CloudSettings, model_dirs: tuple[Path, ...], version: str, data_path: Path, out: Path
) -> None:
    """Build, calibrate and evaluate an ensemble."""
    from cloud.evaluation.evaluate import evaluate_model
    from cloud.training.ensemble import build_ensemble

    try:
        extra = build_ensemble(model_dirs, version, data_path, out, settings.cache_dir)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    report = evaluate_model(out, data_path, extra["data"]["protocol"], out)
    click.echo(
        f"{version} ({' + '.join(extra['ensemble']['members'])}): validation macro-F1 "
        f"{extra['validation']['macro_f1_halted']:.4f}, test macro-F1 {report['macro_f1']:.4f}, "
        f"{report['gflops_per_wafer']:.3f} GFLOP/wafer; written to {out}"
    )


@main.command(help="Build a TensorRT engine from a model directory (needs an NVIDIA GPU).")
@model_dir_option
@click.option("--tensorrt", is_flag=True, required=True, help="Build the TensorRT engine.")
def export(model_dir: Path, tensorrt: bool) -> None:
    """Optional accelerated artefacts beside the portable ONNX graph."""
    from cloud.export import TensorRTUnavailable, build_tensorrt

    try:
        engine = build_tensorrt(model_dir / "model.onnx", model_dir / "model.engine")
    except TensorRTUnavailable as err:
        raise click.ClickException(f"no TensorRT engine built: {err}") from None
    click.echo(f"engine written to {engine}")


@main.command(help="Create an Ed25519 signing key pair: ID.key (private, 0600) and ID.pub.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--key-id", required=True, help="Key id; nodes trust the public key as ID.pub.")
def keys(out: Path, key_id: str) -> None:
    """Write a new signing key pair."""
    from cloud.signing import generate_keypair

    try:
        pair = generate_keypair(out, key_id)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--key-id") from None
    except FileExistsError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"private key: {pair.private_key} (keep it secret)")
    click.echo(f"public key:  {pair.public_key} (pin it on nodes: EDGE_TRUSTED_KEYS_DIR)")


@main.command(
    help="Package a model directory as a signed artifact (FILE) and signature (FILE.sig)."
)
@model_dir_option
@click.option(
    "--key",
    "private_key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Ed25519 private key (PEM), from 'wafer-cloud keys'.",
)
@click.option("--key-id", required=True, help="Id of that key, as nodes know it.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--golden",
    type=click.IntRange(9, 100_000),
    default=64,
    show_default=True,
    help="Golden wafers a node checks the model against before serving it.",
)
def package(model_dir: Path, private_key: Path, key_id: str, out: Path, golden: int) -> None:
    """Write a signed model artifact."""
    from cloud.signing import package_model
    from wafercore.runtime import ModelLoadError

    try:
        artifact = package_model(
            model_dir, out, private_key=private_key, key_id=key_id, golden=golden
        )
    except ModelLoadError as err:
        raise click.BadParameter(str(err), param_hint="--model") from None
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"version: {artifact.version}")
    click.echo(f"sha256:  {artifact.sha256}")
    click.echo(f"size:    {artifact.size_bytes} bytes")
    click.echo(f"written: {artifact.path} and {artifact.signature_path} (key {artifact.key_id})")


# The API's commands live beside the API (cloud.api.commands); registered here, on the group.
from cloud.api.commands import serve, tokens  # noqa: E402

main.add_command(serve)
main.add_command(tokens)

from cloud.api.ops_commands import drift, rollout  # noqa: E402
from cloud.heads.commands import bench_heads  # noqa: E402

main.add_command(rollout)
main.add_command(drift)
main.add_command(bench_heads)

from cloud.evaluation.novelty_commands import novelty  # noqa: E402

main.add_command(novelty)

# The registry's commands live beside the registry (cloud.registry.commands).
from cloud.registry.commands import models, registry  # noqa: E402

main.add_command(registry)
main.add_command(models)

# The retraining pipeline's processes live beside the pipeline (cloud.pipeline.commands).
from cloud.pipeline.commands import beat, worker  # noqa: E402

main.add_command(worker)
main.add_command(beat)


if __name__ == "__main__":  # `python -m cloud.cli` (for example under torchrun)
    main()
