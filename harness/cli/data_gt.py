"""`emmil data gt`: write a dataset's ground truth as ActivityNet JSON, the format `emmil eval` reads.

    emmil data gt --dataset anet12 --data-dir DIR --subset validation --out gt.json

The dataset is loaded exactly as `emmil train` loads it (`emmil.data.loading.load_dataset`), so the
file holds the videos and segments `train` scored its test mAP against (segments clipped to the
video, videos the loader dropped left out). Output: {"database": {video: {"subset", "duration",
"annotations": [{"label", "segment": [start_s, end_s]}]}}}, written atomically.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=("thumos14", "anet12"))
    parser.add_argument("--data-dir", required=True, metavar="DIR",
                        help="W-TALC release folder or per-video folder (see `emmil data info`)")
    parser.add_argument("--subset", default=None,
                        help="subset to write, matched case-insensitively (default: the one `emmil train` "
                             "evaluates: thumos14 test, anet12 validation)")
    parser.add_argument("--out", required=True, metavar="GT.json", help="file to write (not a directory)")
    from harness.cli.data_options import add_data_arguments

    add_data_arguments(parser)


def pick_subset(present, wanted: str | None, default: str, where: str) -> str:
    """The dataset's spelling of `wanted` (case-insensitive), `default` when None; else an error
    naming `where` and listing the subsets present."""
    from emmil.errors import DataError

    present = sorted(set(present))
    wanted = default if wanted is None else wanted
    if wanted in present:
        return wanted
    matches = [s for s in present if s.casefold() == wanted.casefold()]
    if len(matches) == 1:
        return matches[0]
    raise DataError(f"{where}: no videos in subset {wanted!r}; the dataset has subsets {present}")


def run(args: argparse.Namespace) -> int:
    from emmil.data.loading import load_dataset
    from harness.cli.evaluate import check_out, strict_json, write_out

    out = check_out(args.out, "--out")  # before the (possibly minutes long) feature load
    from harness.cli.data_options import data_kwargs

    dataset = load_dataset(args.dataset, args.data_dir, args.layout, **data_kwargs(args))
    subset = pick_subset((v.subset for v in dataset.videos), args.subset, dataset.test_subset,
                         f"{args.dataset} at {args.data_dir}")
    gt = dataset.ground_truth(subset)
    write_out(out, strict_json(gt, "--out", out, indent=1) + "\n", "--out")  # the loader checked every number finite
    segments = sum(len(e["annotations"]) for e in gt["database"].values())
    classes = len({a["label"] for e in gt["database"].values() for a in e["annotations"]})
    print(f"wrote {out}: {len(gt['database'])} videos, {segments} segments, {classes} classes "
          f"({args.dataset} subset {subset!r}, {dataset.source})")
    print(f"score with: emmil eval {out} PREDICTIONS.json --dataset {args.dataset} --subset {subset}")
    return 0
