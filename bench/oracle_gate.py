"""How much of a run's test mAP the video-level gate costs: the run's own gate vs the ground-truth labels.

    .venv/bin/python bench/oracle_gate.py --data-dir DIR RUN_DIR [RUN_DIR ...]

A diagnostic, not a method: for each finished run folder (emmil train / bench/paper_references.py, with
model.pt), the test videos are scored once by the run's model; then they are localised and evaluated
twice with the localiser values the run used on test (model.pt's `localize`: lam and gate threshold
chosen on the held-out training videos):
  gate   the run's video scores (what the run reported: test_avg_mAP reproduces metrics.json's),
  oracle the video scores replaced by the ground-truth video labels (1 for each class the video has, 0
         for the others), so exactly the true classes pass the gate and every proposal keeps its
         localisation score (the video-score factor of Eq. 9's outer-inner score becomes 1).
A large rise means a row is bounded by its gate (a class the gate misses cannot be localised), not by
what the localisation heads learned. Uses ground truth by design: never for choosing anything.
One JSON line per run, then the table on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="finished run folders (model.pt + metrics.json)")
    p.add_argument("--data-dir", type=Path, required=True, help="the dataset the runs trained on")
    p.add_argument("--dataset", default=None, help="dataset name (default: the first run's config)")
    return p.parse_args(argv)


def oracle_gate_metrics(run_dir: Path, dataset, features) -> dict:
    """{"gate": test metrics with the run's gate, "oracle": with the ground-truth labels as the gate}."""
    import dataclasses

    import numpy as np

    from emmil.evaluate import TIOU, detection_map
    from emmil.model_file import load_model
    from emmil.train import ground_truth_of, localize_all, predict_scores, usable_test_videos

    loaded = load_model(run_dir)
    config = dataclasses.replace(loaded.config, localize=loaded.localize)
    videos = usable_test_videos(dataset)
    scores = predict_scores(loaded.model, videos, features)
    labels = dataset.label_matrix(videos).astype(np.float64)  # (V, C) 0/1
    truth = [{**s, "video": labels[i]} for i, s in enumerate(scores)]
    gt = ground_truth_of(dataset, videos)
    ambiguous = dataset.ambiguous if config.train.exclude_ambiguous else None
    out = {}
    for name, given in (("gate", scores), ("oracle", truth)):
        result = detection_map(gt, localize_all(config, dataset, videos, given), TIOU[dataset.name], ambiguous=ambiguous)
        out[name] = {"test_avg_mAP": float(result.average_mAP),
                     **{f"test_mAP_{t:.2f}": float(v) for t, v in zip(result.tiou, result.mAP)}}
    out["variant"], out["seed"] = config.variant, config.seed
    out["lam"], out["gate_threshold"] = config.localize.lam, config.localize.gate
    metrics_file = Path(run_dir) / "metrics.json"
    if metrics_file.exists():
        out["reported_test_avg_mAP"] = json.loads(metrics_file.read_text()).get("test_avg_mAP")
    return out


def main(argv=None) -> int:
    import torch

    from emmil.data.loading import load_dataset
    from emmil.errors import DataError
    from emmil.model_file import load_model
    from emmil.train import dataset_tensor

    args = parse_args(argv)
    torch.set_num_threads(1)
    try:
        name = args.dataset or load_model(args.runs[0]).config.dataset
        dataset = load_dataset(name, args.data_dir)
        features = dataset_tensor(dataset, torch.device("cpu"))
        rows = []
        for run_dir in args.runs:
            row = {"run": str(run_dir), **oracle_gate_metrics(run_dir, dataset, features)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"\n| run | variant | seed | avg mAP, own gate | avg mAP, oracle gate | mAP@0.5 own | mAP@0.5 oracle |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        g, o = r["gate"], r["oracle"]
        print(f"| {Path(r['run']).name} | {r['variant']} | {r['seed']} | {100 * g['test_avg_mAP']:.1f} | "
              f"{100 * o['test_avg_mAP']:.1f} | {100 * g['test_mAP_0.50']:.1f} | {100 * o['test_mAP_0.50']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
