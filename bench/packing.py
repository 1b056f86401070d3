"""Packed training (issue 11): a pack of K members (emmil.packed.PackedFit) against unpacked runs.

    .venv/bin/python bench/packing.py --part train [--dim 1024] [--ks 1 2 4 8] [--epochs 3]
    .venv/bin/python bench/packing.py --part train --quick      # CI smoke: dim 32, 24 videos (numbers mean nothing)

--part train (one JSON line at the end, bench/common.emit_result):
  throughput  semi-synthetic THUMOS14 at --dim per stream (all training videos), variant `full`, paper preset
              (one video per step), the epochs of bench/train_speed.py (cycle 1: M with the all-positive
              labels, E with Eq. 3/4, M with Eq. 5/6), val_fraction 0 (training only, no validation pass).
              `fit` of one config (what a trial runs: a pack of one), then for each K a PackedFit of K
              members (seeds 0..K-1, lr 1e-4 x (1 + i/K): members differ) and `fit` again. Executed FLOPs
              per member are train_speed.epoch_flops. The fp32 matmul rate is measured in this process
              right before each run (train_speed.matmul_rate, best of the conv's shape and 2048^3); every
              ratio is over the best of those readings (the machine's attainable rate: a lower reading is
              other work on a shared machine), so ratios compare training times, not reference noise.
              ratio_over_fit: a pack's ratio over the mean of the fit runs just before and after it.
  memory      each configuration in a fresh process (bench/memory.py's way: psutil USS, never RSS, sampled
              every 0.1 s): the dataset is loaded from disk (bench/common.synthetic_data), then sampling starts
              and --memory-epochs epochs of training plus the test evaluation run (evaluate_test, or
              evaluate_test_packed for a pack). Reported: the peak USS, the part above the loaded process
              (training + evaluation), and both per member against the unpacked run.

    .venv/bin/python bench/packing.py --part harness [--seeds 5] [--harness-dim 64] [--max-concurrent 2]
    .venv/bin/python bench/packing.py --part harness --quick    # CI smoke: dim 8, 12 videos, 2 seeds, 2 epochs

--part harness: Table 3 (4 variants) x --seeds through `emmil ablate --pack 1` and `--pack <seeds>` (one
              pack per variant), --max-concurrent P at --cpus-per-trial, quick preset, semi-synthetic
              THUMOS14 at --harness-dim, against the same trials' bare fit()+evaluate_test() seconds run
              serially here (bench/harness_overhead.bare_trial_seconds):
              overhead_ratio_pack<K> = wall / (bare sum / P)  (target <= 1.15), pack_speedup = wall(pack 1) /
              wall(pack <seeds>). The three timed things run one after the other, never side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit_result, machine_description, mib, out_dir, synthetic_data  # noqa: E402

PARTS = ("train", "harness")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=PARTS, default="train", help="which section to run (default train)")
    p.add_argument("--dim", type=int, default=1024, help="feature width per stream (default 1024, I3D)")
    p.add_argument("--max-videos", type=int, default=None, help="videos per subset (default: all)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8], help="pack sizes (default 1 2 4 8)")
    p.add_argument("--epochs", type=int, default=3, help="epochs timed (default 3: M all-positive, E, M Eq. 5)")
    p.add_argument("--memory-epochs", type=int, default=2, help="epochs of each memory run (default 2: M, E)")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--quick", action="store_true", help="CI smoke: dim 32, 24 videos, K 2, 2 epochs, 1 memory epoch")
    p.add_argument("--memory-worker", type=int, default=None, help=argparse.SUPPRESS)  # K (0 = fit) in a child
    p.add_argument("--seeds", type=int, default=5, help="harness: seeds per variant = members per pack (default 5)")
    p.add_argument("--harness-dim", type=int, default=64, help="harness: feature width per stream (default 64)")
    p.add_argument("--harness-max-videos", type=int, default=None, help="harness: videos per subset (default all)")
    p.add_argument("--harness-epochs", type=int, default=None, help="harness: train.epochs (default: the preset's)")
    p.add_argument("--preset", default="quick", choices=("quick", "paper"), help="harness: preset (default quick)")
    p.add_argument("--max-concurrent", type=int, default=2, help="harness: P, Ray trials at a time (default 2)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="harness: Ray CPUs (and bare threads) per trial")
    p.add_argument("--timeout", type=float, default=1800, help="harness: seconds allowed per ablation")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="semi-synthetic THUMOS14 in the W-TALC layout (default: written once under bench/out/data)")
    args = p.parse_args(argv)
    if args.quick:
        args.dim, args.max_videos, args.ks, args.epochs, args.memory_epochs = 32, 24, [2], 2, 1
        args.seeds, args.harness_dim, args.harness_max_videos, args.harness_epochs = 2, 8, 12, 2
    return args


def configs(k: int, epochs: int):
    """K members of one pack: seeds 0..K-1 and lrs 1e-4 x (1 + i/K) (k = 0: the single config of `fit`)."""
    from emmil.config import resolve_config

    over = {"train.cycle": 1, "train.cycle_epochs": 0, "train.epochs": epochs, "train.val_fraction": 0.0,
            "device": "cpu"}
    return [resolve_config("thumos14", variant="full", seed=i,
                           overrides={**over, "train.lr": 1e-4 * (1 + i / max(k, 1))}) for i in range(max(k, 1))]


def _reference_rate(rows: int, dim: int, cols: int) -> float:
    import torch

    from bench.train_speed import matmul_rate

    dev = torch.device("cpu")
    return max(matmul_rate(rows, dim, cols, dev, seconds=1.0), matmul_rate(2048, 2048, 2048, dev, seconds=1.0))


def throughput(data, ks: list[int], epochs: int) -> dict:
    """Executed FLOP/s over the same-process matmul rate of `fit` alone and of packs of each K."""
    import torch

    from bench.train_speed import epoch_flops
    from emmil.packed import PackedFit
    from emmil.train import dataset_tensor, fit, split_validation

    feats = dataset_tensor(data, torch.device("cpu"))
    train_videos, _ = split_validation(data, 0.0, 0)
    clips = sum(v.num_clips for v in train_videos)
    m = configs(1, epochs)[0].model
    flops = {}  # epoch -> executed FLOPs of one member

    def member_flops(epoch: int, step: str) -> float:
        if epoch not in flops:
            flops[epoch] = epoch_flops(clips, data.rgb_dim, data.flow_dim, m.hidden, m.kernel_size,
                                       len(data.classes), m.cls_hidden, step, epoch == 1)[0]
        return flops[epoch]

    mean_rows = max(1, clips // len(train_videos))  # one video per step

    def measure(k: int) -> dict:
        """k = 0: `fit` of one config; else a pack of k. Executed FLOP/s, and the matmul rate just before."""
        ref = _reference_rate(mean_rows, data.rgb_dim, m.kernel_size * m.hidden)
        seconds, executed, members = 0.0, 0.0, max(k, 1)
        if k == 0:
            for r in fit(configs(1, epochs)[0], data, features=feats):
                seconds += r.seconds
                executed += member_flops(r.epoch, r.step)
        else:
            for results in PackedFit(configs(k, epochs), data, features=feats):
                seconds += results[0].seconds  # the pack's wall time for the epoch
                executed += k * member_flops(results[0].epoch, results[0].step)
        print(f"{'fit' if k == 0 else f'pack{k}':6s} K={members}: {seconds:7.2f} s for {epochs} epochs "
              f"({seconds / members / epochs:.3f} s per member-epoch)  {executed / seconds / 1e9:6.1f} GFLOP/s "
              f"executed (matmul just before: {ref / 1e9:.1f} GFLOP/s)", flush=True)
        return {"members": members, "seconds": round(seconds, 2),
                "seconds_per_member_epoch": round(seconds / members / epochs, 3),
                "executed_flop_per_s": executed / seconds, "matmul_before_flop_per_s": ref}

    # fit, then each pack followed by another fit: a pack is compared with the fit runs right before and
    # after it (minutes apart at most), which other work on a shared machine affects alike
    fits = [measure(0)]
    runs: dict = {"fit": fits}
    for k in ks:
        runs[f"pack{k}"] = measure(k)
        fits.append(measure(0))
    # The reference: the best matmul rate seen in the run (the machine's attainable rate; a lower reading
    # is other work on the machine), one for every run, so ratios compare the training times themselves.
    best = max(r["matmul_before_flop_per_s"] for r in [*fits, *(runs[f"pack{k}"] for k in ks)])
    for r in [*fits, *(runs[f"pack{k}"] for k in ks)]:
        r["ratio_vs_matmul"] = round(r["executed_flop_per_s"] / best, 3)
        r["executed_gflop_per_s"] = round(r.pop("executed_flop_per_s") / 1e9, 2)
        r["matmul_before_gflop_per_s"] = round(r.pop("matmul_before_flop_per_s") / 1e9, 2)
    ratio_over_fit = {}
    for i, k in enumerate(ks):
        around = (fits[i]["ratio_vs_matmul"] + fits[i + 1]["ratio_vs_matmul"]) / 2
        ratio_over_fit[f"pack{k}"] = round(runs[f"pack{k}"]["ratio_vs_matmul"] / around, 3)
        print(f"pack{k}: {runs[f'pack{k}']['ratio_vs_matmul']:.3f} x matmul, {ratio_over_fit[f'pack{k}']:.3f} x "
              f"the fit runs around it ({fits[i]['ratio_vs_matmul']:.3f}, {fits[i + 1]['ratio_vs_matmul']:.3f})",
              flush=True)
    return {"clips_per_epoch": clips, "videos": len(train_videos), "matmul_gflop_per_s": round(best / 1e9, 2),
            "runs": runs, "ratio_over_fit": ratio_over_fit}


def memory_worker(k: int, data_dir: Path, epochs: int) -> dict:
    """In a fresh process: load the data, then peak USS over training + test evaluation (k = 0: fit)."""
    import psutil
    import torch

    from bench.memory import _SelfPeak
    from emmil.data.loading import load_dataset
    from emmil.packed import PackedFit, evaluate_test_packed
    from emmil.train import dataset_tensor, evaluate_test, fit

    data = load_dataset("thumos14", data_dir)
    feats = dataset_tensor(data, torch.device("cpu"))
    loaded = int(psutil.Process().memory_full_info().uss)
    with _SelfPeak() as peak:
        if k == 0:
            config = configs(1, epochs)[0]
            model = None
            for r in fit(config, data, features=feats):
                model = r.model
            evaluate_test(config, data, model, features=feats)
        else:
            cfgs = configs(k, epochs)
            pack = PackedFit(cfgs, data, features=feats)
            for _ in pack:
                pass
            evaluate_test_packed(cfgs, data, pack.models, features=feats)
    return {"loaded_uss": loaded, "peak_uss": peak.peak[0], "peak_pss": peak.peak[1]}


def memory(data_dir: Path, ks: list[int], epochs: int) -> dict:
    runs = {}
    for name, k in [("fit", 0)] + [(f"pack{k}", k) for k in ks]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", str(k), "--data-dir", str(data_dir),
               "--memory-epochs", str(epochs)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(f"memory worker K={k} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        got = json.loads(done.stdout.strip().splitlines()[-1])
        members = max(k, 1)
        runs[name] = {"members": members, "peak_uss_mib": mib(got["peak_uss"]),
                      "loaded_uss_mib": mib(got["loaded_uss"]),
                      "peak_uss_per_member_mib": mib(got["peak_uss"] / members),
                      "training_uss_per_member_mib": mib((got["peak_uss"] - got["loaded_uss"]) / members)}
        print(f"memory {name:6s}: peak USS {runs[name]['peak_uss_mib']} MiB ({runs[name]['peak_uss_per_member_mib']} per "
              f"member; above the loaded process {runs[name]['training_uss_per_member_mib']} per member)", flush=True)
    fit_peak = runs["fit"]["peak_uss_mib"]
    return {"epochs": epochs, "runs": runs,
            "peak_per_member_over_fit": {n: round(r["peak_uss_per_member_mib"] / fit_peak, 3) for n, r in runs.items()}}


def part_train(args) -> dict:
    from emmil.data.loading import load_dataset

    data_dir = args.data_dir or synthetic_data("thumos14", dim=args.dim, max_videos=args.max_videos)
    t0 = time.perf_counter()
    data = load_dataset("thumos14", data_dir)
    print(f"data: {data.source}; {data.features.shape[0]} clips x {data.features.shape[1]} "
          f"({time.perf_counter() - t0:.1f} s to load)", flush=True)
    figures = {"dim": args.dim, "max_videos": args.max_videos, "epochs": args.epochs, "variant": "full",
               "preset": "paper (one video per step)", "throughput": throughput(data, args.ks, args.epochs)}
    del data
    if not args.skip_memory:
        figures["memory"] = memory(data_dir, args.ks, args.memory_epochs)
    return figures


# ------------------------------------------------------------------------------------------ --part harness


def harness_part(args) -> dict:
    """Table 3 x S seeds through `emmil ablate`, --pack 1 vs --pack S, against the bare fits.

    ratio(pack) = wall(ablate --pack) / (sum of bare fit()+evaluate_test() seconds / P)  target <= 1.15
    (bench/harness_overhead.py measures the same ratio for --pack 1). Both ablations and the bare fits
    run in this one invocation, one after the other (no two timed things share the CPU)."""
    import shutil

    from bench.common import ablate_command, run_command, write_experiment
    from bench.harness_overhead import bare_trial_seconds

    work = out_dir("packing")
    data_dir = synthetic_data("thumos14", dim=args.harness_dim, max_videos=args.harness_max_videos)
    overrides = {"train.epochs": args.harness_epochs} if args.harness_epochs else {}
    experiment = write_experiment(work / "bench-packing.yaml", base="table3", overrides=overrides)
    bare = bare_trial_seconds(data_dir, experiment, args.seeds, args.preset, int(args.cpus_per_trial))
    k, p = len(bare), args.max_concurrent
    figures: dict = {"dataset": "semi-synthetic THUMOS14", "dim": args.harness_dim, "max_videos": args.harness_max_videos,
                     "preset": args.preset, "epochs": args.harness_epochs or "preset", "trials": k, "seeds": args.seeds, "parallelism": p,
                     "cpus_per_trial": args.cpus_per_trial, "bare_sum_seconds": round(sum(bare), 2),
                     "target_ratio_max": 1.15}
    for pack in (1, args.seeds):
        results = work / f"results-pack{pack}"
        shutil.rmtree(results, ignore_errors=True)
        cmd = ablate_command(experiment, data_dir=data_dir, results=results, seeds=args.seeds, max_concurrent=p,
                             cpus_per_trial=args.cpus_per_trial, preset=args.preset) + ["--pack", str(pack)]
        print("running:", " ".join(cmd), flush=True)
        run, _ = run_command(cmd, log_path=work / f"ablate-pack{pack}.log", timeout=args.timeout, interval=0)
        figures[f"wall_seconds_pack{pack}"] = round(run.seconds, 2)
        figures[f"overhead_ratio_pack{pack}"] = round(run.seconds / (sum(bare) / p), 3)
        figures[f"child_runs_pack{pack}"] = _finished_trial_runs(results / "mlflow.db")
        print(f"--pack {pack}: {run.seconds:.1f} s, ratio {figures[f'overhead_ratio_pack{pack}']:.3f}", flush=True)
    figures["pack_speedup"] = round(figures["wall_seconds_pack1"] / figures[f"wall_seconds_pack{args.seeds}"], 3)
    return figures


def _finished_trial_runs(db: Path) -> int:
    """FINISHED MLflow child runs (emmil.role=trial) in the ablation's SQLite store."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=f"sqlite:///{db.resolve()}")
    ids = [e.experiment_id for e in c.search_experiments()]
    runs = c.search_runs(ids, filter_string="tags.`emmil.role` = 'trial' and attributes.status = 'FINISHED'",
                         max_results=10000)
    return len(runs)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_worker is not None:
        print(json.dumps(memory_worker(args.memory_worker, args.data_dir, args.memory_epochs)), flush=True)
        return 0
    figures = {"part": args.part, "quick": args.quick, "dataset": "semi-synthetic THUMOS14"}
    if args.part == "train":
        figures["train"] = part_train(args)
    else:
        figures["harness"] = harness_part(args)
    emit_result("packing", figures, machine=machine_description())
    return 0


if __name__ == "__main__":
    sys.exit(main())
