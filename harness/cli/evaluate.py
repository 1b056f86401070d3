"""`emmil eval GROUND_TRUTH.json PREDICTIONS.json`: detection mAP (ActivityNet protocol).

Prints the mAP row in percent (`--per-class`: a classes x tIoU AP table above it); `--json OUT`
writes fractions in [0, 1]:
{"tiou", "mAP", "average_mAP", "per_class_AP": {label: [..]}, "protocol", "counts": {...}, ...}.
The JSON is strict (no NaN/Infinity): an undefined value is `null` with a reason beside it,
`<key>_reason` (`mAP_reason`, `average_mAP_reason`: no ground-truth segment at all;
`per_class_AP_reason`: {label: why} for a class of the ground-truth file with no segment among the
evaluated videos, e.g. only in another subset). The table prints such values as `n/a` / `-`.

Traps it guards against (issue 14.8), each reported on stderr, never silently:
* `--subset` is matched case-insensitively (the shipped THUMOS14 JSON says "Test", W-TALC "test");
* ground-truth videos without any prediction are named: they count as misses (the standard
  protocol), which is what scoring a whole file against one subset's predictions does;
* without `--dataset` / `--tiou` the grid is inferred from the ground truth when the file is
  unambiguously THUMOS14 or ActivityNet1.2, else the ActivityNet grid is used with a warning.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from pathlib import Path
from typing import Mapping

from emmil.errors import DataError

DEFAULT_DATASET = "anet12"  # ANETdetection's default grid, used when nothing else decides
DATASET_TITLES = {"thumos14": "THUMOS14", "anet12": "ActivityNet1.2"}
# THUMOS14 video names in every release (W-TALC, ActionFormer): video_test_0000004, video_validation_0000051
_THUMOS_VIDEO = re.compile(r"^video_(test|validation)_\d+$")
_EXAMPLES = 5  # names quoted in a warning


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ground_truth", metavar="GROUND_TRUTH.json", help='ActivityNet ground truth {"database": ...}')
    parser.add_argument("predictions", metavar="PREDICTIONS.json", help='ActivityNet results {"results": ...}')
    grid = parser.add_mutually_exclusive_group()
    grid.add_argument("--tiou", help="thresholds START:STOP:STEP (e.g. 0.1:0.7:0.1) or a comma list")
    grid.add_argument("--dataset", choices=("thumos14", "anet12"),
                      help="the dataset's official grid: thumos14 0.1:0.7:0.1, anet12 0.5:0.95:0.05 (default: "
                           "inferred from the ground truth's class names / video names, else anet12 with a warning)")
    parser.add_argument("--subset", help="evaluate only ground-truth videos of this subset, matched case-insensitively "
                                         "(THUMOS14: test; ActivityNet1.2: validation)")
    parser.add_argument("--ambiguous", metavar="FILE",
                        help="THUMOS14 Ambiguous_test.txt: drop predictions overlapping those segments")
    parser.add_argument("--unknown-videos", choices=("false-positive", "drop"), default="false-positive",
                        help="predictions for videos not in the ground truth: scored as false positives "
                             "(official, default) or dropped; counted either way")
    parser.add_argument("--per-class", action="store_true",
                        help="also print the AP of every class at every tIoU (the JSON always has it)")
    parser.add_argument("--json", "--out", dest="json", metavar="OUT",
                        help="write the result as JSON (fractions in [0, 1])")


def _load_json(path: str, what: str) -> dict:
    from emmil.data.safe_parse import load_json

    # UTF-8, duplicate keys refused, bounded nesting, NaN/Infinity -> NaN (named by the field checks)
    return load_json(path, what)


def check_out(path: str, flag: str = "--json") -> Path:
    """OUT must be a file path we can write: refused before the (possibly long) work that fills it."""
    out = Path(path)
    if out.is_dir():
        raise DataError(f"{flag} {out}: is a directory, expected a file path")
    if out.is_symlink():
        raise DataError(f"{flag} {out}: is a symbolic link; refusing to write through it")
    if out.parent.exists() and not out.parent.is_dir():
        raise DataError(f"{flag} {out}: {out.parent} is not a directory")
    return out


def strict_json(value, flag: str, out: Path, **options) -> str:
    """json.dumps with allow_nan=False: a NaN/Infinity left in `value` is an error naming the file
    (other tools' JSON parsers reject those tokens), never a file that only Python can read back."""
    try:
        return json.dumps(value, allow_nan=False, **options)
    except ValueError as exc:
        raise DataError(f"{flag} {out}: refusing to write a non-finite number (NaN or Infinity) as JSON ({exc})") from None


def write_out(out: Path, text: str, flag: str = "--json") -> None:
    """Write `text` to `out` atomically: a reader sees the old file or the whole new one, never half."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)  # atomic, and replaces (never follows) a link planted meanwhile
    except OSError as exc:
        raise DataError(f"{flag} {out}: cannot write ({exc.strerror or exc})") from None


# ----------------------------------------------------------------------------------------------
# Pure helpers on the parsed ground truth. They tolerate malformed entries (skipping them): the
# evaluator validates everything and raises an error naming the video and field.


def _entries(ground_truth) -> list[tuple[str, Mapping]]:
    database = ground_truth.get("database") if isinstance(ground_truth, Mapping) else None
    if not isinstance(database, Mapping):
        return []
    return [(str(v), e) for v, e in database.items() if isinstance(e, Mapping)]


def resolve_subset(ground_truth, subset: str | None, name: str) -> str | None:
    """The subset as the file spells it: `--subset test` -> "Test" in the shipped THUMOS14 JSON.

    Exact spelling wins; else the one subset equal ignoring case. None of them: an error listing
    the file's subsets. A file whose entries lack 'subset' is left to the evaluator's error."""
    if subset is None:
        return None
    entries = _entries(ground_truth)
    if not entries or any("subset" not in e for _, e in entries):
        return subset
    present = sorted({str(e["subset"]) for _, e in entries})
    if subset in present:
        return subset
    matches = [s for s in present if s.casefold() == subset.casefold()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise DataError(f"{name}: subset {subset!r} matches several subsets differing only in case: {matches}; "
                        "pass one of them exactly")
    raise DataError(f"{name}: unknown subset {subset!r}; the file has subsets {present} (matched case-insensitively)")


def _shipped_classes(dataset: str) -> frozenset[str]:
    """Class names of the W-TALC annotations shipped in the package (empty if unreadable)."""
    from emmil.data.loading import shipped_annotation_dir
    from emmil.data.safe_pickle import load_npy

    try:
        arr = load_npy(shipped_annotation_dir(dataset) / "classlist.npy", kind="annotation 'classlist'")
    except (DataError, OSError):
        return frozenset()
    return frozenset(x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in arr.tolist())


def infer_dataset(ground_truth, class_lists: Mapping[str, frozenset[str]]) -> tuple[str | None, str]:
    """(dataset, reason) when the ground truth is unambiguously one dataset, else (None, reason).

    Decisive: every label is a class of exactly one dataset (THUMOS14's 20 and ActivityNet1.2's 100
    names are disjoint). Without labels, THUMOS14 video names (video_test_0000004) decide."""
    entries = _entries(ground_truth)
    labels = {a["label"] for _, e in entries if isinstance(e.get("annotations"), list)
              for a in e["annotations"] if isinstance(a, Mapping) and isinstance(a.get("label"), str)}
    thumos_names = bool(entries) and all(_THUMOS_VIDEO.match(v) for v, _ in entries)
    if labels:
        fits = [d for d, classes in class_lists.items() if labels <= classes]
        if len(fits) == 1:
            return fits[0], f"all {len(labels)} labels are {DATASET_TITLES.get(fits[0], fits[0])} classes"
        strangers = sorted(labels - set().union(*class_lists.values()))[:_EXAMPLES] if class_lists else []
        why = f"labels such as {strangers} are not" if strangers else "the labels are not all"
        return None, f"{why} THUMOS14 or ActivityNet1.2 classes"
    if thumos_names:
        return "thumos14", "no labels, but THUMOS14 video names (video_test_...)"
    return None, "no labels and no THUMOS14 video names"


def videos_without_predictions(ground_truth, predictions, subset: str | None) -> tuple[list[str], int]:
    """(names, segment count) of the ground-truth videos (of `subset`) with no prediction at all."""
    results = predictions.get("results") if isinstance(predictions, Mapping) else None
    results = results if isinstance(results, Mapping) else {}
    names, segments = [], 0
    for video, entry in _entries(ground_truth):
        if subset is not None and entry.get("subset") != subset:
            continue
        if not results.get(video):  # absent or an empty list
            names.append(video)
            annotations = entry.get("annotations")
            segments += len(annotations) if isinstance(annotations, list) else 0
    return names, segments


def _grid(args, ground_truth) -> tuple[object, list[str]]:
    """(thresholds, stderr lines): --tiou, --dataset, or the grid inferred from the ground truth."""
    from emmil.evaluate import TIOU, parse_tiou

    if args.tiou:
        return parse_tiou(args.tiou), []
    if args.dataset:
        return TIOU[args.dataset], []
    dataset, reason = infer_dataset(ground_truth, {d: _shipped_classes(d) for d in DATASET_TITLES})
    if dataset is not None:
        return TIOU[dataset], [f"note: tIoU grid {dataset} {_grid_text(TIOU[dataset])}, inferred from "
                               f"{args.ground_truth} ({reason}); --dataset or --tiou chooses another"]
    return TIOU[DEFAULT_DATASET], [
        f"warning: {args.ground_truth}: cannot tell the dataset ({reason}); using the {DEFAULT_DATASET} tIoU grid "
        f"{_grid_text(TIOU[DEFAULT_DATASET])}. Pass --dataset thumos14|anet12 or --tiou START:STOP:STEP to choose"]


def _grid_text(thr) -> str:
    step = thr[1] - thr[0] if len(thr) > 1 else 0.0
    return f"{thr[0]:g}:{thr[-1]:g}:{step:.2g}"


def _missing_warning(args, ground_truth, predictions, subset: str | None, gt_videos: int) -> list[str]:
    names, segments = videos_without_predictions(ground_truth, predictions, subset)
    if not names:
        return []
    where = "" if subset is None else f" of subset {subset!r}"
    line = (f"warning: {len(names)} of {gt_videos} ground-truth videos{where} have no predictions in "
            f"{args.predictions} (e.g. {', '.join(names[:_EXAMPLES])}); their {segments} segments count as misses "
            "(the standard protocol)")
    if subset is None:
        subsets = sorted({str(e["subset"]) for _, e in _entries(ground_truth) if "subset" in e})
        if len(subsets) > 1:
            line += f". The ground truth has subsets {subsets}: --subset scores one of them"
    return [line]


def run(args: argparse.Namespace) -> int:
    from emmil.evaluate import EvaluationWarning, detection_map, read_ambiguous

    out_path = check_out(args.json) if args.json else None
    ground_truth = _load_json(args.ground_truth, "ground-truth")
    predictions = _load_json(args.predictions, "predictions")
    subset = resolve_subset(ground_truth, args.subset, args.ground_truth)
    thr, notes = _grid(args, ground_truth)
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
            ground_truth, predictions, thr, subset=subset, ambiguous=ambiguous,
            unknown_videos=args.unknown_videos, ground_truth_name=args.ground_truth,
            predictions_name=args.predictions,
        )
    # Printed only now that both files proved valid: a bad input gets its error line alone.
    notes += _missing_warning(args, ground_truth, predictions, subset, result.counts["gt_videos"])
    notes += [f"warning: {w.message}" for w in caught]
    for line in notes:
        print(line, file=sys.stderr)
    absent = classes_without_segments(ground_truth, subset, result.per_class_AP)
    print(format_table(result, per_class=args.per_class, absent=absent))
    if args.json:
        out = {**result_document(result, subset, absent),
               "ground_truth": str(args.ground_truth), "predictions": str(args.predictions)}
        write_out(out_path, strict_json(out, "--json", out_path, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def classes_without_segments(ground_truth, subset: str | None, scored) -> dict[str, str]:
    """label -> reason, for labels of the ground-truth file absent from `scored` (the classes with a
    segment among the evaluated videos): their AP is undefined, not 0, and they are not in the mAP."""
    labels = {a["label"] for _, e in _entries(ground_truth) if isinstance(e.get("annotations"), list)
              for a in e["annotations"] if isinstance(a, Mapping) and isinstance(a.get("label"), str)}
    where = "the ground truth" if subset is None else f"subset {subset!r}"
    reason = f"no ground-truth segments of this class in {where}: AP undefined, not counted in the mAP"
    return {label: reason for label in sorted(labels - set(scored))}


def _finite_or_none(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def result_document(result, subset: str | None, absent: Mapping[str, str]) -> dict:
    """The --json document: fractions, with null + `<key>_reason` where a value is undefined (mAP of a
    ground truth without segments; the AP of `absent` classes), so that the file is strict JSON."""
    mAP = [_finite_or_none(x) for x in result.mAP]
    average = _finite_or_none(result.average_mAP)
    per_class = {c: [_finite_or_none(x) for x in ap] for c, ap in result.per_class_AP.items()}
    where = "the ground truth" if subset is None else f"subset {subset!r}"
    no_segments = f"no ground-truth segments in {where}: no class to average over, mAP undefined"
    doc: dict = {"tiou": [round(float(t), 6) for t in result.tiou], "mAP": mAP}
    if None in mAP:
        doc["mAP_reason"] = no_segments
    doc["average_mAP"] = average
    if average is None:
        doc["average_mAP_reason"] = no_segments
    merged = {**per_class, **dict.fromkeys(absent)}
    doc["per_class_AP"] = {c: merged[c] for c in sorted(merged)}
    if absent:
        doc["per_class_AP_reason"] = dict(absent)
    doc.update(protocol=result.protocol, counts=result.counts, subset=subset)
    return doc


def percent_cell(x) -> str:
    """A 6-wide AP cell in percent; `n/a` for an undefined (NaN) value."""
    return f"{100 * x:6.2f}" if math.isfinite(x) else f"{'n/a':>6}"


def format_table(result, per_class: bool = False, absent: Mapping[str, str] = {}) -> str:
    """Protocol, counts, then AP (%) rows: one per class with `per_class` (`-` in every column for an
    `absent` class: AP undefined), then mAP (`n/a` when undefined); last column = mean over the tIoU
    grid. Columns are 6 wide, the label column as wide as the longest label."""
    c = result.counts
    lines = [
        result.protocol,
        f"{c['gt_videos']} videos, {c['gt_segments']} segments, {c['classes']} classes; "
        f"{c['predictions_used']} of {c['predictions']} predictions used "
        f"(unknown label {c['predictions_unknown_label']}, unknown video {c['predictions_unknown_video']}, "
        f"ambiguous removed {c['predictions_ambiguous_removed']})",
    ]
    head = "AP (%) at tIoU" if per_class else "tIoU"
    rows = {**result.per_class_AP, **dict.fromkeys(absent)} if per_class else {}
    width = max([len(head), len("mAP (%)"), *(len(k) for k in rows)])
    lines.append(f"{head:{width}s} " + " ".join(f"{t:6.2f}" for t in result.tiou) + "    avg")
    for label in sorted(rows):
        ap = rows[label]
        cells = [f"{'-':>6}"] * (len(result.tiou) + 1) if ap is None else [percent_cell(x) for x in (*ap, ap.mean())]
        lines.append(f"{label:{width}s} " + " ".join(cells))
    lines.append(f"{'mAP (%)':{width}s} " + " ".join(percent_cell(x) for x in result.mAP)
                 + f" {percent_cell(result.average_mAP)}")
    return "\n".join(lines)
