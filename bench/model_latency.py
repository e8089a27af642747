"""Benchmark: a model through the exported runtime, as the edge runs it (`wafercore.pipeline`).

Prints parameters, GFLOP per wafer with halting and the second look, latency at batch 1
(p50/p90/p99, one thread: building the model's input, halting, second look; and with every
step) and throughput at batch 64.

    .venv/bin/python bench/model_latency.py --model models/trm-v1.1.0
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from wafercore.pipeline import classify_maps
from wafercore.readers.npz import read_npz
from wafercore.runtime import ModelRuntime
from wafercore.second_look import second_look
from wafercore.shipped import shipped_model_dir


def _latencies(runtime: ModelRuntime, maps: list[np.ndarray], every_step: bool) -> np.ndarray:
    times = []
    for wafer in maps:
        started = time.perf_counter()
        if every_step:
            runtime.predict(runtime.prepare([wafer]), halt_threshold=2.0)
        else:
            classify_maps(runtime, [wafer])
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
    dataset = read_npz(args.data)
    maps = [dataset.map(i) for i in range(min(args.n, len(dataset)))]
    inputs = runtime.prepare(maps)
    served = second_look(runtime, inputs, runtime.predict(inputs))
    steps = served.result.steps.mean() + served.extra_steps.mean()
    extra = runtime.manifest.extra
    gflops = extra.get("gflops_per_step", 0.0)
    print(f"model           {runtime.version} ({extra.get('params', '?'):,} parameters)")
    print(
        f"halting         threshold {runtime.manifest.halt_threshold:.2f}, avg steps "
        f"{served.result.steps.mean():.2f} of {runtime.n_sup} on {len(maps)} wafers; second "
        f"look ({runtime.manifest.tta_views} views) below {runtime.manifest.tta_threshold:.2f} "
        f"for {served.looked.mean():.1%}"
    )
    print(
        f"compute         {gflops * steps:.3f} GFLOP/wafer with halting and second looks, "
        f"{gflops * runtime.n_sup:.3f} for every step once (goal <= 0.3)"
    )
    for name, every_step in (("served", False), ("all steps", True)):
        t = _latencies(runtime, maps, every_step)
        p50, p90, p99 = np.percentile(t, [50, 90, 99])
        print(f"batch 1 {name:<9} p50 {p50:.2f} ms, p90 {p90:.2f} ms, p99 {p99:.2f} ms (1 thread)")
    batches = [maps[i : i + 64] for i in range(0, len(maps) - 63, 64)]
    started = time.perf_counter()
    for b in batches:
        classify_maps(runtime, b)
    rate = sum(len(b) for b in batches) / (time.perf_counter() - started)
    print(f"batch 64        {rate:,.0f} wafers/s (1 thread)")


if __name__ == "__main__":
    main()
