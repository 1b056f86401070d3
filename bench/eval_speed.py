"""Bench 1: the vectorised detection evaluator vs a reference with the official evaluator's structure.

Two synthetic cases sized like the real test sets: THUMOS14 (213 videos, 20 classes, ~3.3k ground-
truth segments, ~50k predictions, tIoU 0.1:0.7) and ActivityNet1.2 (2.4k videos, 100 classes, ~4k
segments, ~100k predictions, tIoU 0.5:0.95). Both evaluators run in this process on the same input;
prints each time, the speed ratios and the max |AP difference| over every (threshold, class).
Two references (tests/anet_reference.py): "official-structure" replays ActivityNet's
compute_average_precision_detection step by step, pandas DataFrames and iterrows included (what
users run today); "loop reference" is the same per-class, per-prediction loop over thresholds and
ground truth on plain Python/numpy data (a much faster baseline than the official code).

    .venv/bin/python bench/eval_speed.py [--repeat 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from anet_reference import official_structure_ap, reference_ap, to_json  # noqa: E402

from emmil.evaluate import TIOU, EvaluationWarning, detection_map  # noqa: E402


def make_case(rng, *, videos, classes, gt_per_video, preds_per_video, mean_duration, mean_length, classes_per_video):
    """(gt_rows [(video, s, e, label)], pred_rows [(video, s, e, label, score)]) like a detector's output:
    proposals near ground truth (jittered boundaries, duplicates), false alarms, wrong classes."""
    gt, pred = [], []
    for v in range(videos):
        name = f"video_{v:05d}"
        duration = rng.uniform(0.3, 1.7) * mean_duration
        own = rng.choice(classes, size=classes_per_video, replace=False)
        n_gt = max(1, rng.poisson(gt_per_video))
        for _ in range(n_gt):
            length = min(duration, rng.exponential(mean_length) + 0.5)
            s = rng.uniform(0, duration - length)
            gt.append((name, round(s, 2), round(s + length, 2), f"class_{rng.choice(own):03d}"))
        mine = [r for r in gt if r[0] == name]
        n_pred = max(1, rng.poisson(preds_per_video))
        for _ in range(n_pred):
            kind = rng.random()
            if kind < 0.6:  # near a ground-truth segment
                _, gs, ge, lab = mine[rng.integers(len(mine))]
                L = ge - gs
                s = gs + rng.normal(0, 0.3) * L
                e = ge + rng.normal(0, 0.3) * L
                s, e = min(s, e), max(s, e)
            else:  # false alarm anywhere
                L = rng.exponential(mean_length) + 0.5
                s = rng.uniform(0, max(duration - L, 0.1))
                e = s + L
                lab = f"class_{rng.choice(own if kind < 0.85 else classes):03d}"
            s, e = min(max(s, 0.0), duration), min(max(e, 0.0), duration)
            pred.append((name, round(s, 2), round(e, 2), lab, round(float(rng.random()), 4)))
    return gt, pred


CASES = {
    "thumos14": dict(videos=213, classes=20, gt_per_video=15.5, preds_per_video=235, mean_duration=210,
                     mean_length=4.5, classes_per_video=2),
    "anet12": dict(videos=2400, classes=100, gt_per_video=1.7, preds_per_video=42, mean_duration=115,
                   mean_length=40, classes_per_video=1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of the vectorised evaluator (best kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-official", action="store_true", help="skip the pandas official-structure run (slow)")
    args = parser.parse_args()
    warnings.simplefilter("ignore", EvaluationWarning)
    print(f"{'case':9s} {'videos':>6s} {'gt':>5s} {'preds':>6s} {'thr':>3s} {'official-structure s':>20s} "
          f"{'loop reference s':>16s} {'vectorised s':>12s} {'ratio vs official':>17s} {'ratio vs loop':>13s} "
          f"{'max|dAP|':>8s}")
    for name, spec in CASES.items():
        rng = np.random.default_rng(args.seed)
        gt_rows, pred_rows = make_case(rng, classes=np.arange(spec["classes"]), **{k: v for k, v in spec.items() if k != "classes"})
        ground_truth, results, pred_rows = to_json(gt_rows, pred_rows)
        thr = TIOU[name]
        t_off, ap_off = float("nan"), None
        if not args.skip_official:
            t0 = time.perf_counter()
            _, ap_off = official_structure_ap(gt_rows, pred_rows, thr)
            t_off = time.perf_counter() - t0
        t0 = time.perf_counter()
        classes, ap_ref = reference_ap(gt_rows, pred_rows, thr)
        t_ref = time.perf_counter() - t0
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            result = detection_map(ground_truth, results, thr)
            best = min(best, time.perf_counter() - t0)
        ap_vec = np.stack([result.per_class_AP[c] for c in classes], axis=1)
        diff = float(np.abs(ap_vec - ap_ref).max())
        if ap_off is not None:
            diff = max(diff, float(np.abs(ap_vec - ap_off).max()))
        print(f"{name:9s} {len({r[0] for r in gt_rows}):6d} {len(gt_rows):5d} {len(pred_rows):6d} {len(thr):3d} "
              f"{t_off:20.2f} {t_ref:16.3f} {best:12.4f} {t_off / best:17.0f} {t_ref / best:13.1f} {diff:8.1e}")
        print(f"{'':9s} mAP % {np.round(result.mAP * 100, 2).tolist()}  avg {result.average_mAP * 100:.2f}")


if __name__ == "__main__":
    main()
