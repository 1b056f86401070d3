"""Data layer (issue 2): peak memory and time of loading a W-TALC feature file.

Writes a W-TALC folder of --videos videos (THUMOS14 names and annotations, lengths drawn from the
real THUMOS14 durations on the 0.64 s grid) at --dim per stream into --work, then loads it with
emmil.data.wtalc.load_wtalc in a fresh process and reports the peak resident memory growth
(ru_maxrss after the load minus the RSS just before it) as a multiple of the final feature array:
the target is ~2 (the unpickled per-video arrays + the preallocated concatenated array), not 3+.
Prints one final JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time, psutil
from emmil.data.wtalc import load_wtalc
before = psutil.Process().memory_info().rss
t0 = time.perf_counter()
ds = load_wtalc(sys.argv[1], "thumos14")
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB
print(json.dumps({"features_bytes": int(ds.features.nbytes), "peak_growth_bytes": int(peak - before),
                  "load_seconds": seconds, "clips": int(ds.features.shape[0])}, allow_nan=False))
"""


def write_folder(work: Path, dim: int, videos: int) -> Path:
    import numpy as np

    sys.path.insert(0, str(REPO))
    from emmil.data.loading import shipped_annotation_dir

    ann_src = shipped_annotation_dir("thumos14")
    work.mkdir(parents=True, exist_ok=True)
    ann = work / "Thumos14reduced-Annotations"
    if ann.exists():
        shutil.rmtree(ann)
    shutil.copytree(ann_src, ann)
    durations = np.load(ann / "duration.npy").reshape(-1)
    n = len(durations)
    feats = np.empty(n, dtype=object)
    rng = np.random.default_rng(0)
    for i, d in enumerate(durations):
        t = max(1, int(d / 0.64)) if i < videos else 1
        feats[i] = rng.standard_normal((t, 2 * dim), dtype=np.float32)
    np.save(work / "Thumos14reduced-I3D-JOINTFeatures.npy", feats, allow_pickle=True)
    return work


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=1024, help="feature width per stream (default 1024, as I3D)")
    p.add_argument("--videos", type=int, default=412, help="videos with full-length features (default all 412)")
    p.add_argument("--work", type=Path, default=Path("/tmp/emmil-bench-data-load"))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    write_folder(args.work, args.dim, args.videos)
    write_s = time.perf_counter() - t0
    out = subprocess.run([sys.executable, "-c", CHILD, str(args.work)], capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        print(out.stderr, file=sys.stderr)
        return out.returncode
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res.update(dim=args.dim, write_seconds=write_s,
               peak_over_features=res["peak_growth_bytes"] / res["features_bytes"])
    print(f"features {res['features_bytes'] / 2**20:.0f} MiB ({res['clips']} clips x {2 * args.dim}); "
          f"load {res['load_seconds']:.2f} s; peak RSS growth {res['peak_growth_bytes'] / 2**20:.0f} MiB "
          f"= {res['peak_over_features']:.2f} x the feature array")
    print(json.dumps(res, allow_nan=False))  # ints, timings and a ratio of two positive sizes: finite
    shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
