"""`emmil train`: train and evaluate one EM-MIL run, writing a run directory.

`--config RUN_DIR/config.yaml` (a run's own resolved config) reruns that configuration: its dataset,
preset, variant and seed are the file's unless given as flags; a --dataset or --preset that
contradicts the file is refused by name (the file is layered on the preset's defaults).

RUN_DIR/config.yaml (resolved config), predictions.json (ActivityNet results format),
timelines.json, model.pt (what `emmil predict` loads: emmil.model_file), and LAST, atomically, metrics.json (test mAP per tIoU as fractions, average mAP,
classification mAP, coverage, validation metrics, timing). A run without metrics.json is unfinished.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default=None, choices=("thumos14", "anet12"),
                        help="required unless the --config file sets 'dataset'")
    parser.add_argument("--data-dir", required=True, metavar="DIR",
                        help="W-TALC release folder or per-video folder (see `emmil data info`)")
    parser.add_argument("--variant", default=None, choices=("full", "no-pseudo-label", "joint", "attention-mil"),
                        help="model variant (default: full, or the config file's)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default 0, or the config file's)")
    parser.add_argument("--preset", default=None, choices=("paper", "quick"),
                        help="default: the config file's 'preset', else paper")
    parser.add_argument("--config", metavar="FILE",
                        help="YAML overrides (nested sections or dotted keys), e.g. a run's own config.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set train.gamma=0.1 (repeatable)")
    parser.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="default: auto")
    parser.add_argument("--out", required=True, metavar="RUN_DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from harness.cli.data_options import add_data_arguments

    add_data_arguments(parser)


def format_table(metrics: dict, dataset: str) -> str:
    """The test mAP table (percent) as text; `n/a` where a value is undefined (NaN: no test segment)."""
    from harness.cli.evaluate import percent_cell

    keys = [k for k in metrics if k.startswith("test_mAP_")]
    head = "tIoU    " + " ".join(f"{k[len('test_mAP_'):]:>6}" for k in keys) + "    avg"
    row = "mAP(%)  " + " ".join(percent_cell(metrics[k]) for k in keys) + f" {percent_cell(metrics['test_avg_mAP'])}"
    extra = (f"classification mAP {percent_cell(metrics['test_cls_mAP']).strip()}%, segment coverage "
             f"{percent_cell(metrics['test_coverage']).strip()}%  [{dataset}, {metrics.get('eval_protocol', '')}]")
    return "\n".join([head, row, extra])


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from emmil.config import parse_set_args, resolve_config
    from emmil.data.loading import load_dataset
    from emmil.errors import ConfigError
    from emmil.train import train_run

    overrides = parse_set_args(args.overrides)
    if args.device is not None:
        overrides["device"] = args.device
    config = resolve_config(args.dataset, preset=args.preset, variant=args.variant, seed=args.seed,
                            config_file=args.config, overrides=overrides)
    from harness.cli.data_options import data_kwargs

    if Path(args.out).exists() and not Path(args.out).is_dir():  # before minutes of training, not after
        raise ConfigError(f"--out {args.out}: is a file, expected a run directory")
    dataset = load_dataset(config.dataset, args.data_dir, args.layout, **data_kwargs(args))
    print(f"data: {dataset.source} ({len(dataset.videos)} videos, {dataset.features.shape[0]} clips)", file=sys.stderr)
    metrics = train_run(config, dataset, args.out, progress=not args.no_progress)
    print(format_table(metrics, config.dataset))
    if dataset.is_synthetic:
        print("note: semi-synthetic features, not a reproduction of the paper's real-I3D numbers")
    elif not dataset.source.startswith("real"):
        print(f"note: {dataset.source}: pass --real-features if these are the real I3D features")
    print(f"run written to {args.out}")
    return 0
