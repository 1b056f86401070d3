"""Detection mAP, classification mAP and coverage on hand-made cases (expected numbers in comments),
plus equality with a per-prediction loop reference of the official algorithm on random cases."""

import warnings
from pathlib import Path

import numpy as np
import pytest
from anet_reference import reference_ap, to_json

import emmil
from emmil.errors import DataError
from emmil.evaluate import (
    TIOU,
    EvaluationWarning,
    classification_map,
    detection_map,
    parse_tiou,
    read_ambiguous,
    segment_coverage,
)

ANNOTATIONS = Path(emmil.__file__).parent / "data" / "annotations"


def gt_json(*rows, subset="test"):
    """rows: (video, start, end, label)."""
    return to_json(list(rows), [], subset)[0]


def pred_json(*rows):
    """rows: (video, start, end, label, score), kept in this order inside each video."""
    return to_json([], list(rows))[1]


def test_perfect_predictions_give_one_at_every_threshold():
    gt = gt_json(("v1", 0.0, 10.0, "A"), ("v1", 20.0, 30.0, "B"), ("v2", 5.0, 6.0, "A"))
    pred = pred_json(("v1", 0.0, 10.0, "A", 0.9), ("v1", 20.0, 30.0, "B", 0.8), ("v2", 5.0, 6.0, "A", 0.1))
    result = detection_map(gt, pred, TIOU["anet12"])
    np.testing.assert_array_equal(result.mAP, np.ones(10))
    assert result.average_mAP == 1.0
    assert result.counts["predictions_used"] == 3 and result.counts["classes"] == 2


def test_duplicate_ranked_before_a_true_positive_lowers_precision():
    # GT A: [0,10], [20,30]. Ranked: [0,10] TP, duplicate [1,10] (tIoU 0.9 with a locked GT) FP, [20,30] TP.
    # precision 1, 1/2, 2/3; recall 1/2, 1/2, 1. Interpolated envelope: 1, 2/3, 2/3.
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    gt = gt_json(("v1", 0.0, 10.0, "A"), ("v1", 20.0, 30.0, "A"))
    pred = pred_json(("v1", 0.0, 10.0, "A", 0.9), ("v1", 1.0, 10.0, "A", 0.8), ("v1", 20.0, 30.0, "A", 0.7))
    result = detection_map(gt, pred, [0.5])
    assert result.mAP[0] == pytest.approx(5 / 6, abs=1e-15)


def test_greedy_match_takes_highest_tiou_unmatched_ground_truth_in_score_order():
    # GT g1 [0,10], g2 [5,15]. p1 [4,14] (score .9) has tIoU 6/14 = .4286 with g1 and 9/11 = .818 with g2:
    # takes g2. p2 [5,15] (score .8, listed first in the input) has tIoU 1 with g2 (taken) and
    # 5/15 = .333 with g1. At 0.3 p2 falls back to g1: both TP -> AP 1. At 0.5 p2 is FP:
    # precision 1, 1/2 at recall 1/2, 1/2 -> AP 1/2.
    gt = gt_json(("v1", 0.0, 10.0, "A"), ("v1", 5.0, 15.0, "A"))
    pred = pred_json(("v1", 5.0, 15.0, "A", 0.8), ("v1", 4.0, 14.0, "A", 0.9))
    result = detection_map(gt, pred, [0.3, 0.5])
    np.testing.assert_allclose(result.mAP, [1.0, 0.5], rtol=0, atol=1e-15)


def test_tiou_exactly_at_threshold_matches():
    # [0,5] vs [0,10]: tIoU = 5/10 = 0.5 exactly; 0.5 is TIOU["anet12"][0] (linspace, exact).
    gt = gt_json(("v1", 0.0, 10.0, "A"))
    pred = pred_json(("v1", 0.0, 5.0, "A", 1.0))
    result = detection_map(gt, pred, TIOU["anet12"][:2])
    np.testing.assert_array_equal(result.mAP, [1.0, 0.0])  # 0.55 > 0.5: no match


def test_tied_scores_keep_input_order():
    # Same score: input order decides. [FP, TP] -> precision 0, 1/2 at recall 0, 1 -> AP 1/2; [TP, FP] -> 1.
    gt = gt_json(("v1", 0.0, 10.0, "A"))
    fp_first = pred_json(("v1", 50.0, 60.0, "A", 0.5), ("v1", 0.0, 10.0, "A", 0.5))
    tp_first = pred_json(("v1", 0.0, 10.0, "A", 0.5), ("v1", 50.0, 60.0, "A", 0.5))
    assert detection_map(gt, fp_first, [0.5]).mAP[0] == 0.5
    assert detection_map(gt, tp_first, [0.5]).mAP[0] == 1.0


def test_empty_predictions_and_class_without_predictions():
    gt = gt_json(("v1", 0.0, 10.0, "A"), ("v1", 20.0, 30.0, "B"))
    assert detection_map(gt, {"results": {}}, [0.5]).mAP[0] == 0.0
    # A perfect, B has no prediction: AP(B) = 0 counts, mAP = (1 + 0) / 2.
    result = detection_map(gt, pred_json(("v1", 0.0, 10.0, "A", 1.0)), [0.5])
    assert result.mAP[0] == 0.5
    assert result.per_class_AP["B"][0] == 0.0


def test_ambiguous_overlapping_predictions_are_removed_and_protocol_recorded():
    # Without removal: [20,25] (score .9) is a FP ranked first: precision 0, 1/2 -> AP 1/2.
    # It overlaps Ambiguous [22,30]: removed -> AP 1. [30,35] only touches it (intersection 0): kept, FP last.
    gt = gt_json(("v1", 0.0, 10.0, "A"))
    pred = pred_json(("v1", 20.0, 25.0, "A", 0.9), ("v1", 0.0, 10.0, "A", 0.5), ("v1", 30.0, 35.0, "A", 0.1))
    kept = detection_map(gt, pred, TIOU["thumos14"])
    removed = detection_map(gt, pred, TIOU["thumos14"], ambiguous={"v1": [(22.0, 30.0)], "v9": [(0.0, 1.0)]})
    assert kept.mAP[0] == 0.5 and removed.mAP[0] == 1.0
    assert removed.counts["predictions_ambiguous_removed"] == 1
    assert removed.protocol == "ActivityNet detection mAP, tIoU 0.10:0.70, ambiguous=removed"
    assert kept.protocol.endswith("ambiguous=kept")


def test_unknown_label_ignored_unknown_video_counted_and_subset_filter():
    gt = {"database": {
        "v1": {"subset": "test", "annotations": [{"label": "A", "segment": [0, 10]}]},
        "t1": {"subset": "train", "annotations": [{"label": "C", "segment": [0, 10]}]},
    }}
    # Unknown label "Z" is ignored; the prediction for t1 (other subset) is a false positive ranked first:
    # precision 0, 1/2 -> AP 1/2. With unknown_videos="drop": AP 1. Class C (train only) is not a class.
    pred = pred_json(("v1", 0.0, 10.0, "Z", 1.0), ("t1", 0.0, 10.0, "A", 0.9), ("v1", 0.0, 10.0, "A", 0.5))
    with pytest.warns(EvaluationWarning) as record:
        result = detection_map(gt, pred, [0.5], subset="test")
    assert {"predictions_unknown_label": 1, "predictions_unknown_video": 1, "classes": 1}.items() <= result.counts.items()
    assert result.mAP[0] == 0.5
    assert any("'Z'" in str(w.message) for w in record) and any("t1" in str(w.message) for w in record)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationWarning)
        assert detection_map(gt, pred, [0.5], subset="test", unknown_videos="drop").mAP[0] == 1.0


@pytest.mark.parametrize(
    "item, fragment",
    [
        ({"label": "A", "segment": [0, 1], "score": float("nan")}, "field 'score'"),
        ({"label": "A", "segment": [5, 1], "score": 1.0}, "end < start"),
        ({"label": "A", "score": 1.0}, "missing field 'segment'"),
        ({"segment": [0, 1], "score": 1.0}, "missing field 'label'"),
        ({"label": "A", "segment": [0, 1]}, "missing field 'score'"),
        ({"label": "A", "segment": [0, "x"], "score": 1.0}, "field 'segment'"),
    ],
)
def test_malformed_predictions_name_video_and_field(item, fragment):
    gt = gt_json(("v1", 0.0, 10.0, "A"))
    good = {"label": "A", "segment": [0, 1], "score": 1.0}
    pred = {"results": {"v1": [good], "bad_video": [good, item]}}
    with pytest.raises(DataError, match=fragment) as info:
        detection_map(gt, pred, [0.5], predictions_name="p.json")
    assert "p.json" in str(info.value) and "bad_video" in str(info.value) and "prediction 1" in str(info.value)


def test_unknown_subset_and_bad_ground_truth_raise():
    gt = gt_json(("v1", 0.0, 10.0, "A"))
    with pytest.raises(DataError, match="unknown subset 'validation'"):
        detection_map(gt, {"results": {}}, [0.5], subset="validation")
    bad = {"database": {"v1": {"subset": "test", "annotations": [{"label": "A", "segment": [3, 2]}]}}}
    with pytest.raises(DataError, match="'v1' annotation 0.*end < start"):
        detection_map(bad, {"results": {}}, [0.5])


def _random_case(seed):
    rng = np.random.default_rng(seed)
    coarse = seed % 2 == 0  # integer times and scores: many exact ties in tIoU and score
    gt, pred = [], []
    for _ in range(rng.integers(1, 25)):
        s = float(rng.integers(0, 20)) if coarse else float(rng.uniform(0, 20))
        gt.append((f"v{rng.integers(4)}", s, s + float(rng.integers(1, 8)), f"c{rng.integers(3)}"))
    for _ in range(rng.integers(0, 80)):
        s = float(rng.integers(0, 20)) if coarse else float(rng.uniform(0, 20))
        score = float(rng.integers(0, 4)) if coarse else float(rng.random())
        pred.append((f"v{rng.integers(5)}", s, s + float(rng.integers(0, 8)), f"c{rng.integers(3)}", score))
    return gt, pred


def test_vectorised_equals_reference_loop_on_random_cases():
    worst = 0.0
    for seed in range(60):
        gt_rows, pred_rows = _random_case(seed)
        gt, pred, pred_rows = to_json(gt_rows, pred_rows)
        thr = TIOU["thumos14"] if seed % 3 else TIOU["anet12"]
        if seed % 5 == 0:
            thr = np.array([0.0, 0.3])  # tIoU 0 matches non-overlapping ground truth of the video
        classes, expected = reference_ap(gt_rows, pred_rows, thr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EvaluationWarning)
            result = detection_map(gt, pred, thr)
        assert list(result.per_class_AP) == classes
        got = np.stack([result.per_class_AP[c] for c in classes], axis=1)
        worst = max(worst, float(np.abs(got - expected).max()))
        np.testing.assert_allclose(result.mAP, expected.mean(axis=1), rtol=0, atol=1e-12)
    assert worst <= 1e-12


def test_classification_map_interpolated_over_classes_with_positives():
    # class 0 ranked .9(+) .8(-) .2(+): precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP 1/2 + 1/2*2/3 = 5/6.
    # class 1 ranked .7(+) .3(-) .1(-): AP 1. class 2 has no positive: excluded. mAP = (5/6 + 1)/2 = 11/12.
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.7, 0.5], [0.2, 0.3, 0.5]])
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])
    assert classification_map(scores, labels) == pytest.approx(11 / 12, abs=1e-15)
    with pytest.raises(DataError):
        classification_map(scores[:, :2], labels)


def test_segment_coverage_best_single_same_class_prediction():
    # A [0,10]: predictions A [5,20] covers 5/10, A [0,3] covers 3/10 -> 0.5 (best single one);
    # B [0,4]: the only B prediction [10,12] covers 0; the A prediction [0,3] does not count -> 0.
    # Mean over the two segments: 0.25.
    gt = gt_json(("v1", 0.0, 10.0, "A"), ("v1", 0.0, 4.0, "B"))
    pred = pred_json(("v1", 5.0, 20.0, "A", 0.1), ("v1", 0.0, 3.0, "A", 0.9), ("v1", 10.0, 12.0, "B", 0.5))
    assert segment_coverage(gt, pred) == 0.25


def test_tiou_grids_and_shipped_ambiguous_file():
    np.testing.assert_array_equal(parse_tiou("0.1:0.7:0.1"), TIOU["thumos14"])
    np.testing.assert_array_equal(parse_tiou("0.5:0.95:0.05"), TIOU["anet12"])
    np.testing.assert_array_equal(parse_tiou("0.5,0.75"), [0.5, 0.75])
    with pytest.raises(DataError, match="--tiou"):
        parse_tiou("0.1:x")
    amb = read_ambiguous(ANNOTATIONS / "Thumos14reduced-Annotations" / "Ambiguous_test.txt")
    assert amb["video_test_0000278"][:2] == ((0.0, 1.4), (95.7, 97.2))


def test_vectorised_equals_reference_on_a_crowded_video():
    # One video, one class, 40 ground-truth segments and 400 jittered predictions: long greedy chains
    # inside shared components, many steps.
    rng = np.random.default_rng(7)
    starts = np.sort(rng.uniform(0, 200, 40))
    gt_rows = [("v", float(s), float(s + rng.uniform(1, 10)), "A") for s in starts]
    pred_rows = []
    for _ in range(400):
        _, s, e, _ = gt_rows[rng.integers(40)]
        a, b = sorted((s + rng.normal(0, 2), e + rng.normal(0, 2)))
        pred_rows.append(("v", round(a, 1), round(b, 1), "A", round(float(rng.random()), 2)))
    gt, pred, pred_rows = to_json(gt_rows, pred_rows)
    _, expected = reference_ap(gt_rows, pred_rows, TIOU["anet12"])
    got = detection_map(gt, pred, TIOU["anet12"]).per_class_AP["A"]
    assert 0.05 < got[0] < 0.95  # a non-trivial curve
    assert np.abs(got - expected[:, 0]).max() <= 1e-12


def test_no_ground_truth_segment_gives_nan_with_a_warning():
    gt = {"database": {"v1": {"subset": "test", "annotations": []}}}
    with pytest.warns(EvaluationWarning, match="no ground-truth segment"):
        assert np.isnan(detection_map(gt, {"results": {}}, [0.5]).mAP).all()
    with pytest.warns(EvaluationWarning, match="no ground-truth segment"):
        assert np.isnan(segment_coverage(gt, {"results": {}}))
