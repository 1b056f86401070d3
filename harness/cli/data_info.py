"""`emmil data info`: load a dataset, print a summary and every problem the loader handled.

Exit 0 when the data is usable, 2 (with `error: <message>` naming file / video / field) when not.
"""

from __future__ import annotations

import argparse

from harness.cli.data_options import add_data_arguments, data_kwargs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=["thumos14", "anet12"])
    parser.add_argument("--data-dir", required=True, help="W-TALC release folder or per-video feature folder")
    parser.add_argument("--min-clips", type=int, default=1, help="drop (and count) videos with fewer clips")
    add_data_arguments(parser)


def format_report(report) -> str:
    """The summary printed by `emmil data info` (a pure function of the LoadReport)."""
    from emmil.data.problems import PROBLEM_HELP

    ds = report.dataset
    lines = [
        f"dataset      {ds.name}  ({report.layout} layout, {ds.path})",
        f"source       {ds.source}",
        f"videos       {len(ds.videos)}   clips {ds.features.shape[0]}   classes {len(ds.classes)}",
        f"features     {ds.features.dtype} {ds.features.shape}: RGB width {ds.rgb_dim}, flow width {ds.flow_dim}",
        f"time base    {ds.clip_seconds:.4f} s per clip",
        "subset        role    videos    clips  segments  classes",
    ]
    for subset in sorted({v.subset for v in ds.videos}):
        vids = ds.in_subset(subset)
        role = "train" if subset == ds.train_subset else "test" if subset == ds.test_subset else "-"
        lines.append(
            f"  {subset:<11} {role:<6} {len(vids):>6} {sum(v.num_clips for v in vids):>8} "
            f"{sum(len(v.segments) for v in vids):>9} {len({c for v in vids for c in v.labels}):>8}"
        )
    if ds.ambiguous:
        lines.append(f"ambiguous    {sum(len(s) for s in ds.ambiguous.values())} segments in {len(ds.ambiguous)} videos")
    for note in report.notes:
        lines.append(f"note         {note}")
    if report.problems:
        lines.append("handled (counted, not skipped silently):")
        for key, items in report.problems.items():
            examples = ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")
            lines.append(f"  {len(items):>5}  {key}: {PROBLEM_HELP[key]}  (e.g. {examples})")
    else:
        lines.append("handled      nothing: no problem found")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from emmil.data.loading import load_dataset_report

    report = load_dataset_report(args.dataset, args.data_dir, args.layout, min_clips=args.min_clips,
                                 **data_kwargs(args))
    print(format_report(report))
    return 0
