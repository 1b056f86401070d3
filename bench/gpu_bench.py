"""The Python parts of bench/gpu.sh (issue 7, GPU path). Subcommands:

  train      one `full` run with the paper schedule on the GPU: seconds per run (fit to the last epoch +
             evaluate_test), its FLOP count (torch.utils.flop_counter over a second, untimed run), achieved
             FLOP/s and its ratio to the GPU's plain fp32 matmul rate measured in the same process (TF32
             off; TF32 and bf16 rates are printed beside it). Then bf16 autocast and torch.compile measured
             around the model only (the core has no switch for them): one packed training step
             (step_losses + backward) repeated on a fixed batch, fp32 vs bf16 autocast vs compiled heads.
  gpu-util   summarise an nvidia-smi CSV log (timestamp, utilization.gpu, memory.used) written in the
             background during the ablation: mean / max utilisation, busy fraction, peak memory.
  collect    gather what gpu.sh's steps left in its output folder (steps.tsv, walls.tsv, the step JSON
             files and progress lines of the logs) into gpu_results.json, and print one line per step.

Each prints one final JSON line (and --json FILE writes it). Runs on CPU too (--device cpu): that is
the smoke path CI uses; figures measured there say device "cpu" and mean nothing for a GPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit_result, machine_description, matmul_flops, strict_json  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="seconds per paper-schedule run, FLOP/s vs matmul, AMP and compile")
    t.add_argument("--data-dir", type=Path, required=True, help="semi-synthetic THUMOS14 in the W-TALC layout")
    t.add_argument("--variant", default="full")
    t.add_argument("--preset", default="paper", choices=["paper", "quick"])
    t.add_argument("--epochs", type=int, default=None, help="override train.epochs (smoke runs)")
    t.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    t.add_argument("--matmul-n", type=int, default=8192, help="matmul size for the rate (default 8192)")
    t.add_argument("--no-flop-count", action="store_true", help="skip the second (counting) run")
    t.add_argument("--step-repeats", type=int, default=50, help="timed steps per AMP/compile variant")
    t.add_argument("--compile", choices=["on", "off", "auto"], default="auto",
                   help="measure torch.compile (auto: on CUDA only; on CPU it needs a C++ toolchain and minutes)")
    t.add_argument("--json", type=Path, default=None, help="also write the result here")
    u = sub.add_parser("gpu-util", help="summarise an nvidia-smi CSV log")
    u.add_argument("csv", type=Path)
    u.add_argument("--wall", type=float, default=None, help="the ablation's wall seconds, copied into the result")
    u.add_argument("--json", type=Path, default=None)
    c = sub.add_parser("collect", help="gather gpu.sh's output folder into gpu_results.json")
    c.add_argument("out", type=Path, help="gpu.sh's output folder")
    c.add_argument("--smoke", action="store_true", help="the folder is from gpu.sh --cpu-smoke")
    return p.parse_args(argv)


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed_run(cfg, dataset, features, device) -> tuple[float, list[float], dict]:
    """(seconds of fit to the end + evaluate_test, per-epoch seconds, test metrics)."""
    from emmil.train import evaluate_test, fit

    _sync(device)
    start = time.perf_counter()
    epochs, last = [], None
    for last in fit(cfg, dataset, device=device, features=features):
        epochs.append(last.seconds)
    outcome = evaluate_test(cfg, dataset, last.model, device=device, features=features)
    _sync(device)
    return time.perf_counter() - start, epochs, outcome.metrics


def counted_flops(cfg, dataset, features, device) -> float:
    """FLOPs of one whole run (training + test evaluation), counted by torch's FlopCounterMode
    (matmuls/convolutions, forward and backward; elementwise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    from emmil.train import evaluate_test, fit

    with FlopCounterMode(display=False) as counter:
        last = None
        for last in fit(cfg, dataset, device=device, features=features):
            pass
        evaluate_test(cfg, dataset, last.model, device=device, features=features)
    return float(counter.get_total_flops())


def step_benchmark(cfg, dataset, features, device, repeats: int, compile_heads: bool) -> dict:
    """ms per packed training step (both streams, the `joint` plan: every head forward + backward) on a
    fixed batch of train.batch_videos videos: fp32, bf16 autocast, and torch.compile'd heads."""
    import torch

    from emmil.model import make_packing
    from emmil.schedule import EpochPlan
    from emmil.train import build_model, gather_rows, step_losses

    dev = torch.device(device)
    videos = dataset.in_subset(dataset.train_subset)[: cfg.train.batch_videos]
    lengths = torch.tensor([v.num_clips for v in videos], dtype=torch.long, device=dev)
    starts = torch.tensor([v.start for v in videos], dtype=torch.long, device=dev)
    x = features[gather_rows(starts, lengths)]  # (N, D) packed clips
    y = torch.from_numpy(dataset.label_matrix(videos)).to(dev)  # (B, C)
    packing = make_packing(lengths, dev)
    plan = EpochPlan("joint", "cycle", 1.0, all_positive=False)
    out = {"batch_clips": int(x.shape[0])}

    def bench(model, autocast: bool) -> float:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-4)

        def step():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
                loss = step_losses(model, x, y, packing, plan, "joint", cfg.train.gamma,
                                   train_gate=cfg.model.gate == "attention")["loss"]  # linear-mean: fitted before
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(min(3, repeats)):  # warm-up (and compilation)
            step()
        _sync(dev)
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        _sync(dev)
        return (time.perf_counter() - start) / repeats * 1e3

    torch.manual_seed(0)
    base = build_model(cfg, dataset, dev).train()
    out["fp32_ms"] = round(bench(base, False), 3)
    try:
        # The gate's index_add mixes an fp32 accumulator with bf16 products under autocast and fails
        # (emmil/model.py VideoClassifier / LinearMeanGate forward), so the gate runs in fp32 here; it is a small share of
        # the FLOPs (one Linear per clip), the four conv heads are what autocast speeds up.
        gate_forward = base.gate.forward

        def gate_fp32(x, packing):
            with torch.autocast(dev.type, enabled=False):
                return gate_forward(x.float(), packing)

        base.gate.forward = gate_fp32
        out["bf16_autocast_ms"] = round(bench(base, True), 3)
        out["bf16_note"] = "heads under bf16 autocast, gate classifier kept fp32"
        out["bf16_speedup"] = round(out["fp32_ms"] / out["bf16_autocast_ms"], 3)
    except RuntimeError as exc:
        out["bf16_autocast_error"] = str(exc)[:200]
    if compile_heads:
        try:
            compiled = build_model(cfg, dataset, dev).train()
            for group in (compiled.key, compiled.cls):
                for s in list(group.keys()):
                    group[s] = torch.compile(group[s], dynamic=False)
            t0 = time.perf_counter()
            out["compile_ms"] = round(bench(compiled, False), 3)
            out["compile_total_seconds"] = round(time.perf_counter() - t0, 1)  # includes compilation
            out["compile_speedup"] = round(out["fp32_ms"] / out["compile_ms"], 3)
        except Exception as exc:  # noqa: BLE001 - a missing toolchain is a finding, not a crash
            out["compile_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return out


def cmd_train(args) -> dict:
    import torch

    from emmil.config import resolve_config
    from emmil.data.loading import load_dataset
    from emmil.train import dataset_tensor

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_bench train: --device cuda but torch.cuda.is_available() is False "
                         f"(torch {torch.__version__}); install the CUDA build of torch or use --device cpu")
    machine = machine_description()
    rates = {}
    if dev.type == "cuda":
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        rates["fp32"] = matmul_flops(n=args.matmul_n, device="cuda", min_seconds=0.5)
        torch.backends.cuda.matmul.allow_tf32 = True
        rates["tf32"] = matmul_flops(n=args.matmul_n, device="cuda", min_seconds=0.5)
        torch.backends.cuda.matmul.allow_tf32 = prev
        rates["bf16"] = matmul_flops(n=args.matmul_n, device="cuda", dtype="bfloat16", min_seconds=0.5)
    else:
        rates["fp32"] = matmul_flops(n=min(args.matmul_n, 1024), device="cpu", min_seconds=0.3)
    print("matmul FLOP/s:", {k: f"{v / 1e12:.2f} T" for k, v in rates.items()}, flush=True)

    overrides = {"device": args.device}
    if args.epochs:
        overrides["train.epochs"] = args.epochs
    cfg = resolve_config("thumos14", preset=args.preset, variant=args.variant, seed=0, overrides=overrides)
    dataset = load_dataset("thumos14", args.data_dir)
    _sync(dev)
    t0 = time.perf_counter()
    features = dataset_tensor(dataset, dev)  # the one host -> device copy
    _sync(dev)
    copy_seconds = time.perf_counter() - t0

    # Warm-up: CUDA context, cuBLAS handles, allocator (one epoch, untimed).
    warm = resolve_config("thumos14", preset=args.preset, variant=args.variant, seed=0,
                          overrides={**overrides, "train.epochs": 1})
    timed_run(warm, dataset, features, dev)
    seconds, epoch_seconds, metrics = timed_run(cfg, dataset, features, dev)
    print(f"one run: {seconds:.2f} s ({len(epoch_seconds)} epochs)", flush=True)

    figures = {
        "dataset": "semi-synthetic THUMOS14",
        "device": str(dev),
        "variant": args.variant,
        "preset": args.preset,
        "epochs": cfg.train.epochs,
        "dim": dataset.rgb_dim,
        "train_videos": len(dataset.in_subset(dataset.train_subset)),
        "total_clips": int(dataset.features.shape[0]),
        "dataset_to_device_seconds": round(copy_seconds, 3),
        "seconds_per_run": round(seconds, 3),
        "epoch_seconds_median": round(statistics.median(epoch_seconds), 4),
        "test_avg_mAP": metrics.get("test_avg_mAP"),
        "matmul_flops_per_s": {k: round(v, -6) for k, v in rates.items()},
    }
    if not args.no_flop_count:
        flops = counted_flops(cfg, dataset, features, dev)
        figures["run_flop"] = flops
        figures["achieved_flops_per_s"] = round(flops / seconds, -6)
        figures["ratio_vs_fp32_matmul"] = round(flops / seconds / rates["fp32"], 4)
    if args.json:  # the run's figures survive a time-out in the step benchmark below
        _write_json(args.json, {"benchmark": "gpu_train", **figures, "step": "not finished", "machine": machine})
    compile_heads = args.compile == "on" or (args.compile == "auto" and dev.type == "cuda")
    figures["step"] = step_benchmark(cfg, dataset, features, dev, args.step_repeats, compile_heads)
    if dev.type == "cuda":
        figures["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return emit_result("gpu_train", figures, machine=machine)


def summarise_nvidia_smi(path: Path) -> dict:
    """Mean/max of utilization.gpu (%) and memory.used (MiB) over the samples of an nvidia-smi CSV
    (`--query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader,nounits`)."""
    util, mem = [], []
    with open(path, newline="") as fh:
        for row in csv.reader(fh):
            if len(row) < 4:
                continue
            try:
                u, m = float(row[2]), float(row[3])
            except ValueError:
                continue  # a header or an "[N/A]"
            if not (math.isfinite(u) and math.isfinite(m)):
                continue  # float() reads "nan"/"inf": a sample that measured nothing
            util.append(u)
            mem.append(m)
    if not util:
        return {"samples": 0}
    return {
        "samples": len(util),
        "util_mean_pct": round(statistics.mean(util), 1),
        "util_max_pct": max(util),
        "busy_fraction": round(sum(u > 0 for u in util) / len(util), 3),  # samples with any kernel running
        "memory_used_max_mib": max(mem),
    }


def cmd_gpu_util(args) -> dict:
    figures = summarise_nvidia_smi(args.csv)
    if args.wall is not None:
        figures["ablation_wall_seconds"] = args.wall
    return emit_result("gpu_util", figures)


# gpu.sh's timed harness steps: (step name, what it ran, progress label of its log's lines, gpu-util json)
HARNESS_STEPS = (
    ("ablate", "table3, one Ray trial per run", "trial", "gpu_util"),
    ("ablate_packed", "table3 --pack <seeds>", "pack", "gpu_util_packed"),
    ("search_packed", "sweep thumos14 space, packed Optuna search", "search pack", "gpu_util_search"),
)


def collect(out: Path, smoke: bool) -> dict:
    """gpu_results.json from gpu.sh's folder: every step's exit status and seconds (steps.tsv: name,
    rc, seconds), the timed harness steps' wall (walls.tsv: name, seconds), how many of their trials
    or packs finished (their TrialProgress lines "[i/N] <label> <id> done|stopped early", a count that
    survives a time-out) and GPU utilisation, plus the train step's figures. A missing file is a
    missing entry, never an error: a step that failed or timed out leaves what it had."""
    import re

    def table(name: str) -> list[list[str]]:
        path = out / name
        return [line.split("\t") for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    steps = {row[0]: {"exit": int(row[1]), "seconds": int(row[2])} for row in table("steps.tsv")}
    walls = {row[0]: float(row[1]) for row in table("walls.tsv")}
    res: dict = {"smoke": smoke, "dataset": "semi-synthetic THUMOS14", "steps": steps}
    for name, what, label, util in HARNESS_STEPS:
        if name not in steps:
            continue
        entry = {"what": what, "wall_seconds": walls.get(name), "exit": steps[name]["exit"]}
        log = out / f"{name}.log"
        if log.exists():
            done = re.findall(rf"^\[\d+/(\d+)\] {re.escape(label)} \S+ (?:done|stopped early)", log.read_text(),
                              re.MULTILINE)
            entry.update({"finished": len(done), "total": int(done[0]) if done else None})
        if (out / f"{util}.json").exists():
            entry["gpu_util"] = json.loads((out / f"{util}.json").read_text())
        res[name] = entry
    a, b = walls.get("ablate"), walls.get("ablate_packed")
    if a and b:
        res["ablate_packed"]["wall_ratio_unpacked_over_packed"] = round(a / b, 3)
    if (out / "gpu_train.json").exists():
        res["gpu_train"] = json.loads((out / "gpu_train.json").read_text())
    if (out / "pytest_cuda.log").exists():
        res["pytest_cuda_summary"] = ((out / "pytest_cuda.log").read_text().strip().splitlines() or [""])[-1]
    return res


def summary_lines(res: dict) -> list[str]:
    """One line per step of a collect() result."""
    lines = []
    for name, step in res["steps"].items():
        bits = [f"{name}: exit {step['exit']} after {step['seconds']} s"]
        entry = res.get(name, {})
        if entry.get("total"):
            bits.append(f"{entry['finished']}/{entry['total']} {dict((n, l) for n, _, l, _ in HARNESS_STEPS)[name]}s finished")
        if entry.get("wall_ratio_unpacked_over_packed"):
            bits.append(f"unpacked/packed wall {entry['wall_ratio_unpacked_over_packed']}")
        util = entry.get("gpu_util") or {}
        if util.get("samples"):
            bits.append(f"GPU util mean {util['util_mean_pct']} % max {util['util_max_pct']} %, "
                        f"peak {util['memory_used_max_mib']} MiB")
        if name == "pytest_cuda" and res.get("pytest_cuda_summary"):
            bits.append(res["pytest_cuda_summary"])
        lines.append("; ".join(bits))
    return lines


def cmd_collect(args) -> dict:
    res = collect(args.out, args.smoke)
    (args.out / "gpu_results.json").write_text(strict_json(res, indent=2, default=str))
    for line in summary_lines(res):
        print(line)
    return res


def _write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(strict_json(record, indent=2, default=str))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command == "collect":
        cmd_collect(args)
        return 0
    record = cmd_train(args) if args.command == "train" else cmd_gpu_util(args)
    if args.json:
        _write_json(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
