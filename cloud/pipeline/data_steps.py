"""The pipeline's first two steps: collect the labelled data, then check it.

**collect** fixes the job's config (the named config with its overrides, and the version the
job builds), reads the WM-811K data file the config names, and adds every engineer-reviewed
label whose map came with it (one per wafer: the latest review) as ``Training`` rows of their
lot. The result is the job's own data file, ``<job>/data/labelled.npz`` (the source file itself
when there is nothing to add), with the reviews the checks need beside it.

**validate** runs the brief's checks (`cloud.pipeline.checks`) on what collect gathered; a
failed check ends the job as ``failed``, saying which check and why.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cloud.pipeline import checks
from cloud.pipeline.context import StepContext, StepFailed, StepOutcome
from cloud.storage import jobs, labels
from cloud.storage.tables import utcnow
from wafercore.classes import CLASS_NAMES, NUM_CLASSES, DefectClass
from wafercore.dataset import UNLABELLED, WaferDataset
from wafercore.errors import InvalidInput
from wafercore.readers.npz import file_sha256, read_npz, write_npz
from wafercore.splits import TRAINING

if TYPE_CHECKING:
    from cloud.training.config import TrainConfig

DATA_DIR = "data"
DATA_FILE = "labelled.npz"
REVIEWS_FILE = "reviews.json"
VERSION = re.compile(r"^(?P<base>[a-z][a-z0-9]*-v\d+\.\d+\.)(?P<patch>\d+)$")


def collect(ctx: StepContext) -> StepOutcome:
    """Fix the job's config and version, and write its labelled data."""
    config, source = _job_config(ctx)
    version = _assign_version(ctx, config.version)
    ctx.report(0.1)
    with ctx.db.session() as session:
        reviewed = labels.reviewed_labels(session)
    data_path, dataset, added = _write_data(ctx, source, reviewed)
    # Counted over every split: the check is of the labelled data, before any split (WM-811K's
    # Training split alone has 54 Near-full wafers, its labelled data 121).
    counts = _class_counts(dataset.labels)
    by_split = {
        str(split): _class_counts(dataset.labels[dataset.split == split])
        for split in sorted(set(dataset.split.tolist()))
    }
    source_sha = file_sha256(source)
    ctx.log(
        f"{len(dataset):,} maps from {source.name}"
        + (f" + {added} reviewed maps" if added else "")
        + f"; {len(reviewed)} reviewed labels; version {version}"
    )
    job_config = config.model_copy(
        update={"version": version, "data": config.data.model_copy(update={"path": data_path})}
    )
    return StepOutcome(
        output={
            "config": job_config.to_dict(),
            "model_version": version,
            "data_path": str(data_path),
            "data_sha256": source_sha if data_path == source else file_sha256(data_path),
            "source": {"path": str(source), "sha256": source_sha},
            "rows": len(dataset),
            "reviewed": {
                "labels": len(reviewed),
                "wafers": len({(r.fab_id, r.wafer_key) for r in reviewed}),
                "added_maps": added,
            },
            "class_counts": counts,
            "class_counts_by_split": by_split,
            "reviews_file": str(ctx.job_dir / DATA_DIR / REVIEWS_FILE),
        }
    )


def _job_config(ctx: StepContext) -> tuple[TrainConfig, Path]:
    """The job's config (named config with its overrides) and its data file, which exists."""
    from cloud.pipeline.job_config import resolve_config

    try:
        config = resolve_config(ctx.settings, ctx.job.config_name, ctx.job.overrides)
    except InvalidInput as err:
        raise StepFailed(f"{err.field}: {err.reason}") from None
    source = ctx.settings.resolve_data(config.data.path)
    if not source.is_file():
        raise StepFailed(
            f"data file {source} does not exist (settings.data_dir: {ctx.settings.data_dir})"
        )
    return config, source


def _write_data(
    ctx: StepContext, source: Path, reviewed: Sequence[labels.ReviewedLabel]
) -> tuple[Path, WaferDataset, int]:
    """The job's data file (the source plus the reviewed maps; the source itself when there
    are none), its rows, how many reviewed maps joined; the reviews go beside it."""
    folder = ctx.job_dir / DATA_DIR
    folder.mkdir(parents=True, exist_ok=True)
    dataset = read_npz(source)
    added = _reviewed_rows(reviewed)
    data_path = source
    if len(added):
        data_path = folder / DATA_FILE
        write_npz(_concat(dataset, added), data_path)
        dataset = read_npz(data_path)
    (folder / REVIEWS_FILE).write_text(json.dumps([_review(r).to_dict() for r in reviewed]))
    return data_path, dataset, len(added)


def validate(ctx: StepContext) -> StepOutcome:
    """Run the data checks; the job fails here when one fails."""
    collected = ctx.output("collect")
    reviews = [
        checks.Review.from_dict(r) for r in json.loads(Path(collected["reviews_file"]).read_text())
    ]
    results = checks.run_checks(
        reviews, collected["class_counts"], ctx.settings.checks, now=utcnow()
    )
    output = {"checks": [r.to_dict() for r in results]}
    for result in results:
        ctx.log(f"{result.name}: {'passed' if result.passed else 'FAILED'}: {result.detail}")
    reason = checks.failure_reason(results)
    if reason is not None:
        raise StepFailed(reason, output)
    return StepOutcome(output=output)


def _assign_version(ctx: StepContext, base_version: str) -> str:
    """The version this job builds: the config's, or the next patch of it that no registered
    version and no other job has (kept across attempts; unique in the database)."""
    if ctx.job.model_version is not None:
        return ctx.job.model_version
    match = VERSION.match(base_version)
    if match is None:
        raise StepFailed(f"config version {base_version!r} is not like 'cnn-v1.0.0'")
    base, patch = match["base"], int(match["patch"])
    registered = [v.version for v in ctx.registry.versions()]
    for _ in range(100):  # another job may take the same patch between our read and write
        with ctx.db.session() as session:
            used = [*registered, *jobs.versions_in_use(session, prefix=base)]
            taken = [int(m["patch"]) for v in used if (m := VERSION.match(v)) and m["base"] == base]
            candidate = f"{base}{max([patch - 1, *taken]) + 1}"
            if jobs.assign_version(session, job_id=ctx.job.id, version=candidate):
                return candidate
    raise StepFailed(f"could not assign a version after {base_version}")


def _review(label: labels.ReviewedLabel) -> checks.Review:
    return checks.Review(
        fab_id=label.fab_id,
        wafer_key=label.wafer_key,
        reviewer_key=label.reviewer_key,
        label=label.label,
        reviewed_at=label.reviewed_at,
    )


def parse_label(name: str) -> DefectClass:
    """The class of a reviewed label: its display name (``Edge-Ring``), WM-811K's label
    (``Near-full``) or the enum's name (``EDGE_RING``).

    Raises:
        KeyError: no class has that name.
    """
    try:
        return DefectClass.from_display_name(name)
    except KeyError:
        pass
    try:
        return DefectClass.from_wm811k_label(name)
    except KeyError:
        pass
    try:
        return DefectClass[name.upper().replace("-", "_")]
    except KeyError:
        raise KeyError(f"unknown defect class {name!r}") from None


def _reviewed_rows(reviewed: Sequence[labels.ReviewedLabel]) -> WaferDataset:
    """The reviewed wafers whose maps came along, one row each (the latest review), as
    ``Training`` rows of their lot."""
    latest: dict[tuple[str, str], labels.ReviewedLabel] = {}
    for label in reviewed:  # oldest first: a later review of a wafer replaces the earlier
        if label.has_map:
            latest[(label.fab_id, label.wafer_key)] = label
    maps, classes, lots = [], [], []
    for label in latest.values():
        assert label.map_bytes is not None and label.rows is not None and label.cols is not None
        try:
            cls = parse_label(label.label)
        except KeyError as err:
            raise StepFailed(f"reviewed label of wafer {label.wafer_key}: {err}") from None
        grid = np.frombuffer(label.map_bytes, dtype=np.uint8)
        if grid.size != label.rows * label.cols or grid.size == 0 or grid.max(initial=0) > 2:
            raise StepFailed(
                f"reviewed map of wafer {label.wafer_key} is not {label.rows}x{label.cols} "
                "canonical die values"
            )
        maps.append(grid.reshape(label.rows, label.cols))
        classes.append(int(cls))
        lots.append(f"{label.fab_id}:{label.lot_key}")
    return WaferDataset.from_maps(
        maps, classes, split=[TRAINING] * len(maps), lot=lots, source="reviewed"
    )


def _concat(first: WaferDataset, second: WaferDataset) -> WaferDataset:
    """``first``'s rows, then ``second``'s."""

    def join(name: str) -> Any:
        return np.concatenate([np.asarray(getattr(first, name)), np.asarray(getattr(second, name))])

    return WaferDataset(
        values=join("values"),
        offsets=np.concatenate([first.offsets, second.offsets[1:] + first.offsets[-1]]),
        shapes=join("shapes"),
        labels=join("labels"),
        split=join("split").astype(np.str_),
        lot=join("lot").astype(np.str_),
        wafer_index=join("wafer_index"),
        die_size=join("die_size"),
        source=first.source,
    )


def _class_counts(labels_: np.ndarray) -> dict[str, int]:
    """Labelled samples per class, by display name (every class, zeros included)."""
    counts = np.bincount(labels_[labels_ != UNLABELLED], minlength=NUM_CLASSES)
    return {name: int(n) for name, n in zip(CLASS_NAMES, counts, strict=True)}
