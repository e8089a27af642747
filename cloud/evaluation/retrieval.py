"""Retrieval quality of similar-wafer search: which embedding finds wafers of the same class, and
does a vote over the retrieved, engineer-confirmed labels beat the classifier on any class.

History (the past wafers with confirmed labels) is the labelled wafers of WM-811K's official
``Training`` lots; queries are the labelled wafers of its ``Test`` lots, which the history never
shares a lot with (``Training`` rows of a lot that also has ``Test`` rows are left out, as in
`wafercore.splits.official_split`). For each embedding kind,

* ``vae_latent``: the novelty VAE's latent mean (`wafercore.novelty.NoveltyRuntime.score`),
* ``classifier_features``: the classifier's penultimate features (`cloud.heads.features`),

every query's k nearest history wafers are found exactly (``faiss.IndexFlatL2``). Reported per
true class and as the macro mean over the classes present among the queries: precision@k, the
share of the k neighbours whose confirmed label is the query's true class; and the F1 of a
k-NN vote (the majority label among the k, a tie going to the label of the nearest of the tied
labels' neighbours) next to the classifier's own F1 on the same queries.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.evaluation.metrics import macro_f1, per_class
from wafercore.classes import CLASS_NAMES, NUM_CLASSES
from wafercore.dataset import UNLABELLED, WaferDataset
from wafercore.readers.npz import file_sha256, read_npz
from wafercore.splits import TEST, TRAINING

log = logging.getLogger(__name__)

KINDS = ("vae_latent", "classifier_features")
"""The embeddings compared, in report order (the first wins a tie)."""
CHUNK = 4096
"""Maps whose inputs are built and embedded at once (bounds memory)."""
BATCH = 256
"""Wafers per graph call (larger batches run slower on CPU: activations leave the cache)."""
SEARCH_BATCH = 8192
"""Queries searched at once."""
LATENCY_WAFERS = 100
"""Wafers embedded one at a time to time a single-wafer extraction."""


@dataclass
class Embedded:
    """Embeddings of one set of wafers, the classifier's predictions, and the time they took.

    ``seconds[kind]`` holds ``prepare`` (building the model input) and ``model`` (the graph)."""

    vectors: dict[str, npt.NDArray[np.float32]]
    predictions: npt.NDArray[np.int64]
    seconds: dict[str, dict[str, float]]


def neighbour_vote(neighbours: npt.ArrayLike, k: int = NUM_CLASSES) -> npt.NDArray[np.int64]:
    """The majority label of each row of (Q, n) neighbour labels, nearest first.

    A tie goes to the tied label whose nearest neighbour ranks first."""
    labels = np.asarray(neighbours, dtype=np.int64)
    q, n = labels.shape
    rows = np.repeat(np.arange(q), n)
    counts = np.zeros((q, k), dtype=np.int64)
    np.add.at(counts, (rows, labels.ravel()), 1)
    first = np.full((q, k), n, dtype=np.int64)
    np.minimum.at(first, (rows, labels.ravel()), np.tile(np.arange(n), q))
    vote: npt.NDArray[np.int64] = np.argmax(counts * (n + 1) - first, axis=1).astype(np.int64)
    return vote


def precision_at_k(neighbours: npt.ArrayLike, y_true: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """(Q,) share of each query's neighbours (Q, n) whose label is its true class."""
    labels = np.asarray(neighbours, dtype=np.int64)
    truth = np.asarray(y_true, dtype=np.int64)
    hits: npt.NDArray[np.float64] = np.mean(labels == truth[:, None], axis=1, dtype=np.float64)
    return hits


def precision_by_class(precision: npt.NDArray[np.float64], y_true: npt.ArrayLike) -> dict[str, Any]:
    """Mean precision@k per true class (None for a class with no query), their macro mean over
    the classes present, and the micro mean over all queries."""
    truth = np.asarray(y_true, dtype=np.int64)
    by_class: dict[str, float | None] = {}
    for cls, name in enumerate(CLASS_NAMES):
        rows = truth == cls
        by_class[name] = float(precision[rows].mean()) if rows.any() else None
    present = [v for v in by_class.values() if v is not None]
    return {
        "per_class": by_class,
        "macro": float(np.mean(present)) if present else 0.0,
        "micro": float(precision.mean()) if len(precision) else 0.0,
    }


def retrieval_metrics(
    neighbours: npt.NDArray[np.int64],
    y_true: npt.NDArray[np.int64],
    classifier: npt.NDArray[np.int64],
) -> dict[str, Any]:
    """Precision@k and the k-NN vote's F1 of one embedding, and the classes where the vote's F1
    is above the classifier's (``classifier``: its predictions on the same queries)."""
    vote = neighbour_vote(neighbours)
    vote_f1 = {n: v["f1"] for n, v in per_class(y_true, vote).items()}
    own_f1 = {n: v["f1"] for n, v in per_class(y_true, classifier).items()}
    present = {CLASS_NAMES[c] for c in np.unique(y_true)}
    return {
        "precision_at_k": precision_by_class(precision_at_k(neighbours, y_true), y_true),
        "vote": {"macro_f1": macro_f1(y_true, vote), "per_class_f1": vote_f1},
        "vote_beats_classifier": [
            n for n in CLASS_NAMES if n in present and vote_f1[n] > own_f1[n]
        ],
    }


def nearest(
    history: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int
) -> npt.NDArray[np.int64]:
    """(Q, k) indices of each query's k nearest history rows (exact L2), nearest first."""
    import faiss

    index = faiss.IndexFlatL2(history.shape[1])
    index.add(np.ascontiguousarray(history, dtype=np.float32))
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), SEARCH_BATCH):
        part = np.ascontiguousarray(queries[start : start + SEARCH_BATCH], dtype=np.float32)
        out[start : start + len(part)] = index.search(part, k)[1]
    return out


def select_rows(
    dataset: WaferDataset, history_limit: int | None, query_limit: int | None, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Row indices of the history (labelled ``Training`` rows of lots with no ``Test`` row) and
    of the queries (labelled ``Test`` rows), each cut to its limit by a seeded random draw."""
    labelled = np.asarray(dataset.labels) != UNLABELLED
    split, lot = np.asarray(dataset.split), np.asarray(dataset.lot)
    queries = np.flatnonzero(labelled & (split == TEST))
    history = np.flatnonzero(labelled & (split == TRAINING) & ~np.isin(lot, lot[queries]))
    rng = np.random.default_rng(seed)

    def cut(rows: npt.NDArray[np.int64], limit: int | None) -> npt.NDArray[np.int64]:
        if limit is None or limit >= len(rows):
            return rows
        return np.sort(rng.choice(rows, size=limit, replace=False))

    history, queries = cut(history, history_limit), cut(queries, query_limit)
    if len(history) == 0 or len(queries) == 0:
        raise ValueError(
            f"need labelled Training and Test rows: {len(history)} history, {len(queries)} queries"
        )
    return history, queries


def embed(
    dataset: WaferDataset, rows: npt.NDArray[np.int64], models: Any, *, predict: bool
) -> Embedded:
    """Both embeddings of ``dataset``'s ``rows`` (and, with ``predict``, the classifier's
    predictions), inputs built by chunks of `CHUNK` maps and run by batches of `BATCH`."""
    runtime, backbone, novelty = models
    vectors = {
        "vae_latent": np.empty((len(rows), novelty.manifest.latent), np.float32),
        "classifier_features": np.empty((len(rows), backbone.dim), np.float32),
    }
    predictions = np.full(len(rows), -1, np.int64)
    seconds = {kind: {"prepare": 0.0, "model": 0.0} for kind in KINDS}
    for start in range(0, len(rows), CHUNK):
        part = slice(start, start + CHUNK)
        maps = [dataset.map(int(i)) for i in rows[part]]
        t0 = time.perf_counter()
        x = runtime.prepare(maps)
        t1 = time.perf_counter()
        vectors["classifier_features"][part] = _batched(lambda b: _features(backbone, b), x)
        t2 = time.perf_counter()
        if predict:
            predictions[part] = runtime.predict(x).prediction
        t3 = time.perf_counter()
        v = novelty.prepare(maps)
        t4 = time.perf_counter()
        vectors["vae_latent"][part] = _batched(lambda b: novelty.score(b).embedding, v)
        t5 = time.perf_counter()
        log.info("embedded %d/%d wafers", min(start + CHUNK, len(rows)), len(rows))
        for kind, (prep, model) in zip(
            KINDS, ((t4 - t3, t5 - t4), (t1 - t0, t2 - t1)), strict=True
        ):
            seconds[kind]["prepare"] += prep
            seconds[kind]["model"] += model
    return Embedded(vectors, predictions, seconds)


def _features(backbone: Any, inputs: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    name = backbone.session.get_inputs()[0].name
    (features,) = backbone.session.run([backbone.feature_name], {name: inputs})
    return np.asarray(features, dtype=np.float32).reshape(len(inputs), -1)


def _batched(run: Any, inputs: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    return np.concatenate([run(inputs[i : i + BATCH]) for i in range(0, len(inputs), BATCH)])


def single_wafer_ms(
    dataset: WaferDataset, rows: npt.NDArray[np.int64], models: Any
) -> dict[str, float]:
    """Median milliseconds to embed one wafer alone (input built and graph run), per kind."""
    runtime, backbone, novelty = models
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for i in rows[:LATENCY_WAFERS]:
        maps = [dataset.map(int(i))]
        t0 = time.perf_counter()
        novelty.score(novelty.prepare(maps))
        t1 = time.perf_counter()
        _features(backbone, runtime.prepare(maps))
        t2 = time.perf_counter()
        times["vae_latent"].append(t1 - t0)
        times["classifier_features"].append(t2 - t1)
    return {kind: 1000 * float(np.median(t)) for kind, t in times.items()}


def _timing(history: Embedded, queries: Embedded, n: int, kind: str) -> dict[str, float]:
    prepare = history.seconds[kind]["prepare"] + queries.seconds[kind]["prepare"]
    model = history.seconds[kind]["model"] + queries.seconds[kind]["model"]
    return {
        "wafers": n,
        "prepare_ms_per_wafer": 1000 * prepare / n,
        "model_ms_per_wafer": 1000 * model / n,
        "ms_per_wafer": 1000 * (prepare + model) / n,
    }


def _load(classifier_dir: Path, novelty_dir: Path, threads: int) -> tuple[Any, Any, Any]:
    from cloud.heads.features import load_backbone
    from wafercore.novelty import NoveltyRuntime
    from wafercore.runtime import ModelRuntime

    runtime = ModelRuntime.load(classifier_dir, threads=threads, chunk_size=BATCH)
    backbone = load_backbone(classifier_dir, threads=threads)
    return runtime, backbone, NoveltyRuntime.load(novelty_dir, threads=threads)


def command_line(
    classifier_dir: Path, novelty_dir: Path, data_path: Path, out: Path, **opts: Any
) -> str:
    """The ``wafer-cloud novelty retrieval`` command line that reproduces a run."""
    args = ["wafer-cloud", "novelty", "retrieval", "--classifier", str(classifier_dir)]
    args += ["--novelty", str(novelty_dir), "--data", str(data_path), "--out", str(out)]
    for name, value in opts.items():
        if value is not None:
            args += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(args)


def evaluate_retrieval(
    classifier_dir: Path,
    novelty_dir: Path,
    data_path: Path,
    out: Path,
    *,
    k: int = 10,
    history_limit: int | None = None,
    query_limit: int | None = None,
    seed: int = 0,
    threads: int = 0,
    command: str | None = None,
) -> dict[str, Any]:
    """Compare the two embeddings for similar-wafer search; write ``retrieval.json`` and
    ``retrieval.md`` to ``out`` and return the JSON's content (see the module docstring).

    ``threads``: ONNX Runtime intra-op threads (0: its default, every core)."""
    started = time.perf_counter()
    models = _load(classifier_dir, novelty_dir, threads)
    dataset = read_npz(data_path)
    history_rows, query_rows = select_rows(dataset, history_limit, query_limit, seed)
    log.info("%d history wafers, %d queries", len(history_rows), len(query_rows))
    history = embed(dataset, history_rows, models, predict=False)
    queries = embed(dataset, query_rows, models, predict=True)
    y_hist = np.asarray(dataset.labels[history_rows], np.int64)
    y_query = np.asarray(dataset.labels[query_rows], np.int64)
    latency = single_wafer_ms(dataset, query_rows, models)
    k_used = min(k, len(history_rows))
    kinds: dict[str, Any] = {}
    for kind in KINDS:
        t0 = time.perf_counter()
        neighbours = y_hist[nearest(history.vectors[kind], queries.vectors[kind], k_used)]
        kinds[kind] = {
            "dim": int(history.vectors[kind].shape[1]),
            **retrieval_metrics(neighbours, y_query, queries.predictions),
            "timing": {
                **_timing(history, queries, len(y_hist) + len(y_query), kind),
                "single_wafer_ms": latency[kind],
                "search_seconds": time.perf_counter() - t0,
            },
        }
    opts = {"k": k, "history_limit": history_limit, "query_limit": query_limit, "seed": seed}
    result = {
        "command": command or command_line(classifier_dir, novelty_dir, data_path, out, **opts),
        "k": k_used,
        "seed": seed,
        "models": {"classifier": models[0].version, "novelty": models[2].manifest.version},
        "data": {
            "path": str(data_path),
            "sha256": file_sha256(data_path),
            **_sizes(y_hist, y_query),
        },
        "classifier": {
            "macro_f1": macro_f1(y_query, queries.predictions),
            "per_class_f1": {
                n: v["f1"] for n, v in per_class(y_query, queries.predictions).items()
            },
        },
        "kinds": kinds,
        "best": max(KINDS, key=lambda kind: kinds[kind]["precision_at_k"]["macro"]),
        "seconds": time.perf_counter() - started,
    }
    write_reports(result, out)
    return result


def _sizes(y_hist: npt.NDArray[np.int64], y_query: npt.NDArray[np.int64]) -> dict[str, Any]:
    return {
        "history": len(y_hist),
        "queries": len(y_query),
        "history_class_counts": _counts(y_hist),
        "query_class_counts": _counts(y_query),
    }


def _counts(labels: npt.NDArray[np.int64]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    return {name: int(counts[i]) for i, name in enumerate(CLASS_NAMES)}


def _f(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def render_markdown(result: dict[str, Any]) -> str:
    """``retrieval.md``: precision@k and F1 tables, the winner, timing and the command."""
    k, data, models = result["k"], result["data"], result["models"]
    lines = [
        "# Similar-wafer retrieval: which embedding",
        "",
        f"Classifier `{models['classifier']}`, novelty VAE `{models['novelty']}`. History: "
        f"{data['history']:,} labelled wafers of the official Training lots; queries: "
        f"{data['queries']:,} labelled wafers of the Test lots (unseen lots). Exact L2 k-NN, "
        f"k = {k}.",
        "",
        f"**Best embedding (macro precision@{k}): `{result['best']}`.**",
        "",
        f"## Precision@{k} (share of the {k} neighbours with the query's true class)",
        "",
        *_precision_table(result),
        "",
        f"## F1: the classifier against a {k}-NN vote over the retrieved confirmed labels",
        "",
        *_f1_table(result),
        "",
        "## Embedding extraction time (ms per wafer, this machine)",
        "",
        *_timing_table(result),
        "",
        f"Batched: inputs built by chunks of {CHUNK} maps, graphs run by {BATCH}, over all "
        f"{data['history'] + data['queries']:,} wafers; one wafer alone: median of "
        f"{LATENCY_WAFERS}. Total run {result['seconds']:.0f} s.",
        "",
        "## Command",
        "",
        f"```\n{result['command']}\n```",
        "",
    ]
    return "\n".join(lines)


def _precision_table(result: dict[str, Any]) -> list[str]:
    kinds, data = result["kinds"], result["data"]
    lines = ["| class | queries | history | " + " | ".join(KINDS) + " |"]
    lines.append("|---|---:|---:|" + "---:|" * len(KINDS))
    for name in CLASS_NAMES:
        values = " | ".join(_f(kinds[kd]["precision_at_k"]["per_class"][name]) for kd in KINDS)
        lines.append(
            f"| {name} | {data['query_class_counts'][name]:,} | "
            f"{data['history_class_counts'][name]:,} | {values} |"
        )
    for avg in ("macro", "micro"):
        values = " | ".join(f"**{kinds[kd]['precision_at_k'][avg]:.4f}**" for kd in KINDS)
        lines.append(f"| **{avg}** | | | {values} |")
    return lines


def _f1_table(result: dict[str, Any]) -> list[str]:
    kinds, own = result["kinds"], result["classifier"]
    lines = ["| class | classifier | " + " | ".join(f"vote ({kd})" for kd in KINDS) + " |"]
    lines.append("|---|---:|" + "---:|" * len(KINDS))
    for name in CLASS_NAMES:
        values = " | ".join(_f(kinds[kd]["vote"]["per_class_f1"][name]) for kd in KINDS)
        lines.append(f"| {name} | {own['per_class_f1'][name]:.4f} | {values} |")
    values = " | ".join(f"**{kinds[kd]['vote']['macro_f1']:.4f}**" for kd in KINDS)
    lines += [f"| **macro-F1** | **{own['macro_f1']:.4f}** | {values} |", ""]
    for kd in KINDS:
        beats = ", ".join(kinds[kd]["vote_beats_classifier"]) or "none"
        lines.append(f"- Vote over `{kd}` beats the classifier's F1 on: {beats}.")
    return lines


def _timing_table(result: dict[str, Any]) -> list[str]:
    lines = [
        "| embedding | dim | build input | graph | batched total | one wafer alone "
        "| k-NN search (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kd in KINDS:
        t, dim = result["kinds"][kd]["timing"], result["kinds"][kd]["dim"]
        lines.append(
            f"| {kd} | {dim} | {t['prepare_ms_per_wafer']:.3f} | {t['model_ms_per_wafer']:.3f} "
            f"| {t['ms_per_wafer']:.3f} | {t['single_wafer_ms']:.3f} | "
            f"{t['search_seconds']:.1f} |"
        )
    return lines


def write_reports(result: dict[str, Any], out: Path) -> None:
    """Write ``retrieval.json`` and ``retrieval.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrieval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "retrieval.md").write_text(render_markdown(result), encoding="utf-8")
