"""The benchmark report of a model on one evaluation split: ``report.json`` and ``report.md``.

``report.json`` has a stable schema that other tools (the promotion gate, the registry, the
dashboards) read: the required keys are `REPORT_KEYS`, the optional ones `OPTIONAL_KEYS`, and
nothing else; `validate_report` enforces it before anything is written. Inputs are plain arrays
and dicts, so the report does not depend on how the model was run (PyTorch, ONNX runtime).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.evaluation import metrics as m
from wafercore.classes import CLASS_NAMES, NUM_CLASSES
from wafercore.encoding import FAIL, OUT
from wafercore.review import DEFAULT_REVIEW_THRESHOLD

REPORT_KEYS: tuple[str, ...] = (
    "accuracy",
    "macro_f1",
    "per_class",
    "confusion_matrix",
    "ece",
    "brier",
    "macro_roc_auc",
    "macro_pr_auc",
    "bootstrap_ci",
    "per_step_accuracy",
    "halting",
    "params",
    "gflops_per_wafer",
    "latency_ms",
    "throughput_per_s",
    "peak_rss_mb",
    "model_version",
    "data",
)
"""Top-level keys every ``report.json`` has."""
OPTIONAL_KEYS: tuple[str, ...] = (
    "second_look",  # the doubtful wafers' views: threshold, views, share looked, cost, gain
    "size_buckets",
    "class_names",
    "baselines",
    "errors",
    "error_analysis",
    "reliability",
    "created_at",
)
"""Top-level keys a ``report.json`` may have besides `REPORT_KEYS`."""
COMPUTE_KEYS = ("params", "gflops_per_wafer", "latency_ms", "throughput_per_s", "peak_rss_mb")
DATA_KEYS = ("path", "sha256", "protocol", "split", "n")
LATENCY_KEYS = ("p50", "p90", "p99")

DEFAULT_TARGETS = {"accuracy": 0.93, "macro_f1": 0.90, "min_class_f1": 0.70, "p99_ms": 50.0}
"""Deployment targets of the brief and DESIGN.md §3, shown as a checklist in ``report.md``."""

HIGH_CONFIDENCE = 0.8
"""Confidence above which a mistake counts as high-confidence (brief §3.7)."""
SPARSE_DEFECT_RATIO = 0.05
"""Fail share of in-wafer die below which a map counts as sparse (brief §3.7)."""

# What a confusion between two classes usually suggests (unordered pairs). The first four are
# the brief's "neighbouring" classes (§3.7); any pair not listed has no physical neighbourship.
_PAIR_NOTES: dict[frozenset[str], str] = {
    frozenset({"Center", "Donut"}): "a small or filled donut looks like a centre blob",
    frozenset({"Edge-Loc", "Edge-Ring"}): "partial ring vs. long edge arc: angular coverage",
    frozenset({"Loc", "Random"}): "diffuse cluster vs. scattered fails: density-dependent",
    frozenset({"Near-Full", "Random"}): "dense random vs. near-full: a fuzzy fail-rate boundary",
    frozenset({"Edge-Loc", "Loc"}): "a cluster near the rim: where 'edge' starts is ambiguous",
    frozenset({"Loc", "Scratch"}): "short or broken scratches: augment with thin, cut scratches",
    frozenset({"Center", "Loc"}): "an off-centre blob: position relative to the centre decides",
}
_NEIGHBOURS = tuple(_PAIR_NOTES)[:4]


def _note(a: str, b: str) -> str:
    if "None" in (a, b):
        return "weak pattern vs. background: sparse maps; route to review"
    return _PAIR_NOTES.get(frozenset({a, b}), "no physical neighbourship: inspect the maps")


def _plain(obj: Any) -> Any:
    """JSON-ready copy: NumPy scalars and arrays to Python, tuples to lists, NaN/inf to None."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def baseline_summary(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> dict[str, Any]:
    """A baseline's entry of ``report["baselines"]``: ``{macro_f1, accuracy, per_class_f1}``."""
    per = m.per_class(y_true, y_pred)
    return {
        "macro_f1": m.macro_f1(y_true, y_pred),
        "accuracy": m.accuracy(y_true, y_pred),
        "per_class_f1": {name: v["f1"] for name, v in per.items()},
    }


def _error_analysis(
    y: npt.NDArray[np.int64],
    probs: npt.NDArray[np.float64],
    cm: npt.NDArray[np.int64],
    grids: npt.NDArray[Any] | None,
    review_threshold: float,
) -> dict[str, Any]:
    pred, conf = probs.argmax(axis=1), probs.max(axis=1)
    right = pred == y
    pairs = []
    for p in m.confusion_pairs(cm, top=5):
        true, predicted = CLASS_NAMES[p["true"]], CLASS_NAMES[p["predicted"]]
        pairs.append({**p, "true": true, "predicted": predicted, "note": _note(true, predicted)})
    n_wrong = int((~right).sum())
    in_neighbours = sum(
        int(cm[i, j])
        for i, a in enumerate(CLASS_NAMES)
        for j, b in enumerate(CLASS_NAMES)
        if i != j and frozenset({a, b}) in _NEIGHBOURS
    )
    auto = conf >= review_threshold
    out: dict[str, Any] = {
        "confusion_pairs": pairs,
        "errors": n_wrong,
        "mean_confidence_correct": float(conf[right].mean()) if right.any() else None,
        "mean_confidence_wrong": float(conf[~right].mean()) if n_wrong else None,
        "high_confidence_errors": int(((~right) & (conf > HIGH_CONFIDENCE)).sum()),
        "neighbour_error_share": in_neighbours / n_wrong if n_wrong else 0.0,
        "review": {
            "threshold": review_threshold,
            "rate": float(1.0 - auto.mean()) if len(y) else 0.0,
            "accuracy_auto": float(right[auto].mean()) if auto.any() else None,
            "accuracy_review": float(right[~auto].mean()) if (~auto).any() else None,
        },
    }
    if grids is not None:
        g = np.asarray(grids).reshape(len(y), -1)
        ratio = (g == FAIL).sum(axis=1) / np.maximum((g != OUT).sum(axis=1), 1)
        sparse = ratio < SPARSE_DEFECT_RATIO
        out["by_density"] = []
        for name, mask in (("sparse (<5% fail)", sparse), ("dense (>=5% fail)", ~sparse)):
            rate = float((~right[mask]).mean()) if mask.any() else None
            out["by_density"].append({"bucket": name, "n": int(mask.sum()), "error_rate": rate})
    return out


def build_report(
    *,
    y_true: npt.ArrayLike,
    compute: Mapping[str, Any],
    model_version: str,
    data: Mapping[str, Any],
    probs_per_step: npt.ArrayLike | None = None,
    halt_per_step: npt.ArrayLike | None = None,
    probs: npt.ArrayLike | None = None,
    steps: npt.ArrayLike | None = None,
    shapes: npt.ArrayLike | None = None,
    halt_threshold: float | None = None,
    baselines: Mapping[str, Mapping[str, Any]] | None = None,
    grids: npt.ArrayLike | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    n_errors: int = 12,
    max_f1_drop: float = 0.005,
    review_threshold: float = DEFAULT_REVIEW_THRESHOLD,
    created_at: str | None = None,
) -> dict[str, Any]:
    """Compute every metric of the report and return the validated, JSON-ready dict.

    Args:
        y_true: (N,) true class ids.
        compute: ``params``, ``gflops_per_wafer`` (average with halting), ``latency_ms``
            ({p50, p90, p99} at batch 1), ``throughput_per_s`` (batch 64), ``peak_rss_mb``.
        model_version: e.g. ``trm-v1.0.0``.
        data: ``path``, ``sha256``, ``protocol``, ``split`` (``n`` defaults to N).
        probs_per_step: (S, N, 9) probabilities after each supervision step; None for a
            single-pass model (then ``probs`` is required).
        halt_per_step: (S, N) halting probabilities; None: no halting, every step runs.
        probs: (N, 9) probabilities at the halted step; derived with ``halt_threshold`` if None.
        steps: (N,) steps used; derived like ``probs`` if None.
        shapes: (N, 2) raw map (rows, cols), for the size-bucket check.
        halt_threshold: the threshold in use, tuned on validation data; None tunes it on this
            split with `metrics.tune_halt_threshold` (optimistic: say so when quoting it).
        baselines: name → `baseline_summary` of baselines on the same rows.
        grids: (N, 26, 26) canonical grids, for the error rate by defect density.
        n_bootstrap: bootstrap resamples of the confidence intervals.
        seed: bootstrap seed.
        n_errors: high-confidence errors listed.
        max_f1_drop: macro-F1 loss allowed when tuning the halting threshold.
        review_threshold: confidence below which a wafer goes to human review.
        created_at: ISO timestamp; now (UTC) if None.

    Raises:
        ValueError: inconsistent shapes, missing compute or data fields.
    """
    y = np.asarray(y_true, dtype=np.int64)
    if probs_per_step is None:
        if probs is None:
            raise ValueError("give probs_per_step or probs")
        pps = np.asarray(probs, dtype=np.float64)[None]
    else:
        pps = np.asarray(probs_per_step, dtype=np.float64)
    if pps.ndim != 3 or pps.shape[1:] != (len(y), NUM_CLASSES):
        raise ValueError(f"probs_per_step must be (S, {len(y)}, {NUM_CLASSES}), got {pps.shape}")
    sweep: list[dict[str, float]] = []
    tuned_on = "validation"
    if halt_per_step is None:
        halt = np.zeros(pps.shape[:2])
        threshold: float | None = None
    else:
        halt = np.asarray(halt_per_step, dtype=np.float64)
        chosen, sweep = m.tune_halt_threshold(pps, halt, y, max_f1_drop)
        if halt_threshold is None:
            halt_threshold, tuned_on = chosen, "this split"
        threshold = halt_threshold
    derived_probs, derived_steps = m.halted_predictions(
        pps, halt, 2.0 if threshold is None else threshold
    )
    p = derived_probs if probs is None else np.asarray(probs, dtype=np.float64)
    used = derived_steps if steps is None else np.asarray(steps, dtype=np.int64)
    pred = p.argmax(axis=1)
    cm = m.confusion_matrix(y, pred)

    if missing := [k for k in COMPUTE_KEYS if k not in compute]:
        raise ValueError(f"compute lacks {missing}")
    data_info = {"n": len(y), **data}
    if missing_data := [k for k in DATA_KEYS if k not in data_info]:
        raise ValueError(f"data lacks {missing_data}")

    errors = [
        {**e, "true": CLASS_NAMES[e["true"]], "predicted": CLASS_NAMES[e["predicted"]]}
        for e in m.top_errors(p, y, n_errors)
    ]
    report: dict[str, Any] = {
        "accuracy": m.accuracy(y, pred),
        "macro_f1": m.macro_f1(y, pred),
        "per_class": m.per_class(y, pred),
        "confusion_matrix": cm,
        "ece": m.ece(p, y),
        "brier": m.brier(p, y),
        "macro_roc_auc": m.macro_roc_auc(p, y),
        "macro_pr_auc": m.macro_pr_auc(p, y),
        "bootstrap_ci": m.bootstrap_ci(y, pred, n=n_bootstrap, seed=seed),
        "per_step_accuracy": m.per_step_accuracy(pps, y),
        "halting": {
            "threshold": threshold,
            "tuned_on": tuned_on if threshold is not None else None,
            "avg_steps": float(used.mean()) if len(used) else 0.0,
            "max_f1_drop": max_f1_drop,
            "sweep": sweep,
        },
        "params": int(compute["params"]),
        "gflops_per_wafer": float(compute["gflops_per_wafer"]),
        "latency_ms": {k: float(compute["latency_ms"][k]) for k in LATENCY_KEYS},
        "throughput_per_s": float(compute["throughput_per_s"]),
        "peak_rss_mb": float(compute["peak_rss_mb"]),
        "model_version": model_version,
        "data": data_info,
        "class_names": list(CLASS_NAMES),
        "errors": errors,
        "error_analysis": _error_analysis(
            y, p, cm, None if grids is None else np.asarray(grids), review_threshold
        ),
        "reliability": m.reliability_bins(p, y),
        "created_at": created_at or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if "second_look" in compute:
        report["second_look"] = dict(compute["second_look"])
    if shapes is not None:
        report["size_buckets"] = m.size_bucket_accuracy(y, pred, shapes)
    if baselines:
        report["baselines"] = {name: dict(b) for name, b in baselines.items()}
    report = _plain(report)
    validate_report(report)
    return report


def validate_report(report: Mapping[str, Any]) -> None:
    """Check a report against the schema: exactly `REPORT_KEYS` plus any of `OPTIONAL_KEYS`,
    well-formed nested fields, and strict JSON (no NaN, no NumPy types).

    Raises:
        ValueError: naming every problem found.
    """
    problems = []
    if missing := [k for k in REPORT_KEYS if k not in report]:
        problems.append(f"missing keys {missing}")
    if unknown := sorted(set(report) - set(REPORT_KEYS) - set(OPTIONAL_KEYS)):
        problems.append(f"unknown keys {unknown}")
    shapes = {
        "per_class": set(CLASS_NAMES),
        "bootstrap_ci": {"accuracy", "macro_f1"},
        "halting": {"threshold", "sweep"},
        "latency_ms": set(LATENCY_KEYS),
        "data": set(DATA_KEYS),
    }
    for key, needed in shapes.items():
        value = report.get(key)
        if key in report and not (isinstance(value, Mapping) and needed <= set(value)):
            problems.append(f"{key} must be a dict with {sorted(needed)}")
    cm = report.get("confusion_matrix", [])
    if "confusion_matrix" in report and np.shape(cm) != (NUM_CLASSES, NUM_CLASSES):
        problems.append(f"confusion_matrix must be {NUM_CLASSES}x{NUM_CLASSES}")
    try:
        json.dumps(report, allow_nan=False)
    except (TypeError, ValueError) as err:
        problems.append(f"not strict JSON: {err}")
    if problems:
        raise ValueError("invalid report: " + "; ".join(problems))


def write_report(
    report: Mapping[str, Any],
    out_dir: Path | str,
    *,
    figures: Sequence[Path | str] = (),
    targets: Mapping[str, float] | None = None,
    title: str | None = None,
) -> tuple[Path, Path]:
    """Validate a report and write ``report.json`` (sorted keys, indented) and ``report.md``.

    Args:
        report: from `build_report`.
        out_dir: created if needed.
        figures: PNGs to embed in ``report.md`` (from `cloud.evaluation.plots.write_plots`),
            linked relative to ``out_dir``.
        targets: deployment targets for the checklist; `DEFAULT_TARGETS` if None.
        title: heading of ``report.md``; the model version and split if None.

    Returns:
        Paths of ``report.json`` and ``report.md``.
    """
    validate_report(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "report.json", out / "report.md"
    json_path.write_text(json.dumps(report, sort_keys=True, indent=2, allow_nan=False) + "\n")
    md = render_markdown(report, figures=figures, targets=targets, title=title, base=out)
    md_path.write_text(md)
    return json_path, md_path


def _f(v: Any, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_f(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _rows(items: Sequence[Mapping[str, Any]], *keys: str) -> list[list[Any]]:
    return [[item[k] for k in keys] for item in items]


def render_markdown(
    report: Mapping[str, Any],
    *,
    figures: Sequence[Path | str] = (),
    targets: Mapping[str, float] | None = None,
    title: str | None = None,
    base: Path | None = None,
) -> str:
    """The human-readable ``report.md`` of a validated report (see `write_report`)."""
    r, t = report, {**DEFAULT_TARGETS, **(targets or {})}
    d, ci, lat, halt = r["data"], r["bootstrap_ci"], r["latency_ms"], r["halting"]
    names, per = list(r.get("class_names", CLASS_NAMES)), r["per_class"]
    out = [f"# {title or r['model_version'] + ' on ' + str(d['split'])}", ""]
    out += [
        f"Data: `{d['path']}` (sha256 `{str(d['sha256'])[:12]}`), protocol {d['protocol']}, "
        f"split {d['split']}, {d['n']} wafers. Created {r.get('created_at', 'n/a')}.",
        "",
        "## Headline",
        "",
    ]
    ci_txt = "[{:.4f}, {:.4f}]"
    out += _table(
        ["metric", "value", "95% bootstrap CI"],
        [
            ["accuracy", r["accuracy"], ci_txt.format(*ci["accuracy"])],
            ["macro-F1", r["macro_f1"], ci_txt.format(*ci["macro_f1"])],
            ["macro ROC-AUC", r["macro_roc_auc"], ""],
            ["macro PR-AUC", r["macro_pr_auc"], ""],
        ],
    )
    worst = min(names, key=lambda n: per[n]["f1"] if per[n]["support"] else math.inf)
    checks = [
        (f"accuracy >= {t['accuracy']}", r["accuracy"] >= t["accuracy"]),
        (f"macro-F1 >= {t['macro_f1']}", r["macro_f1"] >= t["macro_f1"]),
        (
            f"every class F1 >= {t['min_class_f1']} (lowest: {worst} {per[worst]['f1']:.3f})",
            all(per[n]["f1"] >= t["min_class_f1"] for n in names if per[n]["support"]),
        ),
        (f"p99 latency < {t['p99_ms']} ms", lat["p99"] < t["p99_ms"]),
    ]
    out += [f"- [{'x' if ok else ' '}] {text}" for text, ok in checks] + ["", "## Per class", ""]
    rows = [[n, *(per[n][k] for k in ("precision", "recall", "f1", "support"))] for n in names]
    out += _table(["class", "precision", "recall", "F1", "support"], rows)
    out += ["## Confusion matrix (rows: true, columns: predicted)", ""]
    cm_rows = [[n, *row] for n, row in zip(names, r["confusion_matrix"], strict=True)]
    out += _table(["true \\ pred", *names], cm_rows)
    out += ["## Calibration", "", f"ECE (top label) {_f(r['ece'])}, Brier {_f(r['brier'])}.", ""]
    bins = [b for b in r.get("reliability") or () if b["count"]]
    if bins:
        headers = ["bin lower", "bin upper", "n", "mean confidence", "accuracy"]
        out += _table(headers, _rows(bins, "lower", "upper", "count", "confidence", "accuracy"))
    steps = ", ".join(f"{a:.4f}" for a in r["per_step_accuracy"])
    out += ["## Recursion and halting", "", f"Accuracy after each step: {steps}.", ""]
    if halt["threshold"] is not None:
        out += [
            f"Halting threshold {halt['threshold']:.2f} (tuned on {halt.get('tuned_on')}, "
            f"macro-F1 drop allowed {_f(halt.get('max_f1_drop'), 3)}): "
            f"{_f(halt.get('avg_steps'), 3)} steps per wafer on average.",
            "",
        ]
        # Every 0.05 and the chosen threshold: the full sweep is in report.json and the figure.
        shown = [
            [f"{w['threshold']:.2f}", f"{w['avg_steps']:.3f}", w["accuracy"], w["macro_f1"]]
            for w in halt["sweep"]
            if round(w["threshold"] * 100) % 5 == 0 or w["threshold"] in (halt["threshold"], 1.01)
        ]
        out += _table(["threshold", "avg steps", "accuracy", "macro-F1"], shown)
    if r.get("size_buckets"):
        out += ["## Map-size invariance (max(rows, cols) of the raw map)", ""]
        keys = ("bucket", "n", "accuracy", "macro_f1")
        out += _table(["bucket", "n", "accuracy", "macro-F1"], _rows(r["size_buckets"], *keys))
    out += ["## Compute", ""]
    compute = [
        ["parameters", f"{r['params']:,}"],
        ["GFLOP per wafer (with halting)", r["gflops_per_wafer"]],
        [
            "latency p50 / p90 / p99, batch 1 (ms)",
            " / ".join(f"{lat[k]:.2f}" for k in LATENCY_KEYS),
        ],
        ["throughput, batch 64 (wafers/s)", f"{r['throughput_per_s']:.1f}"],
        ["peak RSS (MB)", f"{r['peak_rss_mb']:.0f}"],
    ]
    out += _table(["figure", "value"], compute)
    if r.get("baselines"):
        out += ["## Baselines (same rows)", ""]
        own = {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}
        models = {r["model_version"]: {**own, "per_class_f1": {n: per[n]["f1"] for n in names}}}
        models.update(r["baselines"])
        rows = [
            [k, v["accuracy"], v["macro_f1"], *(v["per_class_f1"].get(n) for n in names)]
            for k, v in models.items()
        ]
        out += _table(["model", "accuracy", "macro-F1", *(f"F1 {n}" for n in names)], rows)
    out += _error_analysis_md(r)
    if figures:
        out += ["## Figures", ""]
        for fig in map(Path, figures):
            rel = fig.relative_to(base) if base and fig.is_relative_to(base) else fig
            out += [f"![{fig.stem}]({rel.as_posix()})", ""]
    return "\n".join(out).rstrip() + "\n"


def _error_analysis_md(r: Mapping[str, Any]) -> list[str]:
    ea = r.get("error_analysis") or {}
    out = ["## Error analysis", ""]
    if not ea.get("errors"):
        return [*out, "No errors.", ""]
    rv = ea["review"]
    out += [
        f"{ea['errors']} errors; mean confidence {_f(ea['mean_confidence_wrong'], 3)} when wrong "
        f"vs. {_f(ea['mean_confidence_correct'], 3)} when right; "
        f"{ea['high_confidence_errors']} errors above {HIGH_CONFIDENCE} confidence (the dangerous "
        f"ones); {ea['neighbour_error_share']:.0%} of errors between neighbouring classes.",
        "",
        f"Review routing at confidence < {rv['threshold']}: {rv['rate']:.1%} of wafers to review; "
        f"accuracy {_f(rv['accuracy_auto'])} on the rest, {_f(rv['accuracy_review'])} on those.",
        "",
        "Most confused pairs:",
        "",
    ]
    pairs = [{**p, "share": f"{p['share_of_true']:.1%}"} for p in ea["confusion_pairs"]]
    headers = ["true", "predicted", "count", "share of true class", "what it suggests"]
    out += _table(headers, _rows(pairs, "true", "predicted", "count", "share", "note"))
    if ea.get("by_density"):
        rows = _rows(ea["by_density"], "bucket", "n", "error_rate")
        out += _table(["defect density", "n", "error rate"], rows)
    if r.get("errors"):
        keys = ("index", "true", "predicted", "confidence", "true_prob")
        out += ["Most confident errors:", ""]
        out += _table(
            ["index", "true", "predicted", "confidence", "p(true)"], _rows(r["errors"], *keys)
        )
    return out
