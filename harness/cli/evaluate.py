"""`emmil eval GROUND_TRUTH.json PREDICTIONS.json`: detection mAP (ActivityNet protocol).

Prints a table in percent; `--json OUT` writes fractions in [0, 1]:
{"tiou", "mAP", "average_mAP", "per_class_AP": {label: [..]}, "protocol", "counts": {...}, ...}.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from emmil.errors import DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ground_truth", metavar="GROUND_TRUTH.json", help='ActivityNet ground truth {"database": ...}')
    parser.add_argument("predictions", metavar="PREDICTIONS.json", help='ActivityNet results {"results": ...}')
    grid = parser.add_mutually_exclusive_group()
    grid.add_argument("--tiou", help="thresholds START:STOP:STEP (e.g. 0.1:0.7:0.1) or a comma list")
    grid.add_argument("--dataset", choices=("thumos14", "anet12"),
                      help="the dataset's official grid: thumos14 0.1:0.7:0.1, anet12 0.5:0.95:0.05 (default anet12)")
    parser.add_argument("--subset", help="evaluate only ground-truth videos of this subset (e.g. test, validation)")
    parser.add_argument("--ambiguous", metavar="FILE",
                        help="THUMOS14 Ambiguous_test.txt: drop predictions overlapping those segments")
    parser.add_argument("--unknown-videos", choices=("false-positive", "drop"), default="false-positive",
                        help="predictions for videos not in the ground truth: scored as false positives "
                             "(official, default) or dropped; counted either way")
    parser.add_argument("--json", metavar="OUT", help="write the result as JSON (fractions in [0, 1])")


def _load_json(path: str, what: str) -> dict:
    from emmil.data.safe_parse import load_json

    # UTF-8, duplicate keys refused, bounded nesting, NaN/Infinity -> NaN (named by the field checks)
    return load_json(path, what)


def _check_out(path: str) -> Path:
    """--json OUT must be a file path we can write: refused before the (possibly long) evaluation."""
    out = Path(path)
    if out.is_dir():
        raise DataError(f"--json {out}: is a directory, expected a file path")
    if out.is_symlink():
        raise DataError(f"--json {out}: is a symbolic link; refusing to write through it")
    if out.parent.exists() and not out.parent.is_dir():
        raise DataError(f"--json {out}: {out.parent} is not a directory")
    return out


def _write_out(out: Path, text: str) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)  # atomic, and replaces (never follows) a link planted meanwhile
    except OSError as exc:
        raise DataError(f"--json {out}: cannot write ({exc.strerror or exc})") from None


def run(args: argparse.Namespace) -> int:
    from emmil.evaluate import TIOU, EvaluationWarning, detection_map, parse_tiou, read_ambiguous

    thr = parse_tiou(args.tiou) if args.tiou else TIOU[args.dataset or "anet12"]
    out_path = _check_out(args.json) if args.json else None
    ground_truth = _load_json(args.ground_truth, "ground-truth")
    predictions = _load_json(args.predictions, "predictions")
    ambiguous = None
    if args.ambiguous:
        if not Path(args.ambiguous).is_file():
            raise DataError(f"{args.ambiguous}: Ambiguous file not found")
        try:
            ambiguous = read_ambiguous(args.ambiguous)
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{args.ambiguous}: cannot read the Ambiguous file ({exc})") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EvaluationWarning)
        result = detection_map(
            ground_truth, predictions, thr, subset=args.subset, ambiguous=ambiguous,
            unknown_videos=args.unknown_videos, ground_truth_name=args.ground_truth,
            predictions_name=args.predictions,
        )
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    _print_table(result)
    if args.json:
        out = {
            "tiou": [round(float(t), 6) for t in result.tiou],
            "mAP": [float(x) for x in result.mAP],
            "average_mAP": float(result.average_mAP),
            "per_class_AP": {c: [float(x) for x in ap] for c, ap in result.per_class_AP.items()},
            "protocol": result.protocol,
            "counts": result.counts,
            "subset": args.subset,
            "ground_truth": str(args.ground_truth),
            "predictions": str(args.predictions),
        }
        _write_out(out_path, json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _print_table(result) -> None:
    print(result.protocol)
    c = result.counts
    print(
        f"{c['gt_videos']} videos, {c['gt_segments']} segments, {c['classes']} classes; "
        f"{c['predictions_used']} of {c['predictions']} predictions used "
        f"(unknown label {c['predictions_unknown_label']}, unknown video {c['predictions_unknown_video']}, "
        f"ambiguous removed {c['predictions_ambiguous_removed']})"
    )
    width = max([len("mAP (%)"), *(len(k) for k in result.per_class_AP)])
    print(f"{'AP (%) at tIoU':{width}s} " + " ".join(f"{t:6.2f}" for t in result.tiou) + "    avg")
    for label, ap in result.per_class_AP.items():
        print(f"{label:{width}s} " + " ".join(f"{100 * x:6.2f}" for x in ap) + f" {100 * ap.mean():6.2f}")
    print(f"{'mAP (%)':{width}s} " + " ".join(f"{100 * x:6.2f}" for x in result.mAP)
          + f" {100 * result.average_mAP:6.2f}")
