"""Training throughput as a fraction of this machine's plain fp32 matmul rate, measured in one process.

    .venv/bin/python bench/train_speed.py [--dim 1024] [--batch-videos 16] [--device cpu|cuda]

Data: emmil.data.synth.make_synthetic("thumos14", dim=1024, seed=0) (semi-synthetic THUMOS14, the
real annotations' 200 training videos). Epochs timed: an E step (Eq. 3/4), an M step with Eq. 5
labels, and an M step with the all-positive initial labels, with the `full` variant.

FLOPs are counted analytically, 2*M*K*N per matmul, two ways:
  executed: forward of every head that runs + the gradients actually needed (a trained layer's weight
            gradient; the input gradient only where the input itself needs one: the Linear after the
            conv, never the input features);
  nominal:  forward x3 for trained parameters (the usual "backward = 2 x forward" convention).
The reference rate is the best of torch.mm at the training batch's conv shape and at 2048^3.
"""

from __future__ import annotations

import argparse
import time

import torch

from emmil.config import resolve_config
from emmil.data.synth import make_synthetic
from emmil.train import dataset_tensor, fit, split_validation


def matmul_rate(m: int, k: int, n: int, device: torch.device, seconds: float = 2.0) -> float:
    """FLOP/s of torch.mm (m,k)@(k,n) fp32, median of repeated timings over ~`seconds`."""
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)
    for _ in range(3):
        a @ b
    times = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 5:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return 2.0 * m * k * n / times[len(times) // 2]


def epoch_flops(clips: int, d_rgb: int, d_flow: int, hidden: int, k: int, classes: int, gate_hidden: int,
                step: str, all_positive: bool) -> tuple[float, float]:
    """(executed, nominal) FLOPs of one epoch over `clips` packed clips of the `full` variant."""
    n = clips
    executed = nominal = 0.0
    for d in (d_rgb, d_flow):
        conv = 2.0 * n * d * k * hidden  # one packed conv matmul (N, D) @ (D, k*H)
        key_fc, cls_fc = 2.0 * n * hidden * 1, 2.0 * n * hidden * classes
        key_fwd, cls_fwd = conv + key_fc, conv + cls_fc
        if step == "E":  # frozen p_theta forward, q_phi trained
            executed += cls_fwd + key_fwd + conv + 2 * key_fc
            nominal += cls_fwd + 3 * key_fwd
        elif all_positive:  # M with all-positive labels: q_phi not run
            executed += cls_fwd + conv + 2 * cls_fc
            nominal += 3 * cls_fwd
        else:  # M with Eq. 5 labels: frozen q_phi forward, p_theta trained
            executed += key_fwd + cls_fwd + conv + 2 * cls_fc
            nominal += key_fwd + 3 * cls_fwd
    d = d_rgb + d_flow
    gate = 2.0 * n * d * gate_hidden + 2.0 * n * gate_hidden * (classes + 1)
    executed += gate + 2.0 * n * d * gate_hidden + 2 * 2.0 * n * gate_hidden * (classes + 1)
    nominal += 3 * gate
    return executed, nominal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--batch-videos", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    data = make_synthetic("thumos14", dim=args.dim, seed=0)
    print(f"data: {data.source}; {data.features.shape[0]} clips, {time.perf_counter() - t0:.1f} s to generate")
    overrides = {"train.cycle": 1, "train.cycle_epochs": 0, "train.epochs": 3, "device": args.device}
    if args.batch_videos:
        overrides["train.batch_videos"] = args.batch_videos
    cfg = resolve_config("thumos14", variant="full", overrides=overrides)
    train_videos, _ = split_validation(data, 0.0, 0)
    clips = sum(v.num_clips for v in train_videos)
    feats = dataset_tensor(data, device)
    mean_rows = clips / len(train_videos) * cfg.train.batch_videos
    m = cfg.model
    rates = {
        f"mm({int(mean_rows)}x{args.dim})@({args.dim}x{m.kernel_size * m.hidden})": matmul_rate(
            int(mean_rows), args.dim, m.kernel_size * m.hidden, device),
        "mm 2048^3": matmul_rate(2048, 2048, 2048, device),
    }
    ref = max(rates.values())
    for name, r in rates.items():
        print(f"reference {name}: {r / 1e9:.1f} GFLOP/s")
    print(f"training clips per epoch: {clips} ({len(train_videos)} videos, batch_videos={cfg.train.batch_videos}, "
          f"hidden={m.hidden}, threads={torch.get_num_threads()}, device={device})")
    names = {1: "M (all-positive init)", 2: "E (Eq. 3/4)", 3: "M (Eq. 5/6)"}
    total_exec = total_nom = total_s = 0.0
    for r in fit(cfg, data, device=device, features=feats):
        plan_all_pos = r.epoch == 1
        ex, nom = epoch_flops(clips, data.rgb_dim, data.flow_dim, m.hidden, m.kernel_size, len(data.classes),
                              m.cls_hidden, r.step, plan_all_pos)
        total_exec += ex
        total_nom += nom
        total_s += r.seconds
        print(f"epoch {r.epoch} {names[r.epoch]:22s} {r.seconds:6.2f} s  executed {ex / 1e12:.3f} TFLOP "
              f"{ex / r.seconds / 1e9:6.1f} GFLOP/s ({ex / r.seconds / ref:.0%} of matmul)  nominal "
              f"{nom / r.seconds / 1e9:6.1f} GFLOP/s ({nom / r.seconds / ref:.0%})")
    print(f"overall: executed {total_exec / total_s / 1e9:.1f} GFLOP/s = {total_exec / total_s / ref:.2f} x matmul; "
          f"nominal {total_nom / total_s / 1e9:.1f} GFLOP/s = {total_nom / total_s / ref:.2f} x matmul "
          f"(reference {ref / 1e9:.1f} GFLOP/s)")


if __name__ == "__main__":
    main()
