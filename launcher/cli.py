"""``wafer-platform``: every tier on one machine, and data tools shared by all of them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path

import click
import numpy as np

from launcher.demo import DEMO_USER, DemoOutcome, Serving, lot_table, run_demo
from launcher.settings import PlatformSettings
from launcher.settings_reference import settings_reference
from launcher.up import up
from wafercore.classes import DefectClass
from wafercore.dataset import UNLABELLED, WaferDataset
from wafercore.features import spatial_features
from wafercore.preprocessing import dataset_to_grids
from wafercore.readers.lswmd import convert_lswmd, read_lswmd
from wafercore.readers.npz import read_npz
from wafercore.synthetic import generate_dataset

SHOWN_LOTS = 12
TIERS = (
    ("fab server", "wafer-fab serve", "gRPC aggregation, review queue and API on SQLite"),
    ("edge node x2", "wafer-edge serve", "/classify with the halting runtime, outbox, uplink, OTA"),
    ("cloud", "wafer-cloud serve", "REST API and CloudSync, MLflow, retraining, drift, rollouts"),
)


@click.group(help="Wafer defect platform: run every tier on one machine, inspect data.")
@click.version_option(package_name="wafer-platform")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Entry point of ``wafer-platform``."""
    ctx.obj = PlatformSettings()


main.add_command(settings_reference)
main.add_command(up)


@main.group(help="Inspect and convert wafer map data.")
def data() -> None:
    """Data subcommands."""


def _load(path: Path) -> WaferDataset:
    if path.suffix == ".pkl":
        return read_lswmd(path)
    return read_npz(path)


@data.command("stats", help="Class and split counts of a WM-811K npz file or LSWMD.pkl.")
@click.option(
    "--data",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="npz file in the platform's layout, or the original LSWMD.pkl.",
)
def data_stats(path: Path) -> None:
    """Print class x split counts, sizes and lots of a data file."""
    started = time.perf_counter()
    ds = _load(path)
    elapsed = time.perf_counter() - started
    click.echo(
        f"{path}: {len(ds):,} maps, {len(np.unique(ds.lot)):,} lots, read in {elapsed:.1f} s"
    )
    splits = sorted(set(ds.split.tolist()))
    click.echo(_class_split_table(ds, splits))
    shapes = {tuple(s) for s in ds.shapes.tolist()}
    rows, cols = ds.shapes[:, 0], ds.shapes[:, 1]
    click.echo(
        f"{len(shapes)} distinct map shapes, rows {rows.min()}-{rows.max()}, "
        f"cols {cols.min()}-{cols.max()}, median {int(np.median(rows))}x{int(np.median(cols))}"
    )


def _class_split_table(ds: WaferDataset, splits: list[str]) -> str:
    counts = Counter(zip(ds.labels.tolist(), ds.split.tolist(), strict=True))
    names = [s or "(none)" for s in splits]
    lines = [f"{'id':>3} {'class':<10} {'WM-811K':<10}" + "".join(f"{n:>11}" for n in names)]
    lines[0] += f"{'total':>11}"
    keys: list[int] = [int(c) for c in DefectClass]
    if (ds.labels == UNLABELLED).any():
        keys.append(UNLABELLED)
    for key in keys:
        if key == UNLABELLED:
            head = f"{'':>3} {'unlabelled':<10} {'':<10}"
        else:
            cls = DefectClass(key)
            head = f"{key:>3} {cls.display_name:<10} {cls.wm811k_label:<10}"
        row = [counts[(key, s)] for s in splits]
        lines.append(head + "".join(f"{v:>11,}" for v in row) + f"{sum(row):>11,}")
    totals = [sum(v for (_, s), v in counts.items() if s == split) for split in splits]
    lines.append(
        f"{'':>3} {'total':<21}" + "".join(f"{v:>11,}" for v in totals) + f"{len(ds):>11,}"
    )
    return "\n".join(lines)


@data.command("convert", help="Convert the original LSWMD.pkl to the platform's npz layout.")
@click.argument("pkl", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("npz", type=click.Path(dir_okay=False, path_type=Path))
def data_convert(pkl: Path, npz: Path) -> None:
    """Write LSWMD.pkl as an npz file that `read_npz` reads."""
    convert_lswmd(pkl, npz)
    click.echo(f"wrote {npz}")


@main.command(help="Run the main job on embedded defaults (no servers to install).")
@click.option("--per-class", default=50, show_default=True, help="Synthetic wafers per class.")
@click.option("--wafers", default=500, show_default=True, help="Wafers streamed to the fab.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option(
    "--serve",
    is_flag=True,
    help="Keep the fab server (API and review UI) and the edge nodes serving until Ctrl-C.",
)
@click.option(
    "--http-port",
    default=8080,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="With --serve: the fab's HTTP port (API and review UI).",
)
@click.pass_obj
def demo(
    settings: PlatformSettings, per_class: int, wafers: int, seed: int, serve: bool, http_port: int
) -> None:
    """Show the data, then replay wafers through two edge nodes into a fab server."""
    rng = np.random.default_rng(seed)
    ds = _show_synthetic(per_class, rng)
    stream, source = _demo_wafers(settings, ds, wafers, rng)
    click.echo(
        f"\nReplaying {len(stream):,} {source} wafers ({len(set(stream.lot.tolist()))} lots) "
        "through two edge nodes to a fab server:"
    )
    settings.work_dir.mkdir(parents=True, exist_ok=True)

    async def keep_serving(outcome: DemoOutcome, serving: Serving) -> None:
        _print_outcome(outcome)
        await _cloud_demo(settings)
        _print_serving(serving)
        await asyncio.Event().wait()  # until Ctrl-C cancels the demo, which stops every tier

    if serve:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                run_demo(
                    settings.work_dir,
                    settings.model_dir,
                    stream,
                    click.echo,
                    serve=keep_serving,
                    http_port=http_port,
                )
            )
        click.echo("\nstopped every tier")
        return
    outcome = asyncio.run(run_demo(settings.work_dir, settings.model_dir, stream, click.echo))
    _print_outcome(outcome)
    asyncio.run(_cloud_demo(settings))
    click.echo("\nTiers this demo starts:")
    for name, command, what in TIERS:
        click.echo(f"  - {name:<13} {command:<18} {what}")
    click.echo(
        f"\nReview UI: `wafer-platform demo --serve` keeps every tier serving and "
        f"prints a sign-in; the UI is then at http://127.0.0.1:{http_port}/ui/ (user "
        f"{DEMO_USER!r}, password printed at start)."
    )


def _print_outcome(outcome: DemoOutcome) -> None:
    for station, summary in outcome.replays.items():
        click.echo(f"{station}: {summary.report()}".replace("\n", "\n  "))
    click.echo(
        f"{outcome.sent:,} wafers classified at the edge, {outcome.delivered:,} stored at the "
        f"fab (outboxes drained) in {outcome.seconds:.1f} s\n"
    )
    click.echo(lot_table(outcome.lots[:SHOWN_LOTS]))
    if len(outcome.lots) > SHOWN_LOTS:
        click.echo(f"... and {len(outcome.lots) - SHOWN_LOTS} more lots")
    click.echo("\nReview queue, most uncertain first (HTTP API, as the review UI sees it):")
    for item in outcome.queue_head:
        click.echo(
            f"  {item['wafer_id']:<22} {item['node_id']:<10} {item['reason']:<15} predicted "
            f"{item['predicted_name']!s:<10} confidence {item['confidence']:.2f}"
        )


def _print_serving(serving: Serving) -> None:
    click.echo("\nServing until Ctrl-C:")
    click.echo(f"  review UI     {serving.ui_url}")
    click.echo(f"  sign in as    {serving.user} / {serving.password}   (admin; new each run)")
    for node_id, url in serving.edge_urls.items():
        click.echo(f"  edge node     {node_id:<10} {url}/classify")
    click.echo(f"  fab gRPC      {serving.fab_grpc}")


async def _cloud_demo(settings: PlatformSettings) -> None:
    """Run one short retraining job through the cloud tier and print its path to the registry."""
    from launcher.cloud_demo import DEMO_GATE, run_cloud_demo

    click.echo(
        "\nCloud: registry, API, pipeline and CloudSync; the fab syncs, drift is measured, a "
        "short retraining job runs and its candidate goes through a canary:"
    )
    fab_db = settings.work_dir / "demo" / "fab.db"
    outcome = await run_cloud_demo(
        settings.work_dir,
        settings.broker_url,
        click.echo,
        fab_db=fab_db if fab_db.exists() else None,
    )
    click.echo(
        f"(the demo's gate is relaxed for a model trained for seconds: {DEMO_GATE.model_dump()})"
    )
    click.echo("Registry (MLflow), newest first:")
    for model in outcome.models:
        aliases = ", ".join(model["aliases"]) or "-"
        click.echo(f"  {model['version']:<14} aliases: {aliases}")


def _show_synthetic(per_class: int, rng: np.random.Generator) -> WaferDataset:
    """Generate wafers of every class and print what they look like after preprocessing."""
    started = time.perf_counter()
    ds = generate_dataset(per_class, rng)
    grids = dataset_to_grids(ds)
    feats = spatial_features(grids)
    elapsed = (time.perf_counter() - started) * 1000
    click.echo(
        f"Generated and preprocessed {len(ds):,} synthetic wafers of every class to "
        f"{grids.shape[1]}x{grids.shape[2]} grids in {elapsed:.0f} ms.\n"
    )
    click.echo(
        f"{'id':>3} {'class':<10} {'wafers':>7} {'map rows':>9} {'fail share':>11} "
        f"{'centroid':>9} {'entropy':>8}"
    )
    examples = []
    for cls in DefectClass:
        idx = np.flatnonzero(ds.labels == cls)
        rows = ds.shapes[idx, 0]
        click.echo(
            f"{int(cls):>3} {cls.display_name:<10} {len(idx):>7} "
            f"{f'{rows.min()}-{rows.max()}':>9} {feats.defect_ratio[idx].mean():>11.3f} "
            f"{feats.centroid_distance[idx].mean():>9.2f} {feats.spatial_entropy[idx].mean():>8.2f}"
        )
        examples.append((cls.display_name, grids[idx[0]]))
    click.echo("\nOne preprocessed example per class (. pass, # fail, blank outside the wafer):")
    for i in range(0, len(examples), 3):
        row = examples[i : i + 3]
        click.echo("  ".join(f"{name:<26}" for name, _ in row))
        drawn = [_ascii(grid).splitlines() for _, grid in row]
        for line in zip(*drawn, strict=True):
            click.echo("  ".join(line))
    return ds


def _demo_wafers(
    settings: PlatformSettings, synthetic: WaferDataset, count: int, rng: np.random.Generator
) -> tuple[WaferDataset, str]:
    """Whole lots of real maps from the configured WM-811K sample, else the synthetic wafers."""
    if settings.data_dir is not None:
        sample = settings.data_dir / "unlabelled_sample.npz"
        if sample.exists():
            real = read_npz(sample)
            # A random sample of 811k wafers holds at most a dozen of any lot: take the fullest.
            lots, sizes = np.unique(real.lot, return_counts=True)
            full = rng.permutation(lots[sizes >= 8])
            picked: list[int] = []
            for lot in full:
                if len(picked) >= count:
                    break
                picked.extend(np.flatnonzero(real.lot == lot).tolist())
            return real.subset(np.array(picked[:count])), f"real WM-811K ({sample.name})"
    pick = rng.permutation(len(synthetic))[:count]
    chosen = synthetic.subset(pick)
    lots = [f"DEMO-{i // 25 + 1:03d}" for i in range(len(chosen))]
    return WaferDataset.from_maps(list(chosen.maps()), labels=chosen.labels, lot=lots), "synthetic"


def _ascii(grid: np.ndarray) -> str:
    chars = np.array([".", "#", " "])
    return "\n".join("".join(row) for row in chars[grid])
