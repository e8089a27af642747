"""Benchmark: similar-wafer search (`fab_server.similarity.index`) at 1M stored embeddings.

Goal (issue 14): with 1,000,000 stored 32-d embeddings, recall@10 of the approximate (HNSW)
index against exact search >= 0.95 and single-query p99 <= 20 ms. The approximate side is the
shipped `EmbeddingIndex`, filled in batches as the fab server fills it (exact until
``exact_below``, then the HNSW graph built once and grown); the truth is a faiss
``IndexFlatL2`` over the same vectors. Queries are held-out points of the same distribution,
never stored vectors. Latency is one query per call, with 1 faiss thread, through
`EmbeddingIndex.search` (lock and checks included), at each ``--ef-search``; the build uses
faiss's default threads. Memory is the process's resident-set growth over the build.

By default the data are synthetic, since real embeddings come from a model: ``--clusters``
Gaussian clusters in D dimensions, centres N(0, 1), each with its own spread (log-uniform in
[0.1, 0.5] per coordinate) and size. ``--embeddings FILE.npy`` reads real ones instead
(float32 (N, D)); ``--queries`` of its rows are held out and the rest are tiled, with Gaussian
jitter of 0.01 times each coordinate's standard deviation, up to ``--n`` if fewer.

    .venv/bin/python bench/similar_search.py --n 20000                  # smoke, seconds
    .venv/bin/python bench/similar_search.py                            # 1M, minutes
    .venv/bin/python bench/similar_search.py --embeddings emb.npy       # real embeddings
"""

from __future__ import annotations

import argparse
import json
import os
import time
from inspect import signature
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from fab_server.similarity.index import EmbeddingIndex

GOAL_RECALL = 0.95
GOAL_P99_MS = 20.0


def _synthetic(n: int, dim: int, clusters: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """``n`` float32 points of ``clusters`` Gaussian clusters of varying spread and size."""
    centres = rng.normal(0, 1, (clusters, dim)).astype(np.float32)
    spread = np.exp(rng.uniform(np.log(0.1), np.log(0.5), clusters)).astype(np.float32)
    weights = rng.lognormal(0, 0.5, clusters)
    which = rng.choice(clusters, n, p=weights / weights.sum())
    points = np.empty((n, dim), np.float32)
    for start in range(0, n, 250_000):
        rows = which[start : start + 250_000]
        noise = rng.standard_normal((len(rows), dim), dtype=np.float32)
        points[start : start + len(rows)] = centres[rows] + noise * spread[rows, None]
    about = (
        f"synthetic: {clusters} Gaussian clusters in {dim}-d, centres N(0, 1), spread per "
        "coordinate log-uniform in [0.1, 0.5], sizes log-normal (sigma 0.5)"
    )
    return points, about


def _real(path: Path, n: int, queries: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """``queries`` held-out rows of the file, then its other rows tiled with jitter up to ``n``."""
    data = np.load(path)
    if data.dtype != np.float32 or data.ndim != 2 or len(data) <= queries:
        raise SystemExit(f"{path}: want float32 (N, D) with N > {queries}, got {data.shape}")
    data = data[rng.permutation(len(data))]
    held, rest = data[:queries], data[queries:]
    copies = -(-n // len(rest))
    stored = np.tile(rest, (copies, 1))[:n]
    jitter = 0.01 * rest.std(axis=0)
    stored[len(rest) :] += rng.standard_normal(stored[len(rest) :].shape, np.float32) * jitter
    about = f"real: {path} ({len(data)} rows), tiled x{copies} with jitter 0.01 std"
    return np.concatenate([stored, held]), about


def _rss_bytes(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _build(stored: np.ndarray, batch: int) -> tuple[EmbeddingIndex, dict[str, Any]]:
    """The shipped index over ``stored`` (ids 1..N), added ``batch`` rows at a time."""
    before = _rss_bytes()
    started = time.perf_counter()
    index = EmbeddingIndex(stored.shape[1])
    for start in range(0, len(stored), batch):
        ids = np.arange(start + 1, min(start + batch, len(stored)) + 1, dtype=np.int64)
        index.add(ids, stored[start : start + batch])
    seconds = time.perf_counter() - started
    grown = _rss_bytes() - before
    return index, {
        "seconds": round(seconds, 2),
        "faiss_threads": faiss.omp_get_max_threads(),
        "add_batch": batch,
        "exact_after_build": index.exact,
        "rss_growth_bytes": grown,
        "rss_growth_bytes_per_embedding": round(grown / len(stored), 1),
        "peak_rss_bytes": _rss_bytes("VmHWM"),
    }


def _timed(index: EmbeddingIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids found for each query, one call per query, and each call's time in ms."""
    found, times = [], []
    for query in queries:
        started = time.perf_counter()
        ids, _ = index.search(query, k)
        times.append((time.perf_counter() - started) * 1000)
        found.append(ids[0])
    return np.array(found), np.array(times)


def _figures(found: np.ndarray, times: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    k = truth.shape[1]
    recall = float(
        np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(found, truth, strict=True)])
    )
    p50, p90, p99 = (round(float(x), 3) for x in np.percentile(times, [50, 90, 99]))
    return {
        f"recall_at_{k}": round(recall, 4),
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "meets_goal": recall >= GOAL_RECALL and p99 <= GOAL_P99_MS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="stored embeddings")
    parser.add_argument("--queries", type=int, default=1_000, help="held-out queries")
    parser.add_argument("--dim", type=int, default=32, help="dimension (synthetic data)")
    parser.add_argument("--clusters", type=int, default=2_000, help="clusters (synthetic)")
    parser.add_argument("--embeddings", type=Path, help="real embeddings, float32 (N, D) .npy")
    parser.add_argument("--ef-search", default="48,96,192", help="comma-separated values")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=100_000, help="rows per add call")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    total = args.n + args.queries
    if args.embeddings:
        points, about = _real(args.embeddings, args.n, args.queries, rng)
    else:
        points, about = _synthetic(total, args.dim, args.clusters, rng)
    stored, queries = points[: args.n], np.ascontiguousarray(points[args.n :])
    index, build = _build(stored, args.batch)

    started = time.perf_counter()
    exact = faiss.IndexFlatL2(stored.shape[1])
    exact.add(stored)
    _, labels = exact.search(queries, args.k)
    truth = labels + 1  # the bench's ids are positions + 1
    truth_seconds = time.perf_counter() - started

    faiss.omp_set_num_threads(1)
    exact_times = []
    for query in queries[:100]:
        started = time.perf_counter()
        exact.search(query[np.newaxis], args.k)
        exact_times.append((time.perf_counter() - started) * 1000)
    index.search(queries[:20], args.k)  # warm up
    by_ef = {}
    for ef in (int(x) for x in args.ef_search.split(",")):
        index.ef_search = ef
        by_ef[str(ef)] = _figures(*_timed(index, queries, args.k), truth=truth)
    report = {
        "goal": f"n=1M, recall@10 >= {GOAL_RECALL}, single-query p99 <= {GOAL_P99_MS} ms",
        "data": about,
        "n": args.n,
        "dim": int(stored.shape[1]),
        "queries": len(queries),
        "k": args.k,
        "index_defaults": {
            name: p.default
            for name, p in signature(EmbeddingIndex).parameters.items()
            if name != "dim"
        },
        "build": build,
        "exact_truth_seconds": round(truth_seconds, 2),
        "exact_single_query_p50_ms_1_thread": round(float(np.median(exact_times)), 3),
        "latency_threads": 1,
        "by_ef_search": by_ef,
        "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)},
        "faiss": faiss.__version__,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
