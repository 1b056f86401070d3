"""Speed and memory of the semi-synthetic generator (emmil/data/synth.py).

Writes the full semi-synthetic THUMOS14 (137,118 clips) at --dim 1024 per stream (the I3D width:
a (137118, 2048) float32 array, 1.12 GB) and prints the seconds taken, the process's peak RSS and
the ratio of peak RSS to the feature array's size, all measured in this run. Target: well under a
minute on 2 cores, peak RSS about 1-2 times the array (the generator holds one copy and writes it
without another).

    .venv/bin/python bench/synth_speed.py [--dim 1024] [--dataset thumos14] [--out /tmp/emmil-synth-bench]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path

import psutil


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak if sys.platform == "darwin" else peak * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="thumos14", choices=("thumos14", "anet12"))
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/emmil-synth-bench")
    parser.add_argument("--keep", action="store_true", help="keep the written folder")
    args = parser.parse_args()

    from emmil.data.synth import write_synthetic

    out = Path(args.out)
    baseline = psutil.Process().memory_info().rss  # after imports, before any feature exists
    started = time.perf_counter()
    stamps: dict[str, float] = {}

    def progress(done: int, total: int) -> None:
        if done == total:
            stamps["generated"] = time.perf_counter()
            stamps["clips"] = total

    write_synthetic(args.dataset, out, dim=args.dim, seed=args.seed, progress=progress)
    finished = time.perf_counter()
    feature_file = next(out.glob("*-I3D-JOINTFeatures.npy"))
    array_bytes = int(stamps["clips"]) * 2 * args.dim * 4  # float32
    peak = _peak_rss_bytes()
    print(f"dataset {args.dataset}, dim {args.dim} per stream, {int(stamps['clips'])} clips, "
          f"cpu cores {psutil.cpu_count()}")
    print(f"feature array        {array_bytes / 1e9:.3f} GB (file {feature_file.stat().st_size / 1e9:.3f} GB)")
    print(f"generate             {stamps['generated'] - started:.1f} s")
    print(f"write (features+ann) {finished - stamps['generated']:.1f} s")
    print(f"total                {finished - started:.1f} s")
    print(f"baseline RSS         {baseline / 1e9:.3f} GB (interpreter + imports)")
    print(f"peak RSS             {peak / 1e9:.3f} GB")
    print(f"peak RSS / array     {peak / array_bytes:.2f}")
    print(f"(peak - baseline) / array  {(peak - baseline) / array_bytes:.2f}")
    if not args.keep:
        shutil.rmtree(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
