"""``wafer-cloud novelty``: attach a novelty model to a classifier, evaluate it, and the
leave-one-class-out evaluation (issue 14)."""

from __future__ import annotations

import hashlib
import shlex
import shutil
from dataclasses import replace
from pathlib import Path

import click

from cloud.settings import CloudSettings
from wafercore.classes import CLASS_NAMES
from wafercore.splits import PROTOCOLS

DEFECT_CLASSES = CLASS_NAMES[1:]


@click.group(help="Novelty model: attach to a classifier, evaluate, leave-one-class-out.")
def novelty() -> None:
    """Commands of the novelty model (`wafercore.novelty`)."""


def _require(directory: Path, files: tuple[str, ...], option: str) -> None:
    missing = [name for name in files if not (directory / name).is_file()]
    if missing:
        raise click.BadParameter(f"{directory} lacks {', '.join(missing)}", param_hint=option)


def attach_novelty(classifier: Path, novelty_dir: Path, version: str, out: Path) -> Path:
    """Write ``out``: the classifier's graph and manifest (as ``version``, naming the novelty
    model in ``extra``) beside the novelty model's graph and manifest; verified by loading it.

    A single-pass (cnn) classifier's graph also gets its penultimate features as an output
    (`cloud.export.expose_features`, weights and logits untouched): the node embeds each wafer
    with them for the fab's similar-wafer search, where they retrieve far better than the
    VAE's latent (docs/novelty.md).

    Raises:
        click.UsageError: ``out`` is a non-empty folder or a file.
        click.BadParameter: an input lacks its files, or the version is not valid.
        click.ClickException: an input cannot be loaded.
    """
    from cloud.export import expose_features, rewrite_manifest
    from wafercore.novelty import NOVELTY_FILE, NOVELTY_MANIFEST_FILE, NoveltyManifest
    from wafercore.runtime import FEATURES, MANIFEST_FILE, MODEL_FILE, ModelLoadError, ModelRuntime

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise click.UsageError(f"--out {out} exists and is not an empty folder")
    _require(classifier, (MODEL_FILE, MANIFEST_FILE), "--classifier")
    _require(novelty_dir, (NOVELTY_FILE, NOVELTY_MANIFEST_FILE), "--novelty")
    try:
        base = ModelRuntime.load(classifier).manifest
        added = NoveltyManifest.from_json((novelty_dir / NOVELTY_MANIFEST_FILE).read_text())
    except (ModelLoadError, ValueError) as err:
        raise click.ClickException(f"cannot attach: {err}") from None
    if version == base.version:
        raise click.BadParameter(
            f"{version} is the classifier's own version: the new model needs a new one",
            param_hint="--version",
        )
    if not version.startswith(f"{base.kind}-v"):
        raise click.BadParameter(
            f"{version!r} is not like '{base.kind}-v1.2.0' (the classifier is a {base.kind})",
            param_hint="--version",
        )
    try:
        manifest = replace(
            base, version=version, extra={**base.extra, "novelty_model": added.version}
        )
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--version") from None
    graph = (classifier / MODEL_FILE).read_bytes()
    if base.kind == "cnn" and FEATURES not in ModelRuntime.load(classifier).output_names:
        graph = expose_features(graph)
        manifest = replace(manifest, onnx_sha256=hashlib.sha256(graph).hexdigest())
    out.mkdir(parents=True, exist_ok=True)
    try:
        (out / MODEL_FILE).write_bytes(graph)
        rewrite_manifest(out, manifest)
        for name in (NOVELTY_FILE, NOVELTY_MANIFEST_FILE):
            shutil.copyfile(novelty_dir / name, out / name)
        if ModelRuntime.load(out).novelty is None:  # cannot happen: both files are there
            raise ModelLoadError(f"{out} loads without its novelty model")
    except (ModelLoadError, OSError) as err:
        shutil.rmtree(out, ignore_errors=True)
        raise click.ClickException(f"the attached model does not load: {err}") from None
    return out


@novelty.command(
    help="Make a new model directory: a classifier (model.onnx, model.json as --version) with a "
    "novelty model (novelty.onnx, novelty.json) beside it; verified by loading it."
)
@click.option(
    "--classifier",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Classifier model directory.",
)
@click.option(
    "--novelty",
    "novelty_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Novelty model directory (from a `kind: vae` training).",
)
@click.option("--version", required=True, help="Version of the new model (cnn-vX.Y.Z).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="New, empty folder.")
def attach(classifier: Path, novelty_dir: Path, version: str, out: Path) -> None:
    """Attach a novelty model to a classifier."""
    attach_novelty(classifier, novelty_dir, version, out)
    click.echo(f"{version} (novelty model attached) written to {out}")


@novelty.command(
    "evaluate",
    help="Evaluate a model's novelty model on a data file's test lots (and an unlabelled "
    "sample); writes novelty_report.json, novelty_report.md and novelty_scores.png.",
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Model directory with a novelty model.",
)
@click.option(
    "--data",
    "data_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Labelled npz file.",
)
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="official")
@click.option(
    "--unlabelled",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Unlabelled production maps (npz).",
)
@click.option("--unlabelled-limit", type=click.IntRange(1), default=20_000, show_default=True)
@click.option(
    "--loco",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A loco.json of `wafer-cloud novelty loco`, copied into the report.",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def evaluate_command(
    model_dir: Path,
    data_path: Path,
    protocol: str,
    unlabelled: Path | None,
    unlabelled_limit: int,
    loco: Path | None,
    out: Path,
) -> None:
    """Write the novelty report of a model."""
    from cloud.evaluation.novelty_report import evaluate_novelty
    from wafercore.runtime import ModelLoadError

    try:
        report = evaluate_novelty(
            model_dir,
            data_path,
            out,
            protocol=protocol,
            unlabelled=unlabelled,
            unlabelled_limit=unlabelled_limit,
            loco=loco,
        )
    except (ModelLoadError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    test, mis = report["test"]["all"], report["misclassification"]

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    click.echo(
        f"{report['novelty_version']} on {test['n']:,} test wafers: {test['flagged']:.2%} "
        f"flagged; misclassification AUROC {fmt(mis['auroc_doubt'])} alone, "
        f"{fmt(mis['auroc_doubt_and_novelty'])} with novelty; report in {out}"
    )


@novelty.command(
    help="Leave-one-class-out: train the config's VAE once without each defect class and score "
    "that class's test lots as novel; resumable; loco.json, loco.md, loco_roc.png in --out."
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="A `kind: vae` training config (configs/vae_loco.yaml).",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option(
    "--class",
    "classes",
    multiple=True,
    type=click.Choice(DEFECT_CLASSES),
    help="Held-out class (repeatable; default all eight defect classes).",
)
@click.option("--known-sample", type=click.IntRange(1), default=10_000, show_default=True)
@click.pass_obj
def loco(
    settings: CloudSettings,
    config_path: Path,
    out: Path,
    classes: tuple[str, ...],
    known_sample: int,
) -> None:
    """Run (or resume) the leave-one-class-out evaluation."""
    from cloud.evaluation.loco import run_loco
    from cloud.training.config import load_config

    try:
        config = load_config(config_path)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--config") from None
    if config.kind != "vae":
        raise click.BadParameter(f"{config_path} is a {config.kind} config", param_hint="--config")
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    args = ["--config", str(config_path), "--out", str(out)]
    for name in classes:
        args += ["--class", name]
    args += ["--known-sample", str(known_sample)]
    command = shlex.join(["wafer-cloud", "-v", "novelty", "loco", *args])
    summary = run_loco(
        config,
        settings,
        out,
        classes=classes or DEFECT_CLASSES,
        known_sample=known_sample,
        command=command,
    )
    mean = summary["mean"]
    click.echo(
        f"{mean['n_classes']} held-out classes: mean AUROC {mean['auroc']:.4f}, AUPRC "
        f"{mean['auprc']:.4f}, FNR at 5% FPR {mean['fnr_at_5pct_fpr']:.4f}; report in {out}"
    )


# Which embedding finds similar wafers best lives beside its evaluation.
from cloud.evaluation.retrieval_commands import retrieval  # noqa: E402

novelty.add_command(retrieval)
