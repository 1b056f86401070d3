"""Detection mAP@tIoU (ActivityNet protocol), video classification mAP, segment coverage.

Detection mAP reproduces ActivityNet's official `ANETdetection` (Evaluation/eval_detection.py of
activitynet/ActivityNet), vectorised:

* classes = the labels of the ground truth (after the subset filter); mAP = mean of AP over them;
  a class with ground truth but no prediction has AP 0;
* per class, predictions are sorted by score, descending, STABLE on input order (the official code
  uses `argsort()[::-1]`, which puts tied scores in an order that depends on numpy's sort; we fix it:
  among equal scores the prediction that comes first in the input ranks first);
* each prediction, in that order, is matched to the still-unmatched ground-truth segment of the same
  video and class with the highest tIoU >= threshold (tIoU exactly at the threshold matches; among
  ground-truth segments with the same tIoU the one first in the input is taken); matched -> true
  positive, otherwise false positive; done for every threshold independently;
* AP = `interpolated_prec_rec`: area under the precision/recall curve whose precision is made
  monotone (p(r) = max_{r' >= r} p(r')), with the end points (0, 0) and (1, 0) added.
* tIoU(a, b) = |a ∩ b| / (|a| + |b| - |a ∩ b|), computed with the same floating-point operations as
  the official `segment_iou`, so matches at the threshold are decided identically.

Differences from the official code, all reported rather than silent: a prediction whose label has
no ground truth is ignored (official: KeyError) and counted in `counts` and a warning; predictions
for videos absent from the (subset-filtered) ground truth are scored as false positives, as the
official evaluator does, and counted and warned about (pass `unknown_videos="drop"` to leave them
out instead). The optional THUMOS14 Ambiguous protocol removes, before matching, every prediction
that overlaps (intersection > 0 s) an Ambiguous segment of its video (as W-TALC's detectionMAP.py).

Algorithm: the greedy matching is sequential only among predictions that can compete for the same
ground truth: those of one class and video whose segments chain by overlap with each other and
with ground truth they reach at tIoU >= the lowest threshold (a prediction with no such ground
truth is a false positive everywhere). All such clusters and all thresholds advance together, one
rank at a time: step k takes the k-th prediction of every cluster and finds, for every threshold at
once, its best unlocked ground truth with a segmented minimum over its candidate pairs, pre-sorted
by descending tIoU.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from emmil.errors import DataError

# Official tIoU grids: THUMOS14 0.1..0.7 step 0.1; ActivityNet1.2 0.5..0.95 step 0.05 (linspace, as
# ANETdetection's default `np.linspace(0.5, 0.95, 10)`, so the float values equal the official ones).
TIOU: dict[str, np.ndarray] = {
    "thumos14": np.linspace(0.1, 0.7, 7),
    "anet12": np.linspace(0.5, 0.95, 10),
}
# At most this many thresholds (a 0.01 grid over [0, 1] is 101 > 100: that is 0:0.99:0.01). Matching
# keeps (thresholds x predictions) arrays: `--tiou 0:1:1e-7` used to grow to 20 GB (issue 15).
MAX_TIOU = 100


class EvaluationWarning(UserWarning):
    """Predictions that were ignored or scored as false positives for a reason the user should see."""


@dataclass(frozen=True)
class DetectionResult:
    tiou: np.ndarray  # (K,) thresholds
    mAP: np.ndarray  # (K,) mean over classes of AP, fractions in [0, 1]
    average_mAP: float  # mean of mAP over the K thresholds
    per_class_AP: dict[str, np.ndarray]  # label -> (K,) AP
    counts: dict[str, int]  # videos, segments, predictions used / ignored, by reason
    protocol: str  # e.g. "ActivityNet detection mAP, tIoU 0.10:0.70, ambiguous=removed"


# ----------------------------------------------------------------------------------------------
# Input parsing: ActivityNet JSON dicts -> flat arrays. Errors name the source, video and field.


@dataclass(frozen=True)
class _Table:
    """Segments as parallel arrays (the field's table: video-id, t-start, t-end, label, score)."""

    video_names: tuple[str, ...]  # video code -> name
    label_names: tuple[str, ...]  # label code -> name
    video: np.ndarray  # (N,) int64 video code
    label: np.ndarray  # (N,) int64 label code
    start: np.ndarray  # (N,) float64 seconds
    end: np.ndarray  # (N,) float64 seconds
    score: np.ndarray  # (N,) float64 (ones for ground truth)


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{where}: expected a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise DataError(f"{where}: expected a finite number, got {value!r}")
    return x


def _segment(item, where: str) -> tuple[float, float]:
    if not isinstance(item, Mapping) or "segment" not in item:
        raise DataError(f"{where}: missing field 'segment'")
    seg = item["segment"]
    if not isinstance(seg, (list, tuple)) or len(seg) != 2:
        raise DataError(f"{where}: field 'segment' must be [start, end], got {seg!r}")
    s, e = _number(seg[0], f"{where} field 'segment'"), _number(seg[1], f"{where} field 'segment'")
    if e < s:
        raise DataError(f"{where}: field 'segment' has end < start ({s} > {e})")
    return s, e


def _label(item, where: str) -> str:
    if "label" not in item:
        raise DataError(f"{where}: missing field 'label'")
    if not isinstance(item["label"], str):
        raise DataError(f"{where}: field 'label' must be a string, got {item['label']!r}")
    return item["label"]


def _ground_truth_table(ground_truth: Mapping, subset: str | None, name: str) -> _Table:
    """Segments of the subset's videos; `video_names` lists every video of the subset."""
    if not isinstance(ground_truth, Mapping) or not isinstance(ground_truth.get("database"), Mapping):
        raise DataError(f"{name}: missing field 'database' (ActivityNet ground-truth format)")
    subsets = set()
    videos: list[str] = []
    segs, labels, codes = [], [], []
    for video, entry in ground_truth["database"].items():
        if not isinstance(entry, Mapping):
            raise DataError(f"{name}: video {video!r}: entry must be an object")
        if subset is not None:
            if "subset" not in entry:
                raise DataError(f"{name}: video {video!r}: missing field 'subset'")
            subsets.add(entry["subset"])
            if entry["subset"] != subset:
                continue
        annotations = entry.get("annotations")
        if not isinstance(annotations, list):
            raise DataError(f"{name}: video {video!r}: missing or non-list field 'annotations'")
        try:  # fast path; any fault is located below
            segs += [item["segment"] for item in annotations]
            labels += [item["label"] for item in annotations]
        except (KeyError, TypeError):
            _check_items(video, annotations, name, "annotation", need_score=False)
        codes += [len(videos)] * len(annotations)
        videos.append(video)
    if subset is not None and not videos:
        raise DataError(f"{name}: unknown subset {subset!r}; the file has {sorted(map(str, subsets))}")
    seg, label, label_names = _validated(segs, labels, None)
    if seg is None:
        for video, entry in ground_truth["database"].items():
            if video in set(videos):
                _check_items(video, entry["annotations"], name, "annotation", need_score=False)
        raise DataError(f"{name}: malformed 'database'")  # not reached: the check names the fault
    n = len(codes)
    return _Table(
        tuple(videos), label_names, np.array(codes, dtype=np.int64).reshape(n), label,
        seg[:, 0].copy(), seg[:, 1].copy(), np.ones(n),
    )


def _validated(segs: list, labels: list, scores: list | None):
    """Fields as arrays if all are well-formed, else (None, None, None).
    -> seg (N, 2) float64, label codes (N,) int64, label names (sorted), [score (N,) float64]."""
    n = len(labels)
    bad = (None, None, None) if scores is None else (None, None, None, None)
    try:
        distinct = set(labels)  # TypeError for an unhashable label
        seg = np.array(segs)
        if not (seg.dtype.kind in "iuf" and (seg.shape == (n, 2) or seg.size == n == 0) and len(segs) == n
                and all(type(x) is str for x in distinct)):
            return bad
        seg = seg.astype(np.float64).reshape(n, 2)
        if not (np.isfinite(seg).all() and (seg[:, 1] >= seg[:, 0]).all()):
            return bad
        if scores is not None:
            score = np.array(scores)
            if not (score.dtype.kind in "iuf" and score.shape == (n,)):
                return bad
            score = score.astype(np.float64)
            if not np.isfinite(score).all():
                return bad
    except (TypeError, ValueError):
        return bad
    names = tuple(sorted(distinct))
    codes = {x: i for i, x in enumerate(names)}
    label = np.fromiter(map(codes.__getitem__, labels), dtype=np.int64, count=n)
    return (seg, label, names) if scores is None else (seg, label, names, score)


def _check_items(video: str, items, name: str, what: str, need_score: bool) -> None:
    """Raise DataError at the first malformed item, naming the file, video, index and field."""
    if not isinstance(items, list):
        raise DataError(f"{name}: video {video!r}: {what}s must be a list")
    for i, item in enumerate(items):
        where = f"{name}: video {video!r} {what} {i}"
        _segment(item, where)
        _label(item, where)
        if need_score:
            if "score" not in item:
                raise DataError(f"{where}: missing field 'score'")
            _number(item["score"], f"{where} field 'score'")


def _prediction_table(predictions: Mapping, name: str) -> _Table:
    """Fast path: gather fields with list comprehensions and validate them as arrays; if anything is
    off, `_check_items` walks the items one by one to raise an error naming video and field."""
    if not isinstance(predictions, Mapping) or not isinstance(predictions.get("results"), Mapping):
        raise DataError(f"{name}: missing field 'results' (ActivityNet results format)")
    results = predictions["results"]
    videos, segs, labels, scores, codes = [], [], [], [], []
    for video, items in results.items():
        try:
            if not isinstance(items, list):
                raise TypeError
            segs += [item["segment"] for item in items]
            labels += [item["label"] for item in items]
            scores += [item["score"] for item in items]
        except (KeyError, TypeError):
            _check_items(video, items, name, "prediction", need_score=True)
        codes += [len(videos)] * len(items)
        videos.append(video)
    seg, label, label_names, score = _validated(segs, labels, scores)
    if seg is None:
        for video, items in results.items():
            _check_items(video, items, name, "prediction", need_score=True)
        raise DataError(f"{name}: malformed 'results'")  # not reached: the check names the fault
    n = len(codes)
    return _Table(
        tuple(videos), label_names, np.array(codes, dtype=np.int64).reshape(n), label,
        seg[:, 0].copy(), seg[:, 1].copy(), score,
    )


# ----------------------------------------------------------------------------------------------
# The core: arrays in, AP (K, C) out.


def segment_iou(pred_start, pred_end, gt_start, gt_end) -> np.ndarray:
    """Elementwise tIoU, the same float operations as the official `segment_iou` (broadcasts).

    0/0 (two zero-length segments) gives nan, which matches nothing, as in the official code.
    """
    inter = (np.minimum(pred_end, gt_end) - np.maximum(pred_start, gt_start)).clip(0)
    union = (gt_end - gt_start) + (pred_end - pred_start) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / union


def interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """ActivityNet `interpolated_prec_rec`, for K curves at once: (K, n), (K, n) -> (K,).

    AP = sum_i (r_i - r_{i-1}) * max_{j >= i} p_j over the curve with (r, p) = (0, 0) prepended
    and (1, 0) appended. Terms where the recall does not change are exactly 0.
    """
    k = precision.shape[0]
    mprec = np.concatenate([np.zeros((k, 1)), precision, np.zeros((k, 1))], axis=1)
    mrec = np.concatenate([np.zeros((k, 1)), recall, np.ones((k, 1))], axis=1)
    envelope = np.maximum.accumulate(mprec[:, ::-1], axis=1)[:, ::-1]
    return np.sum((mrec[:, 1:] - mrec[:, :-1]) * envelope[:, 1:], axis=1)


def _match(
    thr: np.ndarray, key_p: np.ndarray, ps: np.ndarray, pe: np.ndarray, key_g: np.ndarray, gs: np.ndarray,
    ge: np.ndarray,
) -> np.ndarray:
    """Greedy matching; predictions are in rank order (class, then score). -> tp (K, P) bool.

    key_p (P,), key_g (G,): integer (class, video) group of each prediction / ground-truth segment.
    """
    num_t, num_p = len(thr), len(key_p)
    tp = np.zeros((num_t, num_p), dtype=bool)
    if num_p == 0 or len(key_g) == 0:
        return tp
    # Ground truth grouped: segments of group u are g_order[g_off[u] : g_off[u] + g_cnt[u]].
    g_order = np.argsort(key_g, kind="stable")
    groups, g_off, g_cnt = np.unique(key_g[g_order], return_index=True, return_counts=True)
    pos = np.searchsorted(groups, key_p)
    pos_c = np.minimum(pos, len(groups) - 1)
    has_gt = groups[pos_c] == key_p
    pred_idx = np.flatnonzero(has_gt)  # rank order kept
    grp = pos_c[pred_idx]
    # All (prediction, ground truth of its group) pairs.
    cnt = g_cnt[grp]
    pair_pred = np.repeat(pred_idx, cnt)
    first = np.repeat(np.cumsum(cnt) - cnt, cnt)
    pair_gt = g_order[np.repeat(g_off[grp], cnt) + np.arange(cnt.sum()) - first]
    iou = segment_iou(ps[pair_pred], pe[pair_pred], gs[pair_gt], ge[pair_gt])
    cand = iou >= thr.min()  # nan -> False
    pair_pred, pair_gt, iou = pair_pred[cand], pair_gt[cand], iou[cand]
    if len(pair_pred) == 0:
        return tp
    # Predictions interact only through shared candidate ground truth, so each group splits into
    # independent clusters: the chains of overlapping intervals among its candidate predictions and
    # ground truth (a candidate pair overlaps when the lowest threshold is > 0). Any partition at
    # least this coarse is exact; a prediction's step is its rank inside its cluster.
    cand_pred = np.unique(pair_pred)  # ascending = rank order
    if thr.min() > 0:
        cand_gt = np.unique(pair_gt)
        group_of = np.unique(np.concatenate([key_p[cand_pred], key_g[cand_gt]]), return_inverse=True)[1]
        start = np.concatenate([ps[cand_pred], gs[cand_gt]])
        end = np.concatenate([pe[cand_pred], ge[cand_gt]])
        # Shift each group past the previous one; rounding is monotone, so overlaps survive the shift.
        shift = group_of * (end.max() - start.min() + 1.0)
        s_shift, e_shift = start - start.min() + shift, end - start.min() + shift
        order_i = np.lexsort((s_shift, group_of))
        reach = np.maximum.accumulate(e_shift[order_i])
        new_cluster = np.ones(len(order_i), dtype=bool)
        new_cluster[1:] = s_shift[order_i][1:] > reach[:-1]
        cluster = np.empty(len(order_i), dtype=np.int64)
        cluster[order_i] = np.cumsum(new_cluster)
        component = cluster[: len(cand_pred)]
    else:  # tIoU 0 pairs need not overlap: fall back to whole (class, video) groups
        component = key_p[cand_pred]
    by_group = np.argsort(component, kind="stable")
    _, start_in_sorted, counts_in_sorted = np.unique(component[by_group], return_index=True, return_counts=True)
    rank = np.empty(len(cand_pred), dtype=np.int64)
    rank[by_group] = np.arange(len(cand_pred)) - np.repeat(start_in_sorted, counts_in_sorted)
    # Pairs sorted by (step = rank, prediction, tIoU descending, ground-truth input order).
    pred_rank = rank[np.searchsorted(cand_pred, pair_pred)]
    order = np.lexsort((pair_gt, -iou, pair_pred, pred_rank))
    pair_pred, pair_gt, iou, pair_rank = pair_pred[order], pair_gt[order], iou[order], pred_rank[order]
    new_pred = np.ones(len(pair_pred), dtype=bool)
    new_pred[1:] = pair_pred[1:] != pair_pred[:-1]
    seg_start = np.flatnonzero(new_pred)  # first pair of each prediction, in step order
    seg_pred = pair_pred[seg_start]
    seg_rank = pair_rank[seg_start]
    steps = int(seg_rank[-1]) + 1
    seg_bounds = np.searchsorted(seg_rank, np.arange(steps + 1))
    pair_bounds = np.append(seg_start, len(pair_pred))[seg_bounds]
    above = iou[None, :] >= thr[:, None]  # (K, pairs)
    locked = np.zeros((num_t, len(key_g)), dtype=bool)
    big = np.iinfo(np.int64).max
    positions = np.arange(len(pair_pred), dtype=np.int64)
    for k in range(steps):
        p0, p1 = pair_bounds[k], pair_bounds[k + 1]
        s0, s1 = seg_bounds[k], seg_bounds[k + 1]
        gts = pair_gt[p0:p1]
        free = above[:, p0:p1] & ~locked[:, gts]  # (K, n)
        key = np.where(free, positions[p0:p1], big)
        best = np.minimum.reduceat(key, seg_start[s0:s1] - p0, axis=1)  # (K, A): first free pair
        hit = best < big
        if not hit.any():
            continue
        t_idx, a_idx = np.nonzero(hit)
        locked[t_idx, pair_gt[best[t_idx, a_idx]]] = True
        tp[t_idx, seg_pred[s0 + a_idx]] = True
    return tp


def _average_precision(
    thr: np.ndarray, num_classes: int, num_videos: int,
    cg: np.ndarray, vg: np.ndarray, gs: np.ndarray, ge: np.ndarray,
    cp: np.ndarray, vp: np.ndarray, ps: np.ndarray, pe: np.ndarray, score: np.ndarray,
) -> np.ndarray:
    """AP (K, C). Ground truth: class cg, video vg, [gs, ge) (G,); predictions likewise (P,) + score.
    Class and video codes are ints in [0, num_classes) and [0, num_videos)."""
    # Rank order: class, then score descending, ties in input order (lexsort is stable).
    order = np.lexsort((-score, cp))
    cp, vp = cp[order], vp[order]
    tp = _match(thr, cp * num_videos + vp, ps[order], pe[order], cg * num_videos + vg, gs, ge)
    npos = np.bincount(cg, minlength=num_classes)
    bounds = np.searchsorted(cp, np.arange(num_classes + 1))
    ap = np.zeros((len(thr), num_classes))
    for c in range(num_classes):
        b0, b1 = bounds[c], bounds[c + 1]
        if b1 == b0 or npos[c] == 0:
            continue  # no prediction: AP 0, as the official evaluator
        tp_cum = np.cumsum(tp[:, b0:b1], axis=1).astype(np.float64)
        fp_cum = np.cumsum(~tp[:, b0:b1], axis=1).astype(np.float64)
        ap[:, c] = interpolated_ap(tp_cum / (tp_cum + fp_cum), tp_cum / npos[c])
    return ap


def _overlaps_any(t: _Table, segments: Mapping[str, Sequence[Sequence[float]]]) -> np.ndarray:
    """(N,) bool: segment i overlaps (intersection > 0) some segment of its video in `segments`."""
    out = np.zeros(len(t.video), dtype=bool)
    for code, video in enumerate(t.video_names):
        if video not in segments:
            continue
        amb = np.asarray(segments[video], dtype=np.float64).reshape(-1, 2)
        idx = np.flatnonzero(t.video == code)
        inter = np.minimum(t.end[idx, None], amb[None, :, 1]) - np.maximum(t.start[idx, None], amb[None, :, 0])
        out[idx] = (inter > 0).any(axis=1)
    return out


def _tiou_text(thr: np.ndarray) -> str:
    if len(thr) == 1:
        return f"{thr[0]:.2f}"
    return f"{thr[0]:.2f}:{thr[-1]:.2f}"


def detection_map(
    ground_truth: Mapping,
    predictions: Mapping,
    tiou: Sequence[float] | np.ndarray = TIOU["anet12"],
    *,
    subset: str | None = None,
    ambiguous: Mapping[str, Sequence[Sequence[float]]] | None = None,
    unknown_videos: str = "false-positive",
    ground_truth_name: str = "ground truth",
    predictions_name: str = "predictions",
) -> DetectionResult:
    """Detection mAP at each tIoU threshold, as ActivityNet's official ANETdetection (module doc).

    ground_truth: {"database": {video: {"subset", "annotations": [{"label", "segment": [s, e]}]}}}
    predictions: {"results": {video: [{"label", "segment": [s, e], "score"}]}}
    subset: keep only ground-truth videos of this subset (None: all).
    ambiguous: video -> [(start_s, end_s)]: drop predictions overlapping these (THUMOS14 protocol).
    unknown_videos: "false-positive" (official) or "drop", for predictions of videos not in the
        (subset-filtered) ground truth; either way they are counted and warned about.
    *_name: how the inputs are named in error messages (the CLI passes file paths).
    """
    if unknown_videos not in ("false-positive", "drop"):
        raise ValueError(f"unknown_videos must be 'false-positive' or 'drop', got {unknown_videos!r}")
    thr = np.asarray(tiou, dtype=np.float64).reshape(-1)
    if len(thr) > MAX_TIOU:
        raise DataError(f"{len(thr)} tIoU thresholds: at most {MAX_TIOU} are allowed")
    if len(thr) == 0 or not np.all(np.isfinite(thr)) or thr.min() < 0 or thr.max() > 1:
        raise DataError(f"tIoU thresholds must be non-empty and in [0, 1], got {thr.tolist()}")
    gt = _ground_truth_table(ground_truth, subset, ground_truth_name)
    pred = _prediction_table(predictions, predictions_name)
    classes = tuple(sorted(gt.label_names))
    cls_index = {c: i for i, c in enumerate(classes)}
    cg = np.array([cls_index[c] for c in gt.label_names], dtype=np.int64)[gt.label]
    cp = np.array([cls_index.get(c, -1) for c in pred.label_names], dtype=np.int64)[pred.label]
    num_gt_videos = len(gt.video_names)
    vid_index = {v: i for i, v in enumerate(gt.video_names)}
    vid_map = [vid_index.get(v, num_gt_videos + j) for j, v in enumerate(pred.video_names)]
    vp = np.array(vid_map, dtype=np.int64)[pred.video]
    counts = {
        "gt_videos": num_gt_videos,
        "gt_segments": len(gt.label),
        "classes": len(classes),
        "predictions": len(pred.label),
    }
    known_label = cp >= 0
    counts["predictions_unknown_label"] = int((~known_label).sum())
    if counts["predictions_unknown_label"]:
        bad = sorted({pred.label_names[i] for i in np.unique(pred.label[~known_label])})
        warnings.warn(
            f"{predictions_name}: {counts['predictions_unknown_label']} prediction(s) with label(s) absent from "
            f"the ground truth were ignored: {bad[:5]}", EvaluationWarning, stacklevel=2,
        )
    known_video = vp < num_gt_videos
    unknown = known_label & ~known_video
    counts["predictions_unknown_video"] = int(unknown.sum())
    if counts["predictions_unknown_video"]:
        bad = sorted({pred.video_names[i] for i in np.unique(pred.video[unknown])})
        what = "scored as false positives" if unknown_videos == "false-positive" else "ignored"
        warnings.warn(
            f"{predictions_name}: {counts['predictions_unknown_video']} prediction(s) for {len(bad)} video(s) not in "
            f"the ground truth{'' if subset is None else f' subset {subset!r}'} were {what}: {bad[:5]}",
            EvaluationWarning, stacklevel=2,
        )
    keep = known_label & (known_video if unknown_videos == "drop" else True)
    removed = np.zeros(len(pred.label), dtype=bool)
    if ambiguous is not None:
        removed = keep & _overlaps_any(pred, ambiguous)
        keep &= ~removed
    counts["predictions_ambiguous_removed"] = int(removed.sum())
    counts["predictions_used"] = int(keep.sum())
    ap = _average_precision(
        thr, len(classes), num_gt_videos + len(pred.video_names),
        cg, gt.video, gt.start, gt.end, cp[keep], vp[keep], pred.start[keep], pred.end[keep], pred.score[keep],
    )  # (K, C)
    if not classes:
        warnings.warn(f"{ground_truth_name}: no ground-truth segment{'' if subset is None else f' in subset {subset!r}'}"
                      "; mAP is undefined (NaN here, null in `emmil eval --json`)", EvaluationWarning, stacklevel=2)
    mAP = ap.mean(axis=1) if len(classes) else np.full(len(thr), np.nan)
    protocol = (
        f"ActivityNet detection mAP, tIoU {_tiou_text(thr)}, "
        f"ambiguous={'removed' if ambiguous is not None else 'kept'}"
    )
    return DetectionResult(
        tiou=thr,
        mAP=mAP,
        average_mAP=float(mAP.mean()),
        per_class_AP={c: ap[:, i] for i, c in enumerate(classes)},
        counts=counts,
        protocol=protocol,
    )


# ----------------------------------------------------------------------------------------------


def classification_map(scores: np.ndarray, labels: np.ndarray) -> float:
    """Video-level classification mAP: scores (N, C) real, labels (N, C) in {0, 1}.

    Per class, videos are ranked by score (descending, stable on input order) and AP is the same
    interpolated precision/recall area as detection (ActivityNet `interpolated_prec_rec`); the mean
    is over classes with at least one positive video.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise DataError(f"classification_map: scores {scores.shape} and labels {labels.shape} must both be (N, C)")
    if not np.all(np.isfinite(scores)):
        raise DataError("classification_map: scores contain NaN or infinite values")
    if not np.all((labels == 0) | (labels == 1)):
        raise DataError("classification_map: labels must be 0 or 1")
    positive = labels.sum(axis=0) > 0
    if not positive.any():
        raise DataError("classification_map: no class has a positive video")
    aps = []
    for c in np.flatnonzero(positive):
        order = np.argsort(-scores[:, c], kind="stable")
        tp = labels[order, c].astype(np.float64)
        tp_cum = np.cumsum(tp)
        precision = tp_cum / np.arange(1, len(tp) + 1)
        aps.append(interpolated_ap(precision[None], (tp_cum / tp.sum())[None])[0])
    return float(np.mean(aps))


def segment_coverage(ground_truth: Mapping, predictions: Mapping, subset: str | None = None) -> float:
    """Completeness: mean over ground-truth segments of the largest fraction of the segment covered
    by ONE prediction of the same video and class (|gt ∩ pred| / |gt|; a zero-length ground-truth
    segment counts as covered when a prediction contains its instant). Scores are not used.
    No ground-truth segment at all: nan, with an EvaluationWarning.
    """
    gt = _ground_truth_table(ground_truth, subset, "ground truth")
    pred = _prediction_table(predictions, "predictions")
    if len(gt.label) == 0:
        warnings.warn(f"segment_coverage: no ground-truth segment{'' if subset is None else f' in subset {subset!r}'}"
                      "; coverage is undefined (nan)", EvaluationWarning, stacklevel=2)
        return float("nan")
    # Prediction indices grouped by (video, label): one sort instead of a scan per group.
    key = pred.video * max(len(pred.label_names), 1) + pred.label
    order = np.argsort(key, kind="stable")
    uniq, first = np.unique(key[order], return_index=True)
    chunks = np.split(order, first[1:])
    nl = max(len(pred.label_names), 1)
    groups = {
        (pred.video_names[k // nl], pred.label_names[k % nl]): idx for k, idx in zip(uniq.tolist(), chunks)
    }
    covered = np.zeros(len(gt.label))
    for i in range(len(gt.label)):
        idx = groups.get((gt.video_names[gt.video[i]], gt.label_names[gt.label[i]]))
        if idx is None:
            continue
        s, e = gt.start[i], gt.end[i]
        if e > s:
            inter = np.minimum(pred.end[idx], e) - np.maximum(pred.start[idx], s)
            covered[i] = max(float(inter.max()), 0.0) / (e - s)
        else:
            covered[i] = float(np.any((pred.start[idx] <= s) & (pred.end[idx] >= s)))
    return float(covered.mean())


# ----------------------------------------------------------------------------------------------
# Helpers for the CLI and callers holding files.


def parse_tiou(text: str) -> np.ndarray:
    """"0.1:0.7:0.1" -> linspace(0.1, 0.7, 7) (the official float values); "0.5,0.75" -> a list."""
    shown = text if len(text) <= 80 else text[:77] + "..."
    if text.count(",") >= MAX_TIOU:  # before splitting: a huge list is refused without building it
        raise DataError(f"--tiou: at most {MAX_TIOU} thresholds, got {text.count(',') + 1}")
    try:
        if ":" in text:
            lo, hi, step = (float(x) for x in text.split(":"))
            if not (math.isfinite(lo) and math.isfinite(hi) and math.isfinite(step)) or step <= 0 or hi < lo:
                raise ValueError
            count = round((hi - lo) / step) + 1  # checked before np.linspace allocates (0:1:1e-7 was 20 GB)
            if count > MAX_TIOU:
                raise DataError(f"--tiou {shown}: {count} thresholds, at most {MAX_TIOU} are allowed")
            return np.linspace(lo, hi, int(count))
        return np.array([float(x) for x in text.split(",")])
    except (ValueError, OverflowError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"--tiou: expected START:STOP:STEP or a comma list, got {shown!r}") from None


_AMBIGUOUS_LINE = re.compile(r"^(\S+)\s+(\S+)\s+(\S+)\s*$")


def read_ambiguous(path) -> dict[str, tuple[tuple[float, float], ...]]:
    """THUMOS14 `Ambiguous_test.txt` (`video  start end` per line) -> video -> ((start_s, end_s), ...)."""
    out: dict[str, list[tuple[float, float]]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            m = _AMBIGUOUS_LINE.match(line.strip())
            try:
                if m is None:
                    raise ValueError
                s, e = float(m.group(2)), float(m.group(3))
                if not (math.isfinite(s) and math.isfinite(e)) or e < s:
                    raise ValueError
            except ValueError:
                raise DataError(f"{path}: line {n}: expected 'video start end' with start <= end, got {line.strip()!r}") from None
            out.setdefault(m.group(1), []).append((s, e))
    return {k: tuple(v) for k, v in out.items()}
