"""Localisation: Eq. 9 fusion, Eq. 5-style threshold, grouping, scoring, gating, NMS, seconds."""

import dataclasses

import numpy as np
import pytest
import torch

from emmil.errors import ConfigError, DataError
from emmil.localize import (
    LocalizeParams,
    class_thresholds,
    gate_classes,
    group_clips,
    localize_video,
    multi_threshold_runs,
    nms,
    normalise_minmax,
    parse_thresholds,
    proposal_scores,
    results_json,
    thresholds_ok,
    to_seconds,
    whole_video_proposals,
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
        "lam", "rgb_weight", "gamma", "gate", "score", "nms_iou", "thresholds", "min_clips", "outer_margin"]


# ---------------------------------------------------------------------------------------------
# localize.thresholds: the W-TALC family's multi-threshold proposals; whole-video floor


def _one_class(L, **params):
    """localize_video on a single class whose fused L equals `L` (lam 1: L = Q), video score 1."""
    q = np.array(L, dtype=np.float64)
    p = np.zeros((len(q), 1))
    return localize_video(q, q, p, p, np.ones(1), params=LocalizeParams(lam=1.0, **params), clip_seconds=1.0)


def _triples(props):
    return [(x.start_clip, x.end_clip, round(x.score, 6)) for x in props]


# L = [0, .2, .9, .9, .3, 0, .6, .6, 0]; min 0, max .9 -> N = L / .9 = [0, .222, 1, 1, .333, 0, .667, .667, 0]
#   N > .25: clips 2,3,4 and 6,7 -> [2,5), [6,8)
#   N > .5 : clips 2,3   and 6,7 -> [2,4), [6,8)
# pooled, identical [6,8) kept once -> [2,4), [2,5), [6,8)
# "mean" scores on the un-normalised L (video score 1): [2,4) .9 ; [2,5) (.9 + .9 + .3)/3 = .7 ; [6,8) .6
HAND_L = [0, 0.2, 0.9, 0.9, 0.3, 0, 0.6, 0.6, 0]


def test_multi_threshold_runs_pool_levels_and_deduplicate():
    assert multi_threshold_runs(np.array(HAND_L), (0.25, 0.5)).tolist() == [[2, 4], [2, 5], [6, 8]]
    assert multi_threshold_runs(np.array(HAND_L), (0.5,)).tolist() == [[2, 4], [6, 8]]
    # min_clips 3 keeps only [2,5)
    assert multi_threshold_runs(np.array(HAND_L), (0.25, 0.5), min_clips=3).tolist() == [[2, 5]]
    # level 1: nothing is strictly above the maximum; level 0: every clip above the minimum
    assert multi_threshold_runs(np.array(HAND_L), (1.0,)).tolist() == []
    assert multi_threshold_runs(np.array(HAND_L), (0.0,)).tolist() == [[1, 5], [6, 8]]
    # constant or empty L: no proposals; no levels: none either
    assert multi_threshold_runs(np.full(5, 0.7), (0.1, 0.5)).shape == (0, 2)
    assert multi_threshold_runs(np.zeros(0), (0.5,)).shape == (0, 2)
    assert multi_threshold_runs(np.array(HAND_L), ()).shape == (0, 2)
    np.testing.assert_allclose(normalise_minmax(np.array([1.0, 3.0, 2.0])), [0.0, 1.0, 0.5])
    assert normalise_minmax(np.full(3, 2.0)) is None


def test_multi_threshold_matches_a_loop_over_levels():
    # reference: group_clips at every level, union of the (start, end) pairs
    rng = np.random.default_rng(0)
    for _ in range(50):
        L = np.round(rng.random(int(rng.integers(1, 40))), 1)
        levels = parse_thresholds("0.1:0.9:0.1")
        lo, hi = L.min(), L.max()
        ref = set()
        if hi > lo:
            for theta in levels:
                ref |= {tuple(r) for r in group_clips((L - lo) / (hi - lo) > theta, 2).tolist()}
        assert multi_threshold_runs(L, levels, 2).tolist() == sorted(map(list, ref))


def test_localize_video_multi_threshold_scores_and_nms():
    # without NMS: the three distinct runs, best "mean" score first (values in the comment above)
    assert _triples(_one_class(HAND_L, thresholds="0.25,0.5", score="mean")) == [(2, 4, 0.9), (2, 5, 0.7), (6, 8, 0.6)]
    # NMS .5: tIoU([2,4), [2,5)) = 2/3 > .5 -> [2,5) is suppressed by the better [2,4); [6,8) is disjoint
    assert _triples(_one_class(HAND_L, thresholds="0.25,0.5", score="mean", nms_iou=0.5)) == [(2, 4, 0.9), (6, 8, 0.6)]
    # NMS .7: 2/3 <= .7 -> nothing suppressed
    assert len(_one_class(HAND_L, thresholds="0.25,0.5", score="mean", nms_iou=0.7)) == 3
    # outer-inner on the un-normalised L, margin max(1, round(.25 * len)) = 1 clip each side:
    # [2,4): .9 - (L1 + L4)/2 = .9 - .25 = .65 ; [2,5): .7 - (L1 + L5)/2 = .6 ; [6,8): .6 - (L5 + L8)/2 = .6
    props = _one_class(HAND_L, thresholds="0.25,0.5", score="outer-inner")
    assert [(x.start_clip, x.end_clip) for x in props][0] == (2, 4)
    assert sorted(_triples(props)) == [(2, 4, 0.65), (2, 5, 0.6), (6, 8, 0.6)]
    # seconds (1 s per clip here), a run reaching the last clip is kept: [7,9) = [7 s, 9 s)
    (x,) = _one_class([0, 0, 0, 0, 0, 0, 0, 0.5, 1.0], thresholds="0.25")
    assert (x.start_clip, x.end_clip, x.start, x.end) == (7, 9, 7.0, 9.0)
    # a constant L cannot be normalised: no proposals in this mode
    assert _one_class([0.4] * 6, thresholds="0.1:0.9:0.1") == []


def test_lambda_takes_effect_in_multi_threshold_mode():
    # Q = [0,0,1,1,0,0], P = [1,1,0,0,0,0], levels .1 and .5, "mean", video score 1.
    # lam .8: L = [.2,.2,.8,.8,0,0], N = [.25,.25,1,1,0,0]: > .5 -> [2,4) (score .8); > .1 -> [0,4) (score .5)
    # lam .2: L = [.8,.8,.2,.2,0,0], N = [1,1,.25,.25,0,0]: > .5 -> [0,2) (score .8); > .1 -> [0,4) (score .5)
    q = np.array([0, 0, 1, 1, 0, 0.0])
    p = np.array([[1], [1], [0], [0], [0], [0.0]])
    vs = np.array([1.0])
    hi = localize_video(q, q, p, p, vs, params=LocalizeParams(lam=0.8, thresholds="0.1,0.5", score="mean"))
    lo = localize_video(q, q, p, p, vs, params=LocalizeParams(lam=0.2, thresholds="0.1,0.5", score="mean"))
    assert _triples(hi) == [(2, 4, 0.8), (0, 4, 0.5)]
    assert _triples(lo) == [(0, 2, 0.8), (0, 4, 0.5)]


def test_multi_threshold_gates_classes_and_scales_by_video_score():
    # two classes with the same L (lam 1), video scores .9 / .1 / .5, gate .15 -> classes 0 and 2
    q = np.array(HAND_L)
    p = np.zeros((9, 3))
    props = localize_video(q, q, p, p, np.array([0.9, 0.1, 0.5]),
                           params=LocalizeParams(lam=1.0, thresholds="0.5", score="mean"))
    # class 0: [2,4) .9*.9 = .81, [6,8) .6*.9 = .54 ; class 2: .45, .3
    assert _triples(props) == [(2, 4, 0.81), (6, 8, 0.54), (2, 4, 0.45), (6, 8, 0.3)]
    assert [x.class_index for x in props] == [0, 0, 2, 2]


def test_default_thresholds_is_the_eq5_path_unchanged():
    # "" must give exactly what the Eq. 5 threshold + group_clips + scores + NMS give (the code
    # before multi-threshold proposals existed), on random scores with several classes
    rng = np.random.default_rng(1)
    for _ in range(20):
        T, C = int(rng.integers(1, 60)), 4
        q1, q2, p1, p2 = rng.random(T), rng.random(T), rng.random((T, C)), rng.random((T, C))
        vs = rng.random(C)
        params = LocalizeParams(lam=0.6, gamma=0.1, gate=0.3, nms_iou=0.4)
        assert params.thresholds == ""
        got = localize_video(q1, q2, p1, p2, vs, params=params, duration=T * 0.5)
        q, p = 0.5 * q1 + 0.5 * q2, 0.5 * p1 + 0.5 * p2
        L = 0.6 * q[:, None] + 0.4 * p
        want = []
        classes = gate_classes(vs, 0.3)
        for c, thr in zip(classes, class_thresholds(L[:, classes], 0.1)):
            runs = group_clips(L[:, c] > thr)
            if len(runs):
                sc = proposal_scores(L[:, c], runs, "outer-inner", 0.25, vs[c])
                keep = nms(runs, sc, 0.4)
                sec = to_seconds(runs[keep], 0.64, T * 0.5)
                want += [(int(c), int(a), int(b), float(x), float(y), float(z))
                         for (a, b), (x, y), z in zip(runs[keep], sec, sc[keep])]
        assert [dataclasses.astuple(x) for x in got] == want


@pytest.mark.parametrize("spec, levels", [
    ("", ()),
    ("   ", ()),
    ("0.5", (0.5,)),
    ("0.5, 0.1,0.25", (0.1, 0.25, 0.5)),  # sorted
    ("0.5,0.5", (0.5,)),  # duplicates once
    ("0,1", (0.0, 1.0)),  # both ends of [0, 1] allowed
    ("0.1:0.9:0.1", (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)),  # 0.1 + 8 * 0.1 = 0.9000000000000001: end kept
    ("0.1:0.5:0.2", (0.1, 0.3, 0.5)),
    ("0.2:0.3:0.5", (0.2,)),  # step past the end: the start alone
    ("0.3:0.3:0.1", (0.3,)),
    ("0.01:1:0.01", tuple(round(0.01 * k, 10) for k in range(1, 101))),  # exactly 100 values
])
def test_parse_thresholds_valid(spec, levels):
    assert parse_thresholds(spec) == pytest.approx(levels) and len(parse_thresholds(spec)) == len(levels)
    assert thresholds_ok(spec)


@pytest.mark.parametrize("spec, words", [
    ("x", "'x' is not a number"),
    ("0.1,,0.2", "'' is not a number"),
    ("nan", "not finite"),
    ("1.5", "1.5 is outside [0, 1]"),
    ("-0.1", "-0.1 is outside [0, 1]"),
    ("0:1.5:0.5", "1.5 is outside [0, 1]"),
    ("0:1", "exactly 'A:B:S'"),
    ("0:1:0.1,0.5", "exactly 'A:B:S'"),
    ("0:1:0", "step must be > 0"),
    ("0.9:0.1:0.1", "start 0.9 is above the end 0.1"),
    ("0:1:0.01", "more than 100 values"),  # 101 values
    ("0:1:1e-320", "more than 100 values"),  # (1 - 0) / step overflows to inf
    (",".join(["0.5"] * 101), "more than 100 values"),
])
def test_parse_thresholds_invalid_names_key_and_spec(spec, words):
    with pytest.raises(ConfigError) as err:
        parse_thresholds(spec)
    assert "localize.thresholds" in str(err.value) and words in str(err.value) and repr(spec) in str(err.value)
    assert not thresholds_ok(spec)
    with pytest.raises(ConfigError, match="localize.thresholds"):
        LocalizeParams(thresholds=spec)
    with pytest.raises(ConfigError, match="localize.thresholds"):
        parse_thresholds(0.5)  # not a string


def test_config_accepts_and_rejects_thresholds():
    from emmil.config import resolve_config

    cfg = resolve_config("thumos14", preset="quick", overrides={"localize.thresholds": "0.1:0.9:0.1"})
    assert cfg.localize.thresholds == "0.1:0.9:0.1" and resolve_config("thumos14").localize.thresholds == ""
    params = LocalizeParams(**{f.name: getattr(cfg.localize, f.name) for f in dataclasses.fields(LocalizeParams)})
    assert parse_thresholds(params.thresholds) == pytest.approx([0.1 * k for k in range(1, 10)])
    with pytest.raises(ConfigError, match="localize.thresholds.*'0.1:x:0.1'"):
        resolve_config("thumos14", overrides={"localize.thresholds": "0.1:x:0.1"})


def test_whole_video_proposals_gate_and_clip():
    # video scores .9 / .1 / .15, gate .15 -> classes 0 and 2, each [0, T) scored by its video score
    # 10 clips x .64 s = 6.4 s, the duration 6.0 s clips the end
    props = whole_video_proposals(np.array([0.9, 0.1, 0.15]), 10, gate=0.15, duration=6.0)
    assert [dataclasses.astuple(x) for x in props] == [(0, 0, 10, 0.0, 6.0, 0.9), (2, 0, 10, 0.0, 6.0, 0.15)]
    # no class passes the gate -> the top class alone; no duration -> 10 x 1 s = 10 s
    (x,) = whole_video_proposals(torch.tensor([0.1, 0.05]), 10, gate=0.5, clip_seconds=1.0)
    assert (x.class_index, x.start, x.end) == (0, 0.0, 10.0) and x.score == pytest.approx(0.1)
    # a video with no clips has no proposals; bad counts are rejected
    assert whole_video_proposals(np.array([0.9]), 0, gate=0.15) == []
    with pytest.raises(DataError, match="num_clips"):
        whole_video_proposals(np.array([0.9]), -1, gate=0.15)
    with pytest.raises(DataError, match="video_scores"):
        whole_video_proposals(np.ones((2, 2)), 3, gate=0.15)


def test_localize_experiment_loads_with_the_harness_loader():
    from harness.experiments import expand_trials, load_experiment

    from emmil.config import resolve_config

    exp = load_experiment("localize")
    names = [v.name for v in exp.variants]
    assert names == [f"{v}-{mode}" for v in ("no-pseudo-label", "joint", "full", "attention-mil")
                     for mode in ("eq5", "multi")]
    for trial in expand_trials(exp, 1):
        cfg = resolve_config(exp.dataset, preset="quick", seed=trial.seed, overrides=trial.overrides)
        variant, mode = trial.variant.rsplit("-", 1)
        assert cfg.variant == variant
        assert (cfg.localize.thresholds, cfg.localize.nms_iou) == (
            ("", 0.0) if mode == "eq5" else ("0.1:0.9:0.1", 0.5))
