"""Scaling (issue 7, item 5): wall time of one 12-trial ablation at max-concurrency 1 vs 2.

    speedup = wall(--max-concurrent 1) / wall(--max-concurrent 2)        target close to 2 on 2 cores

Control: `machine_parallelism` (bench/common.py), the throughput two concurrent single-thread matmul
processes get relative to one alone, measured before and after the ablations: 2.0 on two free cores,
about 1.0 when other jobs hold a core. The speedup is to be read against it.

Both runs are the same `emmil ablate` command (table3: 4 variants x 3 seeds = 12 trials by default) with
the same --cpus-per-trial (default 1, so each trial computes with one thread in both runs); only the
concurrency differs. Each run pays the harness's fixed start-up once, so the speedup stays below 2 by
that start-up's share. Semi-synthetic THUMOS14. Prints one final JSON line.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    ablate_command,
    machine_parallelism,
    emit_result,
    machine_description,
    out_dir,
    run_command,
    synthetic_data,
    write_experiment,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="table3", help="shipped experiment to copy (default table3)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3: table3 4 variants x 3 = 12 trials)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2], help="max-concurrent values (default 1 2)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--preset", default="quick", choices=["quick", "paper"])
    p.add_argument("--dim", type=int, default=64, help="feature width per stream (default 64)")
    p.add_argument("--max-videos", type=int, default=None, help="limit the synthetic dataset's videos")
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs in every trial")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default bench/out/scaling)")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed per ablation")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    work = args.work or out_dir("scaling")
    data_dir = args.data_dir or synthetic_data("thumos14", dim=args.dim, max_videos=args.max_videos)
    overrides = {"train.epochs": args.epochs} if args.epochs else {}
    experiment = write_experiment(work / "bench-scaling.yaml", base=args.experiment, overrides=overrides)
    from harness.experiments import expand_trials, load_experiment

    trials = len(expand_trials(load_experiment(str(experiment)), args.seeds))

    # Control: how many cores' worth of throughput 2 single-thread processes get on this machine right
    # now (other jobs share it). A speedup can only be judged against this, measured before and after.
    parallel_before = machine_parallelism()
    walls: dict[int, float] = {}
    for c in args.concurrency:
        results = work / f"results-c{c}"
        shutil.rmtree(results, ignore_errors=True)
        cmd = ablate_command(experiment, data_dir=data_dir, results=results, seeds=args.seeds, max_concurrent=c,
                             cpus_per_trial=args.cpus_per_trial, preset=args.preset)
        print("running:", " ".join(cmd), flush=True)
        run, _ = run_command(cmd, log_path=work / f"ablate-c{c}.log", timeout=args.timeout, interval=0)
        walls[c] = run.seconds
        print(f"max-concurrent {c}: {run.seconds:.1f} s", flush=True)

    parallel_after = machine_parallelism()
    base = min(walls)
    figures = {
        "dataset": "semi-synthetic THUMOS14",
        "dim": args.dim,
        "max_videos": args.max_videos,
        "preset": args.preset,
        "epochs": args.epochs,
        "trials": trials,
        "cpus_per_trial": args.cpus_per_trial,
        "wall_seconds": {str(c): round(w, 2) for c, w in walls.items()},
        "speedup": {str(c): round(walls[base] / w, 3) for c, w in walls.items()},
        "target_speedup_2": 2.0,
        "machine_parallelism_before": round(parallel_before, 2),
        "machine_parallelism_after": round(parallel_after, 2),
    }
    emit_result("scaling", figures, machine=machine_description())
    return 0


if __name__ == "__main__":
    sys.exit(main())
