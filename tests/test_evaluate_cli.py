"""`emmil eval` end to end, in process: the JSON output, the table, and exit code 2 on bad input."""

import json
from pathlib import Path

import emmil
from harness.cli import main

GT = Path(emmil.__file__).parent / "data" / "annotations" / "thumos14_actionformer.json"
AMBIGUOUS = GT.parent / "Thumos14reduced-Annotations" / "Ambiguous_test.txt"


def _write(path: Path, obj) -> str:
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return str(path)


def test_eval_writes_fractions_and_prints_percent(tmp_path, capsys):
    database = json.loads(GT.read_text())["database"]
    video = "video_test_0000004"
    # The video's own annotations as predictions (score 1): precision stays 1, so a class's AP is its
    # recall: (segments in this video) / (segments in all Test videos), at every tIoU. Other classes: 0.
    results = {video: [{"label": a["label"], "segment": a["segment"], "score": 1.0} for a in database[video]["annotations"]]}
    pred = _write(tmp_path / "pred.json", {"results": results})
    out = tmp_path / "out" / "m.json"
    code = main(["eval", str(GT), pred, "--dataset", "thumos14", "--subset", "Test", "--json", str(out)])
    assert code == 0
    m = json.loads(out.read_text())
    test_labels = [a["label"] for v in database.values() if v["subset"] == "Test" for a in v["annotations"]]
    here = [a["label"] for a in database[video]["annotations"]]
    expected = {c: here.count(c) / test_labels.count(c) for c in set(test_labels)}
    assert m["tiou"] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert set(m["per_class_AP"]) == set(expected) and len(expected) == 20
    for c, ap in m["per_class_AP"].items():
        assert ap == [expected[c]] * 7
    assert abs(m["average_mAP"] - sum(expected.values()) / 20) < 1e-15
    assert m["protocol"] == "ActivityNet detection mAP, tIoU 0.10:0.70, ambiguous=kept"
    assert m["counts"]["predictions_used"] == len(here)
    shown = capsys.readouterr().out
    assert f"{100 * m['average_mAP']:6.2f}" in shown.splitlines()[-2]


def test_eval_ambiguous_option_changes_protocol(tmp_path):
    pred = _write(tmp_path / "pred.json", {"results": {}})
    out = tmp_path / "m.json"
    assert main(["eval", str(GT), pred, "--tiou", "0.5", "--subset", "Test", "--ambiguous", str(AMBIGUOUS),
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["protocol"] == "ActivityNet detection mAP, tIoU 0.50, ambiguous=removed"


def test_eval_bad_inputs_exit_2_naming_file_video_field(tmp_path, capsys):
    gt = _write(tmp_path / "gt.json", {"database": {"v1": {"subset": "test", "annotations": [
        {"label": "A", "segment": [0, 10]}]}}})
    cases = {
        "broken.json": ('{"results": {', "broken.json: malformed JSON at line 1"),
        "nan.json": ('{"results": {"v1": [{"label": "A", "segment": [0, 1], "score": NaN}]}}',
                     "video 'v1' prediction 0 field 'score'"),
        "order.json": ({"results": {"v1": [{"label": "A", "segment": [3, 1], "score": 1}]}}, "end < start"),
    }
    for name, (content, fragment) in cases.items():
        pred = _write(tmp_path / name, content)
        assert main(["eval", gt, pred]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and fragment in err and name in err
    good = _write(tmp_path / "good.json", {"results": {}})
    assert main(["eval", gt, good, "--subset", "validation"]) == 2
    assert "unknown subset 'validation'" in capsys.readouterr().err


# ---- issue 14.8: subset case, videos without predictions, grid inference; issue 12: --per-class


def _one_video_predictions(tmp_path, video="video_test_0000004") -> tuple[str, int]:
    database = json.loads(GT.read_text())["database"]
    items = [{"label": a["label"], "segment": a["segment"], "score": 1.0} for a in database[video]["annotations"]]
    return _write(tmp_path / "pred.json", {"results": {video: items}}), len(items)


def test_subset_is_matched_case_insensitively(tmp_path):
    # The shipped THUMOS14 JSON spells its subsets "Test" / "Validation"; `--subset test` (as the W-TALC
    # files and the README spell it) must select the same 212 videos and record the file's spelling.
    pred, _ = _one_video_predictions(tmp_path)
    runs = {}
    for spelling in ("Test", "test", "TEST"):
        out = tmp_path / f"{spelling}.json"
        assert main(["eval", str(GT), pred, "--dataset", "thumos14", "--subset", spelling, "--json", str(out)]) == 0
        runs[spelling] = json.loads(out.read_text())
    assert runs["test"]["counts"]["gt_videos"] == 212
    assert runs["test"]["subset"] == "Test"
    assert runs["test"]["mAP"] == runs["Test"]["mAP"] == runs["TEST"]["mAP"]


def test_unknown_subset_lists_the_subsets_in_the_file(tmp_path, capsys):
    pred, _ = _one_video_predictions(tmp_path)
    assert main(["eval", str(GT), pred, "--subset", "testing"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(GT) in err
    assert "unknown subset 'testing'" in err and "['Test', 'Validation']" in err


def test_videos_without_predictions_are_named_and_counted_as_misses(tmp_path, capsys):
    database = json.loads(GT.read_text())["database"]
    pred, used = _one_video_predictions(tmp_path)
    total_segments = sum(len(v["annotations"]) for v in database.values())
    test_segments = sum(len(v["annotations"]) for v in database.values() if v["subset"] == "Test")
    # No --subset: all 412 videos are scored, 411 of them have no prediction (the 2.58-vs-4.93 trap).
    assert main(["eval", str(GT), pred, "--dataset", "thumos14"]) == 0
    err = capsys.readouterr().err
    assert "warning: 411 of 412 ground-truth videos have no predictions" in err
    assert f"their {total_segments - used} segments count as misses" in err
    assert "['Test', 'Validation']: --subset scores one of them" in err
    assert "video_test_0000006" in err  # the first video without predictions, in file order
    # With the subset: only its 211 other videos, and no advice to pass --subset.
    assert main(["eval", str(GT), pred, "--dataset", "thumos14", "--subset", "test"]) == 0
    err = capsys.readouterr().err
    assert "211 of 212 ground-truth videos of subset 'Test' have no predictions" in err
    assert f"their {test_segments - used} segments" in err and "--subset scores" not in err
    # Every video predicted (here: an empty prediction list still counts as none): no such warning.
    gt = _write(tmp_path / "gt.json", {"database": {"v1": {"subset": "test", "annotations": [
        {"label": "A", "segment": [0, 10]}]}}})
    full = _write(tmp_path / "full.json", {"results": {"v1": [{"label": "A", "segment": [0, 10], "score": 1}]}})
    assert main(["eval", gt, full, "--tiou", "0.5"]) == 0
    assert "no predictions" not in capsys.readouterr().err


def test_grid_is_inferred_from_the_ground_truth_or_a_warning_names_it(tmp_path, capsys):
    pred, _ = _one_video_predictions(tmp_path)
    out = tmp_path / "m.json"
    # The shipped THUMOS14 file: all 20 labels are THUMOS14 classes -> THUMOS14's 0.1:0.7 grid.
    assert main(["eval", str(GT), pred, "--subset", "test", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["tiou"] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert "note: tIoU grid thumos14 0.1:0.7:0.1, inferred from" in capsys.readouterr().err
    # Labels of neither dataset: the ActivityNet grid, with a warning saying how to pick another.
    gt = _write(tmp_path / "gt.json", {"database": {"v1": {"subset": "test", "annotations": [
        {"label": "A", "segment": [0, 10]}]}}})
    empty = _write(tmp_path / "empty.json", {"results": {}})
    assert main(["eval", gt, empty, "--json", str(out)]) == 0
    assert len(json.loads(out.read_text())["tiou"]) == 10
    err = capsys.readouterr().err
    assert "cannot tell the dataset (labels such as ['A'] are not THUMOS14 or ActivityNet1.2 classes)" in err
    assert "using the anet12 tIoU grid 0.5:0.95:0.05" in err and "--dataset thumos14|anet12" in err
    # ActivityNet1.2 class names -> its grid; an explicit --dataset / --tiou is never second-guessed.
    anet = _write(tmp_path / "anet.json", {"database": {"abc": {"subset": "validation", "annotations": [
        {"label": "Archery", "segment": [0, 10]}, {"label": "Belly dance", "segment": [3, 4]}]}}})
    assert main(["eval", anet, empty, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["tiou"][0] == 0.5
    assert "inferred from" in capsys.readouterr().err
    assert main(["eval", anet, empty, "--dataset", "thumos14"]) == 0
    assert capsys.readouterr().err.count("note:") == 0


def test_infer_dataset_rules():
    from harness.cli.evaluate import infer_dataset

    lists = {"thumos14": frozenset({"HighJump", "Diving"}), "anet12": frozenset({"Archery", "Ballet"})}
    db = lambda names, labels: {"database": {n: {"annotations": [{"label": x, "segment": [0, 1]} for x in labels]}
                                             for n in names}}
    assert infer_dataset(db(["x"], ["Diving"]), lists)[0] == "thumos14"
    assert infer_dataset(db(["x"], ["Ballet", "Archery"]), lists)[0] == "anet12"
    # one label from each dataset: ambiguous, even with THUMOS14 video names
    assert infer_dataset(db(["video_test_0000001"], ["Diving", "Ballet"]), lists)[0] is None
    # no labels at all: THUMOS14 video names decide, other names do not
    assert infer_dataset(db(["video_test_0000001", "video_validation_0000051"], []), lists)[0] == "thumos14"
    assert infer_dataset(db(["v_abc"], []), lists)[0] is None
    assert infer_dataset({"database": []}, lists)[0] is None  # malformed: left to the evaluator's error


def test_per_class_prints_a_classes_by_tiou_table(tmp_path, capsys):
    gt = _write(tmp_path / "gt.json", {"database": {
        "v1": {"subset": "test", "annotations": [{"label": "A", "segment": [0, 10]},
                                                 {"label": "Bee", "segment": [0, 10]}]},
        "v2": {"subset": "test", "annotations": [{"label": "A", "segment": [20, 30]}]}}})
    pred = _write(tmp_path / "pred.json", {"results": {
        "v1": [{"label": "A", "segment": [0, 10], "score": 0.9},  # tIoU 1: TP at 0.5 and 0.7
               {"label": "Bee", "segment": [50, 60], "score": 0.8}],  # tIoU 0: FP
        "v2": [{"label": "A", "segment": [20, 26], "score": 0.5}]}})  # tIoU 0.6: TP at 0.5, FP at 0.7
    # A at 0.5: TP, TP -> AP 1; at 0.7: TP (p 1, r 1/2), FP -> AP 1/2. Bee: 0. mAP: 1/2, 1/4; avg 3/8.
    out = tmp_path / "m.json"
    assert main(["eval", gt, pred, "--tiou", "0.5,0.7", "--per-class", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # label column as wide as its header (14), then 6-wide columns: the rows line up
    assert lines[2:6] == [
        "AP (%) at tIoU   0.50   0.70    avg",
        "A              100.00  50.00  75.00",
        "Bee              0.00   0.00   0.00",
        "mAP (%)         50.00  25.00  37.50",
    ]
    assert json.loads(out.read_text())["per_class_AP"] == {"A": [1.0, 0.5], "Bee": [0.0, 0.0]}
    # Without --per-class: the mAP row only.
    assert main(["eval", gt, pred, "--tiou", "0.5,0.7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:] == ["tIoU      0.50   0.70    avg", "mAP (%)  50.00  25.00  37.50"]


# ---- `emmil data gt`


def test_data_gt_round_trip_gives_the_numbers_of_scoring_the_dataset(tmp_path, capsys):
    from data_fixtures import write_wtalc

    from emmil.data.loading import load_dataset
    from emmil.evaluate import TIOU, detection_map

    data = write_wtalc(tmp_path / "data")  # test videos: v_t1 A [0,2], A [4,7.5] (clipped to 6.4); v_t2 B [1,2]
    gt = tmp_path / "gt" / "gt.json"
    assert main(["data", "gt", "--dataset", "thumos14", "--data-dir", str(data), "--subset", "TEST",
                 "--out", str(gt)]) == 0
    assert f"wrote {gt}: 2 videos, 3 segments, 2 classes" in capsys.readouterr().out
    predictions = {"results": {
        "video_test_0000001": [{"label": "A", "segment": [0, 2], "score": 0.9},
                               {"label": "A", "segment": [4, 6.4], "score": 0.8}],
        "video_test_0000002": [{"label": "B", "segment": [1, 1.5], "score": 0.7}],  # tIoU exactly 0.5
    }}
    pred = _write(tmp_path / "pred.json", predictions)
    out = tmp_path / "m.json"
    assert main(["eval", str(gt), pred, "--dataset", "thumos14", "--subset", "test", "--json", str(out)]) == 0
    m = json.loads(out.read_text())
    # A: both segments found at every tIoU (AP 1). B: tIoU 0.5 matches up to 0.5, not at 0.6 / 0.7.
    assert m["mAP"] == [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5]
    dataset = load_dataset("thumos14", data)
    direct = detection_map(dataset.ground_truth("test"), predictions, TIOU["thumos14"])
    assert m["mAP"] == direct.mAP.tolist() and m["average_mAP"] == direct.average_mAP
    assert m["counts"] == direct.counts


def test_data_gt_refuses_a_directory_and_an_unknown_subset(tmp_path, capsys):
    from data_fixtures import write_wtalc

    data = write_wtalc(tmp_path / "data")
    target = tmp_path / "outdir"
    target.mkdir()
    assert main(["data", "gt", "--dataset", "thumos14", "--data-dir", str(data), "--out", str(target)]) == 2
    assert capsys.readouterr().err == f"error: --out {target}: is a directory, expected a file path\n"
    assert main(["data", "gt", "--dataset", "thumos14", "--data-dir", str(data), "--subset", "training",
                 "--out", str(tmp_path / "g.json")]) == 2
    err = capsys.readouterr().err
    assert "no videos in subset 'training'" in err and "['test', 'validation']" in err
    assert not (tmp_path / "g.json").exists()
