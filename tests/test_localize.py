"""Localisation: Eq. 9 fusion, Eq. 5-style threshold, grouping, scoring, gating, NMS, seconds."""

import dataclasses

import numpy as np
import pytest
import torch

from emmil.errors import ConfigError, DataError
from emmil.localize import (
    LocalizeParams,
    gate_classes,
    group_clips,
    localize_video,
    nms,
    proposal_scores,
    results_json,
    to_seconds,
)


def _runs(mask, min_clips=1):
    return group_clips(np.array(mask, dtype=bool), min_clips).tolist()


def test_grouping_edge_cases():
    assert _runs([0, 1, 1, 0, 1]) == [[1, 3], [4, 5]]  # the run reaching the last clip is kept
    assert _runs([0, 1, 0]) == [[1, 2]]  # single clip
    assert _runs([1, 1, 1]) == [[0, 3]]  # all clips
    assert _runs([0, 0, 0]) == [] and _runs([]) == []  # none
    assert _runs([1, 0, 1, 1, 0, 1, 1, 1], min_clips=2) == [[2, 4], [5, 8]]


def test_lambda_takes_effect():
    # Q = [0,0,1,1,0,0], P = [1,1,0,0,0,0] (one class, both streams equal), gamma = 0.
    # lam .8: L = [.2,.2,.8,.8,0,0], threshold = mean 1/3 -> clips 2,3 -> [2,4) = [1.28 s, 2.56 s).
    # lam .2: L = [.8,.8,.2,.2,0,0], threshold 1/3 -> clips 0,1 -> [0,2).
    q = np.array([0, 0, 1, 1, 0, 0.0])
    p = np.array([[1], [1], [0], [0], [0], [0.0]])
    vs = np.array([1.0])
    hi = localize_video(q, q, p, p, vs, params=LocalizeParams(lam=0.8, gamma=0.0))
    lo = localize_video(q, q, p, p, vs, params=LocalizeParams(lam=0.2, gamma=0.0))
    assert [(x.start_clip, x.end_clip) for x in hi] == [(2, 4)]
    assert [(x.start_clip, x.end_clip) for x in lo] == [(0, 2)]
    assert (hi[0].start, hi[0].end) == pytest.approx((1.28, 2.56))


def test_rgb_weight_fuses_streams():
    # RGB Q peaks at clip 0, flow Q at clip 3; lam = 1 so L = Q. rgb_weight 1 -> [0,1); 0 -> [3,4).
    q_rgb, q_flow = np.array([1, 0, 0, 0.0]), np.array([0, 0, 0, 1.0])
    p = np.zeros((4, 1))
    for w, run in ((1.0, (0, 1)), (0.0, (3, 4))):
        (x,) = localize_video(q_rgb, q_flow, p, p, np.ones(1), params=LocalizeParams(lam=1.0, rgb_weight=w, gamma=0.0))
        assert (x.start_clip, x.end_clip) == run


def test_gating_keeps_classes_at_or_above_gate_else_top_class():
    assert gate_classes(np.array([0.1, 0.5, 0.15]), 0.15).tolist() == [1, 2]
    assert gate_classes(np.array([0.1, 0.05, 0.12]), 0.15).tolist() == [2]


def test_proposal_scores_are_real_and_differ():
    L = np.array([0.0, 0.0, 1.0, 1.0, 0.5, 0.5, 0.9, 0.0])
    runs = np.array([[2, 4], [6, 7]])
    # mean: inner means 1 and .9, times the video score .5 -> .5, .45
    np.testing.assert_allclose(proposal_scores(L, runs, "mean", 0.25, 0.5), [0.5, 0.45])
    # outer-inner, margin max(1, round(.25 * len)) = 1 clip each side:
    # [2,4): inner 1, outer (L1 + L4)/2 = .25 -> .75 ; [6,7): inner .9, outer (L5 + L7)/2 = .25 -> .65.  x .5
    np.testing.assert_allclose(proposal_scores(L, runs, "outer-inner", 0.25, 0.5), [0.375, 0.325])
    # the whole video: no outer clip -> outer term 0
    np.testing.assert_allclose(proposal_scores(L, np.array([[0, 8]]), "outer-inner", 0.25, 1.0), [L.mean()])


def test_localize_video_scores_differ_and_use_video_score():
    q = np.array([0, 1, 1, 0, 0, 0.6, 0, 0.0])
    p = np.zeros((8, 2))
    props = localize_video(q, q, p, p, np.array([0.9, 0.3]), params=LocalizeParams(lam=1.0, gamma=0.1, score="mean"))
    # threshold: mean .325 + .1 * 1 = .425 -> runs [1,3) and [5,6) for both gated classes (.9, .3 >= .15)
    assert [(x.class_index, x.start_clip, x.end_clip) for x in props] == [(0, 1, 3), (0, 5, 6), (1, 1, 3), (1, 5, 6)]
    np.testing.assert_allclose([x.score for x in props], [0.9, 0.54, 0.3, 0.18])


def test_nms_per_class():
    runs = np.array([[0, 10], [1, 10], [20, 25]])
    scores = np.array([0.9, 0.8, 0.7])
    # tIoU([0,10],[1,10]) = 9/10 > .5 -> the second is suppressed; [20,25] does not overlap.
    assert nms(runs, scores, 0.5).tolist() == [0, 2]
    assert nms(runs, scores, 0.95).tolist() == [0, 1, 2]
    assert nms(runs, scores, None).tolist() == [0, 1, 2] and nms(runs, scores, 0).tolist() == [0, 1, 2]


def test_seconds_conversion_clips_end_to_duration():
    runs = np.array([[0, 5], [3, 10]])
    # 0.64 s per clip: [0, 3.2], [1.92, 6.4]; the duration 5.0 clips the second end.
    np.testing.assert_allclose(to_seconds(runs, 0.64, 5.0), [[0.0, 3.2], [1.92, 5.0]])
    q = np.array([0, 0, 1.0])
    (x,) = localize_video(q, q, np.zeros((3, 1)), np.zeros((3, 1)), np.ones(1),
                          params=LocalizeParams(lam=1.0), clip_seconds=1.0, duration=2.5)
    assert (x.start, x.end) == (2.0, 2.5)


def test_results_json_and_torch_inputs():
    q = torch.tensor([0.0, 1.0, 0.0])
    p = torch.zeros(3, 2)
    props = localize_video(q, q, p, p, torch.tensor([0.2, 0.9]), params=LocalizeParams(lam=1.0, gate=0.5))
    out = results_json({"vid": props}, ["A", "B"])
    assert out == {"results": {"vid": [{"label": "B", "segment": [0.64, 1.28], "score": props[0].score}]}}
    assert props[0].score > 0


def test_bad_inputs_and_params():
    with pytest.raises(DataError, match="RGB scores .* flow scores"):
        localize_video(np.zeros(4), np.zeros(5), np.zeros((4, 1)), np.zeros((4, 1)), np.ones(1), params=LocalizeParams())
    with pytest.raises(DataError, match="video_scores"):
        localize_video(np.zeros(4), np.zeros(4), np.zeros((4, 2)), np.zeros((4, 2)), np.ones(3), params=LocalizeParams())
    with pytest.raises(ConfigError, match="localize.lam"):
        LocalizeParams(lam=1.5)
    with pytest.raises(ConfigError, match="localize.score"):
        LocalizeParams(score="max")
    assert [f.name for f in dataclasses.fields(LocalizeParams)] == [
        "lam", "rgb_weight", "gamma", "gate", "score", "nms_iou", "min_clips", "outer_margin"]
