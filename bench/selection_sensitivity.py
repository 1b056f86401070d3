"""How much a run's test mAP depends on the localiser values chosen for it on held-out training videos.

    .venv/bin/python bench/selection_sensitivity.py --data-dir DIR RUN_DIR [RUN_DIR ...] [--json OUT]
    .venv/bin/python bench/selection_sensitivity.py --quick     # CI smoke: trains a 2-epoch run on 60 videos

A diagnostic, not a method. Every run chooses Eq. 9's lam and the gate threshold on the held-out slice
of its training videos (emmil.train.select_localizer, grid emmil.train.SELECTION_GRID), then scores
the test split once with that choice. This script re-scores each finished run folder (model.pt +
metrics.json) at EVERY grid point, on the held-out videos and on the test videos:
  - it first checks that the grid point with the best held-out avg mAP (same order, same tie rule) is
    the one the run chose and that its test mAP is the run's reported test_avg_mAP (else an error:
    the model, the data or the code is not the run's);
  - then it reports the test avg mAP at each lam (at the chosen gate threshold) and the best test avg
    mAP anywhere on the grid.
The gap between the chosen point and the best one says how much of a row's number (and of its spread
over seeds) is the choice made on a small held-out slice rather than what the heads learned. The test
columns use ground truth by design: they are never used to choose anything.
One JSON object per run (stdout, or all of them in --json), then a Markdown table on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path, help="finished run folders (model.pt + metrics.json)")
    p.add_argument("--data-dir", type=Path, default=None, help="the dataset the runs trained on")
    p.add_argument("--dataset", default=None, help="dataset name (default: the first run's config)")
    p.add_argument("--json", type=Path, default=None, help="write all results here as one JSON object")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke: train one 2-epoch quick-preset run on 60 semi-synthetic videos (dim 8), analyse it")
    args = p.parse_args(argv)
    if not args.quick and (not args.runs or args.data_dir is None):
        p.error("give RUN_DIR(s) and --data-dir (or --quick)")
    return args


def selection_sensitivity(run_dir: Path, dataset, features) -> dict:
    """The run's choice, reproduced, and the test avg mAP at every grid point (fractions)."""
    from emmil.errors import DataError
    from emmil.model_file import load_model
    from emmil.train import (ground_truth_of, held_out_values, localizer_map, predict_scores, selection_videos,
                             usable_test_videos)

    run_dir = Path(run_dir)
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.exists():
        raise DataError(f"{run_dir}: no metrics.json (the run is not finished)")
    reported = json.loads(metrics_file.read_text())
    loaded = load_model(run_dir)
    config = loaded.config  # the configured localiser: the grid starts from it, as in the run
    val = selection_videos(config, dataset)
    if not val:
        raise DataError(f"{run_dir}: the run chose nothing on held-out videos (localize.select_on_val off "
                        "or no held-out videos): nothing to compare")
    test = usable_test_videos(dataset)
    test_scores = predict_scores(loaded.model, test, features)
    test_gt = ground_truth_of(dataset, test)
    grid, best_val = [], None
    # held_out_values is the run's own selection computation (select_localizer takes its first maximum)
    for val_avg, candidate in held_out_values(config, dataset, loaded.model, features, val):
        result = localizer_map(candidate, dataset, test, test_scores, test_gt)
        at = dict(zip((round(float(t), 2) for t in result.tiou), result.mAP))
        point = {"lam": candidate.localize.lam, "gate": candidate.localize.gate, "val_avg_mAP": val_avg,
                 "test_avg_mAP": float(result.average_mAP), "test_mAP_0.50": float(at.get(0.5, math.nan))}
        grid.append(point)
        if best_val is None or val_avg > best_val["val_avg_mAP"]:
            best_val = point
    chosen = (loaded.localize.lam, loaded.localize.gate)
    if (best_val["lam"], best_val["gate"]) != chosen or best_val["test_avg_mAP"] != reported.get("test_avg_mAP"):
        raise DataError(
            f"{run_dir}: does not reproduce the run (held-out best lam {best_val['lam']}, gate {best_val['gate']}, "
            f"test avg mAP {best_val['test_avg_mAP']!r}; the run chose lam {chosen[0]}, gate {chosen[1]}, "
            f"test avg mAP {reported.get('test_avg_mAP')!r}): another model, dataset or code version")
    best_test = max(grid, key=lambda g: g["test_avg_mAP"])
    at_gate = sorted((g for g in grid if g["gate"] == chosen[1]), key=lambda g: g["lam"])
    return {"run": str(run_dir), "variant": config.variant, "seed": config.seed,
            "held_out_videos": len(val), "test_videos": len(test),
            "chosen": best_val, "best_test": best_test,
            "test_avg_mAP_by_lam_at_chosen_gate": {str(g["lam"]): g["test_avg_mAP"] for g in at_gate},
            "grid": grid}


def _quick_run(root: Path) -> tuple[Path, Path]:
    """(data dir, run dir) of a 2-epoch quick-preset `full` run on 60 semi-synthetic videos at dim 8."""
    from bench.common import synthetic_data
    from emmil.config import resolve_config
    from emmil.data.loading import load_dataset
    from emmil.train import train_run

    data_dir = synthetic_data("thumos14", dim=8, max_videos=60)  # enough for a held-out slice per class
    run_dir = root / "full-s0"
    if not (run_dir / "metrics.json").exists():
        cfg = resolve_config("thumos14", preset="quick", variant="full",
                             overrides={"train.epochs": 2, "train.gate_epochs": 2})
        train_run(cfg, load_dataset("thumos14", data_dir), run_dir, progress=False, device="cpu")
    return data_dir, run_dir


def table_markdown(rows: list[dict]) -> str:
    lams = sorted({lam for r in rows for lam in r["test_avg_mAP_by_lam_at_chosen_gate"]}, key=float)
    head = (["run", "variant", "seed", "chosen lam, gate", "held-out avg", "test avg (reported)"]
            + [f"test avg, lam {lam}" for lam in lams] + ["best test avg on the grid (lam, gate)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    for r in rows:
        c, b, by_lam = r["chosen"], r["best_test"], r["test_avg_mAP_by_lam_at_chosen_gate"]
        cells = [Path(r["run"]).name, r["variant"], str(r["seed"]), f"{c['lam']}, {c['gate']}",
                 pct(c["val_avg_mAP"]), pct(c["test_avg_mAP"])]
        cells += [pct(by_lam[lam]) if lam in by_lam else "" for lam in lams]
        cells.append(f"{pct(b['test_avg_mAP'])} ({b['lam']}, {b['gate']})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import torch

    from bench.common import out_dir, strict_json
    from emmil.data.loading import load_dataset
    from emmil.errors import DataError
    from emmil.model_file import load_model
    from emmil.train import dataset_tensor

    args = parse_args(argv)
    torch.set_num_threads(1)
    try:
        if args.quick:
            data_dir, run_dir = _quick_run(out_dir("selection-sensitivity-quick"))
            args.data_dir, args.runs = data_dir, [run_dir]
        name = args.dataset or load_model(args.runs[0]).config.dataset
        dataset = load_dataset(name, args.data_dir)
        features = dataset_tensor(dataset, torch.device("cpu"))
        rows = []
        for i, run_dir in enumerate(args.runs, 1):
            print(f"[{i}/{len(args.runs)}] {run_dir}", file=sys.stderr, flush=True)
            rows.append(selection_sensitivity(run_dir, dataset, features))
            if args.json is None:
                print(strict_json(rows[-1]), flush=True)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(strict_json({"data_dir": str(args.data_dir), "dataset": name, "runs": rows}) + "\n")
    print("\n" + table_markdown(rows), file=sys.stderr)
    print("\nmAP in percent. 'test avg, lam x': at the chosen gate threshold. Test columns are a diagnostic: "
          "nothing is chosen on them.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
