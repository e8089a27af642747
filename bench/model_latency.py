"""Benchmark: the default model through the exported runtime, as the edge runs it.

Prints parameters, GFLOP per wafer with halting, latency at batch 1 (p50/p90/p99, one thread,
with halting and with every step) and throughput at batch 64.

    .venv/bin/python bench/model_latency.py --model models/trm-v1.1.0
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from wafercore.preprocessing import dataset_to_grids
from wafercore.readers.npz import read_npz
from wafercore.runtime import ModelRuntime
from wafercore.shipped import shipped_model_dir


def _latencies(runtime: ModelRuntime, tokens: np.ndarray, threshold: float | None) -> np.ndarray:
    times = []
    for row in tokens:
        started = time.perf_counter()
        runtime.predict(row[None, :], halt_threshold=threshold)
        times.append((time.perf_counter() - started) * 1000)
    return np.array(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_dir = os.environ.get("WAFER_DATA_DIR", "../shared/data/wm811k")
    parser.add_argument("--model", type=Path, default=shipped_model_dir())
    parser.add_argument("--data", type=Path, default=Path(data_dir) / "sample_stratified.npz")
    parser.add_argument("--n", type=int, default=500, help="wafers timed one at a time")
    args = parser.parse_args()

    runtime = ModelRuntime.load(args.model, threads=1)
    tokens = dataset_to_grids(read_npz(args.data)).reshape(-1, 676)[: args.n]
    result = runtime.predict(tokens)
    extra = runtime.manifest.extra
    gflops = extra.get("gflops_per_step", 0.0)
    print(f"model           {runtime.version} ({extra.get('params', '?'):,} parameters)")
    print(
        f"halting         threshold {runtime.manifest.halt_threshold:.2f}, "
        f"avg steps {result.steps.mean():.2f} of {runtime.n_sup} on {len(tokens)} wafers"
    )
    print(
        f"compute         {gflops * result.steps.mean():.3f} GFLOP/wafer with halting, "
        f"{gflops * runtime.n_sup:.3f} without (goal <= 0.3)"
    )
    for name, threshold in (("halting", None), ("all steps", 2.0)):
        t = _latencies(runtime, tokens, threshold)
        p50, p90, p99 = np.percentile(t, [50, 90, 99])
        print(f"batch 1 {name:<9} p50 {p50:.2f} ms, p90 {p90:.2f} ms, p99 {p99:.2f} ms (1 thread)")
    batches = [tokens[i : i + 64] for i in range(0, len(tokens) - 63, 64)]
    started = time.perf_counter()
    for b in batches:
        runtime.predict(b)
    rate = sum(len(b) for b in batches) / (time.perf_counter() - started)
    print(f"batch 64        {rate:,.0f} wafers/s (1 thread)")


if __name__ == "__main__":
    main()
