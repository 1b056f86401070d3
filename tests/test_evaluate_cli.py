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
