"""`emmil data synth`: write a semi-synthetic dataset (real annotations, generated I3D-like features)
in the W-TALC release layout, readable by `emmil data info` / `emmil train --data DIR`.

The generative model is documented in emmil/data/synth.py; every result on its output is labelled
"semi-synthetic" (the folder holds SYNTHETIC.json)."""

from __future__ import annotations

import argparse
import sys
import time

# Feature width per stream of each preset: quick runs vs the I3D width of the real release.
PRESET_DIMS = {"quick": 64, "paper": 1024}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=("thumos14", "anet12"),
                        help="whose real annotations (durations, segments, labels) to use")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: absent, empty, or an earlier synth output (replaced)")
    parser.add_argument("--preset", choices=tuple(PRESET_DIMS), default="paper",
                        help="feature width per stream: quick=64, paper=1024 like I3D (default: paper)")
    parser.add_argument("--dim", type=int, default=None, help="feature width per stream (overrides --preset)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (same seed -> identical files)")
    parser.add_argument("--generator", default="v2", metavar="v1|v2",
                        help="generator version (default v2): v2 = parameters calibrated against reference "
                             "rows that are not EM-MIL (attention MIL vs STPN's real-I3D mAPs; docs/synth.md), "
                             "per-video appearance, generic motion at action boundaries; v1 = the first, "
                             "uncalibrated generator, byte-identical to earlier outputs")
    parser.add_argument("--max-videos", type=int, default=None, metavar="N",
                        help="keep at most N videos of each of the train and test subsets (class-covering)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pathlib import Path

    from emmil.data.synth import check_args, check_generator, check_target, write_synthetic

    dim = args.dim if args.dim is not None else PRESET_DIMS[args.preset]
    check_args(args.dataset, dim, args.seed)  # user errors before any progress output
    check_generator(args.generator)
    check_target(Path(args.out))
    if args.max_videos is not None and args.max_videos < 1:
        from emmil.errors import ConfigError

        raise ConfigError(f"--max-videos {args.max_videos}: expected a positive number of videos per subset")
    started = time.perf_counter()
    bar = tqdm(total=0, unit="clip", unit_scale=True, desc=f"synth {args.generator} {args.dataset} dim={dim}",
               disable=args.no_progress, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        out = write_synthetic(args.dataset, args.out, dim=dim, seed=args.seed, max_videos=args.max_videos,
                              generator=args.generator, progress=progress)
    finally:
        bar.close()
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} (semi-synthetic {args.dataset}, generator {args.generator}, dim={dim} per stream, "
          f"seed={args.seed}, {bar.total} clips, {size / 2**20:.1f} MiB) in {time.perf_counter() - started:.1f} s")
    return 0
