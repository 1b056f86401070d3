"""A straightforward reimplementation of the structure of ActivityNet's official detection evaluator
(activitynet/ActivityNet Evaluation/eval_detection.py: compute_average_precision_detection,
segment_iou, interpolated_prec_rec), written from its published algorithm: per class, per
prediction, a loop over thresholds and over ground truth sorted by tIoU. Used by the tests and by
bench/eval_speed.py as the slow reference the vectorised evaluator must equal.

Tie rules fixed (the official code leaves them to numpy's unstable argsort): tied scores keep input
order; among ground truth with equal tIoU the one first in the input is tried first.
Input: flat lists of (video, start, end, label[, score]) tuples.
"""

from __future__ import annotations

import numpy as np


def segment_iou(target, candidates):
    tt1 = np.maximum(target[0], candidates[:, 0])
    tt2 = np.minimum(target[1], candidates[:, 1])
    inter = (tt2 - tt1).clip(0)
    union = (candidates[:, 1] - candidates[:, 0]) + (target[1] - target[0]) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter.astype(float) / union


def interpolated_prec_rec(prec, rec):
    mprec = np.hstack([[0], prec, [0]])
    mrec = np.hstack([[0], rec, [1]])
    for i in range(len(mprec) - 1)[::-1]:
        mprec[i] = max(mprec[i], mprec[i + 1])
    idx = np.where(mrec[1::] != mrec[0:-1])[0] + 1
    return np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx])


def ap_detection(gt_rows, pred_rows, thresholds):
    """gt_rows [(video, s, e)], pred_rows [(video, s, e, score)] of ONE class -> AP (K,)."""
    thresholds = np.asarray(thresholds)
    npos = float(len(gt_rows))
    lock_gt = np.full((len(thresholds), len(gt_rows)), -1)
    gt_by_video: dict[str, list[int]] = {}
    for i, row in enumerate(gt_rows):
        gt_by_video.setdefault(row[0], []).append(i)
    order = sorted(range(len(pred_rows)), key=lambda i: -pred_rows[i][3])  # stable
    tp = np.zeros((len(thresholds), len(order)))
    fp = np.zeros((len(thresholds), len(order)))
    for idx, p in enumerate(order):
        video, s, e, _ = pred_rows[p]
        if video not in gt_by_video:
            fp[:, idx] = 1
            continue
        gidx = gt_by_video[video]
        this_gt = np.array([[gt_rows[g][1], gt_rows[g][2]] for g in gidx])
        tiou_arr = segment_iou(np.array([s, e]), this_gt)
        tiou_sorted_idx = sorted(range(len(gidx)), key=lambda j: -np.nan_to_num(tiou_arr[j], nan=-1.0))
        for tidx, thr in enumerate(thresholds):
            for jdx in tiou_sorted_idx:
                if not tiou_arr[jdx] >= thr:
                    fp[tidx, idx] = 1
                    break
                if lock_gt[tidx, gidx[jdx]] >= 0:
                    continue
                tp[tidx, idx] = 1
                lock_gt[tidx, gidx[jdx]] = idx
                break
            if fp[tidx, idx] == 0 and tp[tidx, idx] == 0:
                fp[tidx, idx] = 1
    ap = np.zeros(len(thresholds))
    if len(order) == 0:
        return ap
    tp_cumsum = np.cumsum(tp, axis=1).astype(float)
    fp_cumsum = np.cumsum(fp, axis=1).astype(float)
    recall = tp_cumsum / npos
    precision = tp_cumsum / (tp_cumsum + fp_cumsum)
    for tidx in range(len(thresholds)):
        ap[tidx] = interpolated_prec_rec(precision[tidx, :], recall[tidx, :])
    return ap


def reference_ap(gt_rows, pred_rows, thresholds):
    """All classes: gt_rows [(video, s, e, label)], pred_rows [(video, s, e, label, score)].
    -> (classes sorted, AP (K, C)). Predictions with labels absent from the ground truth are ignored."""
    classes = sorted({r[3] for r in gt_rows})
    ap = np.zeros((len(thresholds), len(classes)))
    for c, label in enumerate(classes):
        g = [(r[0], r[1], r[2]) for r in gt_rows if r[3] == label]
        p = [(r[0], r[1], r[2], r[4]) for r in pred_rows if r[3] == label]
        ap[:, c] = ap_detection(g, p, thresholds)
    return classes, ap


def to_json(gt_rows, pred_rows, subset="test"):
    """Flat rows -> (ActivityNet ground-truth dict, results dict, pred_rows in the results' order).

    The results dict groups predictions by video, which changes the input order that breaks score
    ties: compare against `reference_ap(gt_rows, <the returned rows>, ...)`."""
    database: dict = {}
    for v, s, e, lab in gt_rows:
        database.setdefault(v, {"subset": subset, "annotations": []})["annotations"].append(
            {"label": lab, "segment": [s, e]}
        )
    results: dict = {}
    for v, s, e, lab, sc in pred_rows:
        results.setdefault(v, []).append({"label": lab, "segment": [s, e], "score": sc})
    ordered = [(v, *item["segment"], item["label"], item["score"]) for v, items in results.items() for item in items]
    return {"database": database}, {"results": results}, ordered


def official_structure_ap(gt_rows, pred_rows, thresholds):
    """The official code path itself, pandas included (ANETdetection: DataFrames of video-id,
    t-start, t-end, label, score; groupby; per class `iterrows` over predictions, `get_group` of the
    video, `reset_index`, `.loc` look-ups of the locked ground truth), with the tie rules above.
    Slow on purpose of fidelity: it is what users run today. Bench only."""
    import pandas as pd

    thresholds = np.asarray(thresholds)
    ground_truth = pd.DataFrame(gt_rows, columns=["video-id", "t-start", "t-end", "label"])
    prediction = pd.DataFrame(pred_rows, columns=["video-id", "t-start", "t-end", "label", "score"])
    classes = sorted(ground_truth["label"].unique())
    gt_by_label = ground_truth.groupby("label")
    pred_by_label = prediction.groupby("label")
    ap = np.zeros((len(thresholds), len(classes)))
    for c, label in enumerate(classes):
        gt = gt_by_label.get_group(label).reset_index(drop=True)
        try:
            pred = pred_by_label.get_group(label).reset_index(drop=True)
        except KeyError:
            continue
        npos = float(len(gt))
        lock_gt = np.ones((len(thresholds), len(gt))) * -1
        sort_idx = np.argsort(-pred["score"].values, kind="stable")
        pred = pred.loc[sort_idx].reset_index(drop=True)
        tp = np.zeros((len(thresholds), len(pred)))
        fp = np.zeros((len(thresholds), len(pred)))
        gt_gbvn = gt.groupby("video-id")
        for idx, this_pred in pred.iterrows():
            try:
                gt_videoid = gt_gbvn.get_group(this_pred["video-id"])
            except KeyError:
                fp[:, idx] = 1
                continue
            this_gt = gt_videoid.reset_index()
            tiou_arr = segment_iou(this_pred[["t-start", "t-end"]].values, this_gt[["t-start", "t-end"]].values)
            tiou_sorted_idx = np.lexsort((np.arange(len(tiou_arr)), -np.nan_to_num(tiou_arr, nan=-1.0)))
            for tidx, tiou_thr in enumerate(thresholds):
                for jdx in tiou_sorted_idx:
                    if not tiou_arr[jdx] >= tiou_thr:
                        fp[tidx, idx] = 1
                        break
                    if lock_gt[tidx, this_gt.loc[jdx]["index"]] >= 0:
                        continue
                    tp[tidx, idx] = 1
                    lock_gt[tidx, this_gt.loc[jdx]["index"]] = idx
                    break
                if fp[tidx, idx] == 0 and tp[tidx, idx] == 0:
                    fp[tidx, idx] = 1
        tp_cumsum = np.cumsum(tp, axis=1).astype(float)
        fp_cumsum = np.cumsum(fp, axis=1).astype(float)
        recall = tp_cumsum / npos
        precision = tp_cumsum / (tp_cumsum + fp_cumsum)
        for tidx in range(len(thresholds)):
            ap[tidx, c] = interpolated_prec_rec(precision[tidx, :], recall[tidx, :])
    return classes, ap
