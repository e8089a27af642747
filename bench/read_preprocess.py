"""Benchmark: read every labelled WM-811K map and convert it to the 26x26 canonical grid.

Goal (issue 2): under 20 s for all 149,273 labelled maps on the 2-core CI machine.

    WAFER_DATA_DIR=../shared/data/wm811k .venv/bin/python bench/read_preprocess.py
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np

from wafercore.preprocessing import dataset_to_grids, to_grid
from wafercore.readers.npz import read_npz


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = os.environ.get("WAFER_DATA_DIR", "../shared/data/wm811k")
    parser.add_argument("--data", type=Path, default=Path(default_dir) / "labelled.npz")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best and median print")
    args = parser.parse_args()

    reads, converts = [], []
    for _ in range(args.repeat):
        started = time.perf_counter()
        ds = read_npz(args.data)
        read_done = time.perf_counter()
        grids = dataset_to_grids(ds)
        converts.append(time.perf_counter() - read_done)
        reads.append(read_done - started)
    totals = [r + c for r, c in zip(reads, converts, strict=True)]

    # The per-map path the edge takes for one request, for comparison.
    sample = [ds.map(i) for i in range(0, len(ds), max(1, len(ds) // 5000))]
    started = time.perf_counter()
    for m in sample:
        to_grid(m)
    per_map_us = (time.perf_counter() - started) / len(sample) * 1e6

    n = len(ds)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"data            {args.data} ({n:,} maps, {len(np.unique(ds.shapes, axis=0))} shapes)")
    print(
        f"read + convert  best {min(totals):.2f} s, median {np.median(totals):.2f} s "
        f"over {args.repeat} runs (goal < 20 s)"
    )
    print(f"  read npz      best {min(reads):.2f} s")
    print(f"  to 26x26      best {min(converts):.2f} s ({n / min(converts):,.0f} maps/s)")
    print(f"grids           {grids.shape} {grids.dtype}, {grids.nbytes / 2**20:.0f} MiB")
    print(f"single map      {per_map_us:.1f} us per to_grid call (edge request path)")
    print(f"peak RSS        {peak_mb:.0f} MiB")


if __name__ == "__main__":
    main()
