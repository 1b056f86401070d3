"""Memory (issue 7, item 4): peak memory of 1, 2 (and 4) concurrent trials sharing one dataset.

Memory is unique (USS) and proportional (PSS) set size from psutil's memory_full_info, never RSS: RSS
counts the object store's pages once per worker that maps them. USS is what a process alone holds: a
trial that reads the dataset zero-copy from the object store does not have it in its USS, a trial with
a private copy does. Summed over a process tree, PSS counts every page once.

Part A, the harness: `emmil ablate` of c trials (variant `full`, c seeds, --epochs epochs) at
--max-concurrent c and cpus-per-trial 2/c; the whole process tree (driver, Ray's GCS/raylet/object store,
workers) is sampled every 0.25 s: peak summed USS/PSS/RSS of the tree, and the peak USS/PSS/RSS of each
of the c trial workers (the c Ray workers with the highest USS), averaged.

Part B, shared vs private copies: the same trial code (fit() for --epochs epochs) on plain Ray tasks,
c at a time; each task samples its own USS/PSS/RSS every 0.1 s from before it obtains the data to the
end of fit():
  shared:  the driver puts the Dataset in the object store once (and drops its copy); each task gets it
           zero-copy and builds the features tensor as the harness's trial does
           (harness.ray_tune.shared_features);
  private: each task loads the dataset from disk itself (emmil.data.loading.load_dataset).
Figures to read: `private_minus_shared_trial_uss_over_dataset` (about 1: each private trial holds a copy
of the dataset that a shared trial does not; above 1 when loading's transient copy is caught) and the
shared trial's USS staying the same at c = 1, 2, 4.

Semi-synthetic THUMOS14 at --dim per stream. Prints one final JSON line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    PeakMemory,
    ablate_command,
    bench_env,
    emit_result,
    machine_description,
    memory_dict,
    mib,
    out_dir,
    run_command,
    synthetic_data,
    tree_memory,
    write_experiment,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4],
                   help="concurrent trials to measure (default 1 2 4; 4 only where memory allows)")
    p.add_argument("--dim", type=int, default=256, help="feature width per stream (default 256)")
    p.add_argument("--max-videos", type=int, default=None)
    p.add_argument("--epochs", type=int, default=1, help="train.epochs of each trial (default 1)")
    p.add_argument("--preset", default="quick", choices=["quick", "paper"])
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--parts", default="AB", help="A = harness runs, B = shared vs private on Ray tasks")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default bench/out/memory)")
    p.add_argument("--timeout", type=float, default=600)
    return p.parse_args(argv)


def dataset_bytes(data_dir: Path) -> int:
    from emmil.data.loading import load_dataset

    return int(load_dataset("thumos14", data_dir).features.nbytes)


def growth_per_trial(peaks: dict[int, int]) -> float | None:
    """(peak(c_max) - peak(c_min)) / (c_max - c_min): bytes each extra concurrent trial adds."""
    cs = sorted(peaks)
    if len(cs) < 2:
        return None
    return (peaks[cs[-1]] - peaks[cs[0]]) / (cs[-1] - cs[0])


def affordable(c: int, per_trial_bytes: int) -> bool:
    """Run c private-copy trials only if they fit in 70% of the available memory."""
    return c * per_trial_bytes < 0.7 * psutil.virtual_memory().available


def _mean_sample(samples) -> dict:
    """Mean USS/PSS/RSS (MiB) of per-trial samples."""
    if not samples:
        return {}
    n = len(samples)
    return {k: mib(sum(getattr(x, k) for x in samples) / n) for k in ("uss", "pss", "rss")}


def part_a(args, data_dir: Path, work: Path, concurrency: list[int]) -> dict:
    experiment = write_experiment(work / "bench-memory.yaml", overrides={"train.epochs": args.epochs},
                                  variants=["full"])
    out = {}
    for c in concurrency:
        results = work / f"results-c{c}"
        shutil.rmtree(results, ignore_errors=True)
        cmd = ablate_command(experiment, data_dir=data_dir, results=results, seeds=c, max_concurrent=c,
                             cpus_per_trial=round(2 / c, 3), preset=args.preset)
        print("running:", " ".join(cmd), flush=True)
        run, peak = run_command(cmd, log_path=work / f"ablate-c{c}.log", timeout=args.timeout)
        out[c] = {"wall_seconds": round(run.seconds, 1), "tree": memory_dict(peak.peak_tree),
                  "workers": memory_dict(peak.peak_workers), "per_trial": _mean_sample(peak.top_workers(c)),
                  "samples": peak.samples}
        print(f"A c={c}: tree {out[c]['tree']}, per trial {out[c]['per_trial']}", flush=True)
    return out


class _SelfPeak:
    """Peak USS/PSS/RSS of the current process, sampled every 0.1 s in a thread (inside a trial)."""

    def __init__(self):
        import threading

        self.peak = [0, 0, 0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        me = psutil.Process()
        while not self._stop.is_set():
            info = me.memory_full_info()
            self.peak = [max(a, int(b)) for a, b in zip(self.peak, (info.uss, info.pss, info.rss))]
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _trial(get_dataset, epochs: int, preset: str, shared: bool) -> dict:
    """One short training run, feeding fit() the features as the harness's trial does: shared ->
    harness.ray_tune.shared_features (a zero-copy tensor over the object store's read-only buffer);
    private -> the core's dataset_tensor over this process's own loaded array. Returns the trial
    process's own peak USS/PSS/RSS (bytes), from before the data is obtained to the end of fit()."""
    import torch

    from emmil.config import resolve_config
    from emmil.train import dataset_tensor, fit

    cfg = resolve_config("thumos14", preset=preset, seed=0,
                         overrides={"train.epochs": epochs, "device": "cpu"})
    with _SelfPeak() as peak:
        dataset = get_dataset()
        if shared:
            from harness.ray_tune import shared_features

            features = shared_features(dataset, torch.device("cpu"))
        else:
            features = dataset_tensor(dataset, torch.device("cpu"))
        start = time.perf_counter()
        for _ in fit(cfg, dataset, features=features):
            pass
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "uss": peak.peak[0], "pss": peak.peak[1], "rss": peak.peak[2]}


def part_b(args, data_dir: Path, concurrency: list[int], nbytes: int) -> dict:
    for key, value in bench_env().items():
        os.environ.setdefault(key, value)
    import ray

    from emmil.data.loading import load_dataset

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=max(256 * 2**20, int(nbytes * 1.5) + 128 * 2**20))
    try:
        @ray.remote
        def shared_trial(dataset, epochs, preset):
            return _trial(lambda: dataset, epochs, preset, True)

        @ray.remote
        def private_trial(path, epochs, preset):
            return _trial(lambda: load_dataset("thumos14", Path(path)), epochs, preset, False)

        dataset = load_dataset("thumos14", data_dir)
        ref = ray.put(dataset)
        del dataset  # the driver keeps no copy: the object store holds the only one
        out: dict = {"idle_tree": memory_dict(tree_memory(os.getpid())), "shared": {}, "private": {}}
        for mode in ("shared", "private"):
            for c in concurrency:
                if mode == "private" and not affordable(c, 2 * nbytes + 512 * 2**20):
                    out[mode][c] = "skipped: not enough free memory"
                    continue
                fn = (shared_trial if mode == "shared" else private_trial).options(num_cpus=round(2 / c, 3))
                arg = ref if mode == "shared" else str(data_dir)
                with PeakMemory(os.getpid(), interval=0.5) as peak:
                    start = time.perf_counter()
                    trials = ray.get([fn.remote(arg, args.epochs, args.preset) for _ in range(c)])
                    wall = time.perf_counter() - start
                per_trial = {k: mib(sum(t[k] for t in trials) / c) for k in ("uss", "pss", "rss")}
                out[mode][c] = {"wall_seconds": round(wall, 1), "tree": memory_dict(peak.peak_tree),
                                "per_trial": per_trial}
                print(f"B {mode} c={c}: tree {out[mode][c]['tree']}, per trial {per_trial}", flush=True)
        return out
    finally:
        ray.shutdown()


def main(argv=None) -> int:
    args = parse_args(argv)
    work = args.work or out_dir("memory")
    data_dir = args.data_dir or synthetic_data("thumos14", dim=args.dim, max_videos=args.max_videos)
    nbytes = dataset_bytes(data_dir)
    concurrency = sorted(set(args.concurrency))
    print(f"dataset features: {mib(nbytes)} MiB", flush=True)

    figures: dict = {"dataset": "semi-synthetic THUMOS14", "dim": args.dim, "max_videos": args.max_videos,
                     "epochs": args.epochs, "dataset_mib": mib(nbytes), "memory": "peak summed USS/PSS, MiB"}
    if "A" in args.parts:
        a = part_a(args, data_dir, work, concurrency)
        figures["harness"] = {str(c): v for c, v in a.items()}
        growth = growth_per_trial({c: int(v["tree"]["pss"] * 2**20) for c, v in a.items()})
        if growth is not None:
            figures["harness_tree_pss_growth_per_trial_mib"] = mib(growth)
        figures["harness_trial_uss_mib"] = round(max(v["per_trial"].get("uss", 0) for v in a.values()), 1)
    if "B" in args.parts:
        b = part_b(args, data_dir, concurrency, nbytes)
        figures["tasks"] = {m: ({str(c): v for c, v in b[m].items()} if isinstance(b[m], dict) else b[m])
                            for m in b}
        for mode in ("shared", "private"):
            measured = {c: int(v["tree"]["pss"] * 2**20) for c, v in b[mode].items() if isinstance(v, dict)}
            growth = growth_per_trial(measured)  # includes each extra worker's own interpreter + torch
            if growth is not None:
                figures[f"{mode}_tree_pss_growth_per_trial_mib"] = mib(growth)
            uss = [v["per_trial"]["uss"] for v in b[mode].values() if isinstance(v, dict)]
            figures[f"{mode}_trial_uss_mib"] = round(max(uss), 1) if uss else None
        # Per concurrency: (private trial USS - shared trial USS) / dataset size; about 1 = one copy.
        figures["private_minus_shared_trial_uss_over_dataset"] = {
            str(c): round((b["private"][c]["per_trial"]["uss"] - b["shared"][c]["per_trial"]["uss"]) * 2**20 / nbytes, 3)
            for c in concurrency
            if isinstance(b["private"].get(c), dict) and isinstance(b["shared"].get(c), dict)
        }
    emit_result("memory", figures, machine=machine_description())
    return 0


if __name__ == "__main__":
    sys.exit(main())
