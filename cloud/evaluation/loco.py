"""Leave-one-class-out evaluation of the novelty model (issue 14).

A VAE is trained without one defect class (``novelty.exclude``), its threshold calibrated on
the known-class wafers of validation lots, and then the exported graph scores every wafer of
that class in the test lots (the novel ones) against a seeded random sample of the test lots'
other wafers (the known ones, ``None`` included). Repeated for each of the eight defect
classes, this says how well the score finds a pattern nobody has labelled yet: AUROC, AUPRC,
the miss rate at 5% false alarms, and miss and false-alarm rates at the model's own threshold.

Every held-out class is a run of its own under ``out/runs/<class>``: checkpoints (resumable),
the exported model, ``loco.json`` and the scores once it is done. A class whose ``loco.json``
is there is not run again, so a killed evaluation resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cloud.evaluation.novelty import REPORT_FPR, novelty_metrics
from cloud.evaluation.plots import new_figure, save_figure
from cloud.settings import CloudSettings
from cloud.training.config import TrainConfig
from cloud.training.data import Part, PreparedData, prepare
from cloud.training.trainer import BEST
from cloud.training.vae import finalize_vae, known_part, runtime_scores, train_vae
from wafercore.classes import CLASS_NAMES
from wafercore.dataset import WaferDataset
from wafercore.encoding import FAIL, OUT
from wafercore.novelty import NoveltyRuntime

log = logging.getLogger(__name__)

DEFECT_CLASSES: tuple[str, ...] = CLASS_NAMES[1:]
"""The classes held out in turn: every class but ``None``."""
TARGET_AUROC = 0.90
"""The issue's target: LOCO AUROC averaged over the defect classes."""
KNOWN_SAMPLE = 10_000
"""Known-class test wafers scored against each held-out class."""
RESULT, SCORES = "loco.json", "scores.npz"
"""What a finished class leaves in its run directory (and the summary's name in ``out``)."""
QUANTILES = (0.5, 0.9, 0.95, 0.99)


def class_slug(name: str) -> str:
    """Directory name of a held-out class's run (``Near-Full`` -> ``near-full``)."""
    return name.lower()


def held_out_config(config: TrainConfig, name: str) -> TrainConfig:
    """``config`` with ``name`` excluded from training and calibration, and a version of its
    own (``vae-v0.<class id>.0``) so its exported model cannot be mistaken for the real one."""
    data = config.to_dict()
    data["novelty"]["exclude"] = [name]
    data["version"] = f"vae-v0.{CLASS_NAMES.index(name)}.0"
    return TrainConfig.model_validate(data)


def _rows(part: Part, idx: np.ndarray) -> Part:
    """The rows ``idx`` of ``part`` (its cached grids reused, not rebuilt)."""
    return Part(
        raw=part.raw.subset(idx),
        grids=part.grids[idx],
        labels=part.labels[idx],
        shapes=part.shapes[idx],
    )


def known_and_novel(test: Part, name: str, known_sample: int, seed: int) -> tuple[Part, Part]:
    """The known wafers (a seeded random sample of ``known_sample`` test wafers of the other
    classes; the same draw order for every class) and the novel ones (all of class ``name``)."""
    cls = CLASS_NAMES.index(name)
    order = np.random.default_rng([seed, 23]).permutation(len(test))
    known = order[test.labels[order] != cls][:known_sample]
    return _rows(test, np.sort(known)), _rows(test, np.flatnonzero(test.labels == cls))


def _quantiles(scores: np.ndarray) -> dict[str, float]:
    return {str(q): float(np.quantile(scores, q)) for q in QUANTILES} | {
        "mean": float(scores.mean())
    }


def run_class(
    config: TrainConfig,
    data: PreparedData,
    name: str,
    run_dir: Path,
    *,
    known_sample: int = KNOWN_SAMPLE,
) -> dict[str, Any]:
    """Train, export and score the VAE that never saw ``name``; writes ``loco.json`` and the
    scores into ``run_dir`` and returns the record.

    Raises:
        ValueError: the test lots hold no wafer of ``name``.
    """
    known, novel = known_and_novel(data.test, name, known_sample, config.seed)
    if len(novel) == 0:
        raise ValueError(f"the test lots hold no {name} wafer: nothing to score as novel")
    held_out = held_out_config(config, name)
    started = time.perf_counter()
    state = train_vae(held_out, data, run_dir, resume=True)
    model_dir = run_dir / "model"
    extra = finalize_vae(run_dir / BEST, data.val, model_dir)
    runtime = NoveltyRuntime.load(model_dir, threads=2)
    known_scores = runtime_scores(runtime, known.raw)
    novel_scores = runtime_scores(runtime, novel.raw)
    threshold = runtime.manifest.threshold
    record = {
        "class": name,
        "version": held_out.version,
        "config": held_out.to_dict(),
        "known_sample": known_sample,
        "model_dir": str(model_dir),
        "metrics": novelty_metrics(known_scores, novel_scores),
        # The score less the binary entropy of the map's fail rate (`cloud.models.vae`'s
        # rate_entropy), the variant the model card compares it with.
        "metrics_rate_corrected": novelty_metrics(
            known_scores - _rate_entropy(known.raw), novel_scores - _rate_entropy(novel.raw)
        ),
        "calibrated": {
            "threshold": threshold,
            "target_false_alarm_rate": runtime.manifest.false_alarm_rate,
            "validation_false_alarm_rate": extra["validation"]["flagged"],
            "miss_rate": float(np.mean(novel_scores <= threshold)),
            "false_alarm_rate": float(np.mean(known_scores > threshold)),
        },
        "n": {
            "train_known": state["data"]["n_known"]["train"],
            "val_known": state["data"]["n_known"]["val"],
            "test_known": len(known),
            "test_novel": len(novel),
        },
        "score_quantiles": {"known": _quantiles(known_scores), "novel": _quantiles(novel_scores)},
        "train_seconds": float(sum(r["seconds"] for r in state["history"])),
        "epochs": len(state["history"]),
        "best_epoch": state["best_epoch"],
        "seconds": time.perf_counter() - started,
    }
    np.savez(run_dir / SCORES, known=known_scores, novel=novel_scores)
    tmp = run_dir / f"{RESULT}.tmp"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    tmp.replace(run_dir / RESULT)  # written last and atomically: its presence means done
    return record


def _rate_entropy(raw: WaferDataset) -> np.ndarray:
    """Binary entropy (nats) of each map's fail rate among its die (the corrected variant's)."""
    rates = []
    for i in range(len(raw)):
        wafer = raw.map(i)
        die = np.count_nonzero(wafer != OUT)
        rates.append(np.count_nonzero(wafer == FAIL) / die if die else 0.0)
    rate = np.clip(np.asarray(rates, dtype=np.float64), 1e-6, 1 - 1e-6)
    return -(rate * np.log(rate) + (1 - rate) * np.log1p(-rate))


def _reuse(done: Path, config: TrainConfig, known_sample: int) -> dict[str, Any]:
    """A finished class's record, if it was made by the same config and known sample.

    Raises:
        ValueError: it was not: mixing runs would make the summary meaningless.
    """
    record: dict[str, Any] = json.loads(done.read_text())
    if record.get("config") != config.to_dict() or record.get("known_sample") != known_sample:
        raise ValueError(
            f"{done} was made with another config or known sample: use another output folder "
            "(or delete that class's run to redo it)"
        )
    return record


def summarise(records: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Means over the held-out classes, and whether the mean AUROC meets `TARGET_AUROC`."""
    if not records:
        return {"n_classes": 0}

    def mean(get: Any) -> float:
        return float(np.mean([get(r) for r in records.values()]))

    auroc = mean(lambda r: r["metrics"]["auroc"])
    return {
        "n_classes": len(records),
        "auroc": auroc,
        "auprc": mean(lambda r: r["metrics"]["auprc"]),
        "auroc_rate_corrected": mean(lambda r: r["metrics_rate_corrected"]["auroc"]),
        "fnr_at_5pct_fpr": mean(lambda r: r["metrics"]["fnr_at_5pct_fpr"]),
        "miss_rate": mean(lambda r: r["calibrated"]["miss_rate"]),
        "false_alarm_rate": mean(lambda r: r["calibrated"]["false_alarm_rate"]),
        "target_auroc": TARGET_AUROC,
        "meets_target": auroc >= TARGET_AUROC,
    }


def run_loco(
    config: TrainConfig,
    settings: CloudSettings,
    out: Path,
    *,
    classes: Sequence[str] = DEFECT_CLASSES,
    known_sample: int = KNOWN_SAMPLE,
    command: str = "",
) -> dict[str, Any]:
    """The leave-one-class-out evaluation of a ``kind: vae`` config, one run per class of
    ``classes``; resumes at class level. Writes ``loco.json``, ``loco.md`` and
    ``loco_roc.png`` into ``out`` and returns the summary.

    ``command`` is recorded in ``loco.md`` (how to reproduce it).

    Raises:
        ValueError: not a VAE config, or a class that is not one of the defect classes.
    """
    if config.kind != "vae":
        raise ValueError(f"leave-one-class-out evaluates a vae config, not {config.kind!r}")
    unknown = sorted(set(classes) - set(DEFECT_CLASSES))
    if unknown or not classes:
        raise ValueError(f"classes must be among {list(DEFECT_CLASSES)}, got {list(classes)}")
    data_path = settings.resolve_data(config.data.path)
    data = prepare(config.data, data_path, settings.cache_dir, config.seed)
    log.info("data: %s", data.provenance["n"])
    records: dict[str, dict[str, Any]] = {}
    for name in classes:
        run_dir = out / "runs" / class_slug(name)
        done = run_dir / RESULT
        if done.is_file():
            log.info("%s: done before, %s reused", name, done)
            records[name] = _reuse(done, held_out_config(config, name), known_sample)
            continue
        log.info("%s: training without it (%s)", name, run_dir)
        records[name] = run_class(config, data, name, run_dir, known_sample=known_sample)
        log.info("%s: %s", name, records[name]["metrics"])
    summary = {
        "command": command,
        "config": config.to_dict(),
        "data": {k: data.provenance[k] for k in ("path", "sha256", "protocol", "n")},
        "known_sample": known_sample,
        "known_val": len(known_part(data.val, config)),
        "classes": records,
        "mean": summarise(records),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    figure = plot_roc(out, classes, out / "loco_roc.png")
    (out / "loco.md").write_text(render_markdown(summary, figure.name))
    return summary


def plot_roc(out: Path, classes: Sequence[str], path: Path) -> Path:
    """ROC curve of each held-out class from its run's scores."""
    from sklearn.metrics import roc_curve

    fig = new_figure(6.0, 5.2)
    ax = fig.add_subplot()
    for name in classes:
        scores = np.load(out / "runs" / class_slug(name) / SCORES)
        known, novel = scores["known"], scores["novel"]
        y = np.concatenate([np.zeros(len(known)), np.ones(len(novel))])
        fpr, tpr, _ = roc_curve(y, np.concatenate([known, novel]))
        ax.plot(fpr, tpr, label=name, linewidth=1.2)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    ax.axvline(REPORT_FPR, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("false-positive rate (known test wafers flagged)")
    ax.set_ylabel("true-positive rate (held-out class flagged)")
    ax.set_title("Leave-one-class-out ROC of the novelty score")
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def render_markdown(summary: Mapping[str, Any], figure: str) -> str:
    """``loco.md``: a row per held-out class, the mean, and how it was produced."""
    mean = summary["mean"]
    data = summary["data"]
    lines = [
        "# Novelty model: leave-one-class-out evaluation",
        "",
        "Each row is a VAE trained without that class (training and threshold calibration on "
        "validation lots); the exported graph then scores every test-lot wafer of the class "
        f"(novel) against a random sample of {summary['known_sample']:,} test-lot wafers of "
        "the other classes (known, `None` included). FNR is the share of novel wafers missed "
        "at the threshold that flags 5% of the known ones; miss and false alarms are at the "
        "model's own threshold (calibrated to "
        f"{summary['config']['novelty']['false_alarm_rate']:.0%} of known validation wafers).",
        "",
        "| held-out class | novel | known | AUROC | AUPRC | FNR @ 5% FPR | threshold "
        "| missed | false alarms | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in summary["classes"].items():
        m, c = r["metrics"], r["calibrated"]
        lines.append(
            f"| {name} | {r['n']['test_novel']:,} | {r['n']['test_known']:,} | {m['auroc']:.4f} "
            f"| {m['auprc']:.4f} | {m['fnr_at_5pct_fpr']:.4f} | {c['threshold']:.4f} "
            f"| {c['miss_rate']:.4f} | {c['false_alarm_rate']:.4f} | {r['train_seconds']:.0f} |"
        )
    if mean["n_classes"]:
        verdict = "meets" if mean["meets_target"] else "does NOT meet"
        lines += [
            f"| **mean of {mean['n_classes']}** | | | **{mean['auroc']:.4f}** "
            f"| **{mean['auprc']:.4f}** | **{mean['fnr_at_5pct_fpr']:.4f}** | "
            f"| **{mean['miss_rate']:.4f}** | **{mean['false_alarm_rate']:.4f}** | |",
            "",
            f"Mean AUROC {mean['auroc']:.4f} {verdict} the target of {mean['target_auroc']:.2f}.",
            "",
            "AUROC of the score less the binary entropy of the wafer's fail rate (a variant that "
            "stops known random maps from scoring high), per class: "
            + ", ".join(
                f"{name} {r['metrics_rate_corrected']['auroc']:.3f}"
                for name, r in summary["classes"].items()
            )
            + f"; mean {mean['auroc_rate_corrected']:.4f}.",
        ]
    lines += [
        "",
        f"![ROC per held-out class]({figure})",
        "",
        f"Data: `{data['path']}` (sha256 `{data['sha256'][:16]}…`), protocol "
        f"{data['protocol']}, parts {data['n']}. Config version "
        f"{summary['config']['version']}, seed {summary['config']['seed']}.",
        "",
        "Produced by:",
        "",
        "```",
        summary["command"] or "(run_loco called from Python)",
        "```",
        "",
    ]
    return "\n".join(lines)
