"""Long sweep (issue 13): N search trials on tiny data, the driver's RSS and open file descriptors
sampled every few seconds. A driver that leaks (a callback keeping every result, an MLflow client per
trial, a log file never closed) grows with the trial count; a sound one is flat after warm-up.

    emmil sweep --trials N --final-seeds 0 --scheduler none, dim-8 semi-synthetic THUMOS14, 2 epochs

Figures (one final JSON line; BENCHMARKS.md has a row):
  rss_slope_mib_per_100_trials, fds_slope_per_100_trials  least-squares slope of the driver's RSS / fd count
      against trials finished, over the samples after warm-up (the first 25% of trials) and before the
      last trial ended (teardown)
  rss_mib_first/last, fds_first/last     after warm-up and at the end
  lost, duplicated                       trials the study has COMPLETE/PRUNED vs MLflow child runs:
      lost = study trials without a FINISHED run, or planned trials missing from the study;
      duplicated = extra runs for one trial id
  agree                                  study and MLflow name the same trial ids, trial for trial

The driver is the `emmil` process only (its private Ray's processes are not the driver).
Semi-synthetic data (never real features): say the dim, videos and epochs with the figures.

    python bench/long_sweep.py --trials 200          # the BENCHMARKS.md row (~10-15 min on 2 cores)
    python bench/long_sweep.py --trials 20 --quick   # what tests/test_bench.py runs in CI
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from bench.common import bench_env, emit_result, emmil_exe, machine_description, out_dir, synthetic_data  # noqa: E402

SPACE = """name: long
dataset: thumos14
fixed: {train.val_fraction: 0.3, train.eval_every: 1, model.hidden: 8, model.cls_hidden: 8, train.batch_videos: 4}
final_overrides: {train.val_fraction: 0.0}
params:
  train.gamma: {distribution: uniform, low: 0.0, high: 0.4}
  localize.lam: {distribution: uniform, low: 0.2, high: 1.0}
"""
DONE_LINE = re.compile(r"^\[(\d+)/\d+\] search trial")


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys on xs (0 with fewer than 2 distinct xs)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


class DriverSampler(threading.Thread):
    """Every `every_s`: (trials finished so far, driver RSS in MiB, its open fds)."""

    def __init__(self, pid: int, progress: dict, every_s: float):
        super().__init__(daemon=True)
        self.proc, self.progress, self.every_s = psutil.Process(pid), progress, every_s
        self.samples: list[tuple[int, float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            try:
                self.samples.append((self.progress["done"], self.proc.memory_info().rss / 2**20, self.proc.num_fds()))
            except psutil.NoSuchProcess:
                return


def agreement(results: Path, study: str, trials: int) -> dict:
    """Study vs MLflow, trial for trial."""
    import optuna
    from mlflow.tracking import MlflowClient

    ended = {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    s = optuna.load_study(study_name=study, storage=f"sqlite:///{results}/optuna.db")
    in_study = {t.user_attrs.get("trial_id") for t in s.trials if t.state in ended}
    c = MlflowClient(tracking_uri=f"sqlite:///{results}/mlflow.db")
    exp = c.get_experiment_by_name(f"emmil-sweep-{study}")
    runs = c.search_runs([exp.experiment_id], filter_string="tags.`emmil.role` = 'trial'", max_results=50000)
    by_id: dict[str, list] = {}
    for r in runs:
        by_id.setdefault(r.data.tags.get("emmil.trial_id", ""), []).append(r)
    finished = {k for k, v in by_id.items() if any(r.info.status in ("FINISHED", "KILLED") for r in v)}
    return {"study_ended": len(in_study), "mlflow_runs": len(runs),
            "lost": max(0, trials - len(in_study)) + len(in_study - finished),
            "duplicated": sum(len(v) - 1 for v in by_id.values()),
            "agree": in_study == set(by_id)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="CI size: sample every 0.5 s")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--keep", action="store_true", help="keep the sweep's results folder (bench/out/long-sweep-*)")
    args = parser.parse_args(argv)
    every = 0.5 if args.quick else args.every
    data = synthetic_data("thumos14", dim=8, max_videos=16)
    work = Path(tempfile.mkdtemp(prefix="long-sweep-", dir=out_dir()))
    (work / "long.yaml").write_text(SPACE)
    results = work / "results"
    cmd = [emmil_exe(), "sweep", "--space", str(work / "long.yaml"), "--trials", str(args.trials),
           "--final-seeds", "0", "--scheduler", "none", "--data-dir", str(data), "--results", str(results),
           "--max-concurrent", str(args.max_concurrent), "--no-report", "--preset", "quick",
           "--set", f"train.epochs={args.epochs}", "--study", "long"]
    progress = {"done": 0}
    log_path = work / "sweep.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=bench_env(),
                                start_new_session=True)
        sampler = DriverSampler(proc.pid, progress, every)
        sampler.start()
        deadline = time.time() + args.timeout
        for line in proc.stdout:
            log.write(line)
            m = DONE_LINE.match(line)
            if m:
                progress["done"] = int(m.group(1))
                if progress["done"] % max(1, args.trials // 10) == 0:
                    print(f"  {progress['done']}/{args.trials} trials, {time.perf_counter() - t0:.0f} s", flush=True)
            if time.time() > deadline:
                proc.kill()
                break
        code = proc.wait()
        sampler.stop.set()
        sampler.join()
    wall = time.perf_counter() - t0
    if code != 0:
        print(log_path.read_text()[-3000:], file=sys.stderr)
        raise SystemExit(f"emmil sweep failed (exit {code}); log {log_path}")
    # after warm-up, before the last trial ended (then the driver tears Ray and the stores down)
    warm = [s for s in sampler.samples if max(1, args.trials // 4) <= s[0] < args.trials]
    xs = [float(s[0]) for s in warm]
    figures = {
        "data": f"semi-synthetic THUMOS14, dim 8, 16 videos, {args.epochs} epochs per trial",
        "trials": args.trials, "wall_seconds": round(wall, 1), "samples": len(sampler.samples),
        "samples_after_warmup": len(warm),
        "rss_slope_mib_per_100_trials": round(100 * slope(xs, [s[1] for s in warm]), 3),
        "fds_slope_per_100_trials": round(100 * slope(xs, [float(s[2]) for s in warm]), 3),
        "rss_mib_first": round(warm[0][1], 1) if warm else None, "rss_mib_last": round(warm[-1][1], 1) if warm else None,
        "fds_first": warm[0][2] if warm else None, "fds_last": warm[-1][2] if warm else None,
        **agreement(results, "long", args.trials),
    }
    for key, value in figures.items():
        print(f"{key:<30} {value}")
    ok = figures["lost"] == 0 and figures["duplicated"] == 0 and figures["agree"]
    if ok and not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)  # a few MB per run; kept for inspection when something is off
    emit_result("long_sweep", figures, machine=machine_description())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
