"""Issue 13: every JSON file the project writes is strict JSON (no NaN / Infinity tokens, which
JavaScript's JSON.parse, jq and most non-Python readers reject), and an undefined metric is
`null` with a reason beside it.

One tiny semi-synthetic THUMOS14 folder (dim 8 per stream, 12+12 videos) goes through every writer
in turn: `emmil data gt`, `emmil train` (and again from the run's own config.yaml), `emmil predict`,
`emmil eval --json` (a ground truth with a class absent from the evaluated subset, and a subset with
no segment at all), and `bench/gpu_bench.py gpu-util --json` on an nvidia-smi log with a `nan`
sample. Every *.json written is then read back with a parser that raises on NaN/Infinity.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emmil.errors import DataError
from harness.cli import main

# 12 training videos do not cover all 20 classes: the evaluator's warnings about that are expected here
pytestmark = pytest.mark.filterwarnings("ignore::emmil.evaluate.EvaluationWarning")

TINY = ["--preset", "quick", "--set", "train.epochs=2", "--set", "train.cycle=1", "--set", "train.cycle_epochs=1",
        "--set", "train.batch_videos=6", "--set", "model.hidden=8", "--set", "model.cls_hidden=8",
        "--set", "device=cpu"]


def _refuse(token: str):
    raise AssertionError(f"non-standard JSON token {token}")


def strict_load(path: Path):
    """json.loads that fails on NaN, Infinity and -Infinity (Python's default accepts them)."""
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse)


def test_strict_load_rejects_what_python_writes_by_default(tmp_path):
    # the checker itself: json.dumps(nan) writes the bare token NaN, which must not pass
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"a": float("nan")}))
    with pytest.raises(AssertionError, match="non-standard JSON token NaN"):
        strict_load(path)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """Run every JSON writer once on tiny data; returns the interesting paths (all under `root`)."""
    from emmil.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("strict")
    data = write_synthetic("thumos14", root / "data", dim=8, seed=0, max_videos=12)  # writes SYNTHETIC.json
    paths = {"root": root, "data": data, "gt": root / "gt.json", "run": root / "run", "rerun": root / "rerun",
             "pred": root / "pred.json", "timelines": root / "timelines.json"}
    assert main(["data", "gt", "--dataset", "thumos14", "--data-dir", str(data), "--out", str(paths["gt"])]) == 0
    assert main(["train", "--dataset", "thumos14", "--data-dir", str(data), "--out", str(paths["run"]),
                 "--no-progress", *TINY]) == 0
    # issue 14.10: the run's own config.yaml reruns it, without --dataset or --preset
    assert main(["train", "--config", str(paths["run"] / "config.yaml"), "--data-dir", str(data),
                 "--out", str(paths["rerun"]), "--no-progress"]) == 0
    assert main(["predict", str(paths["run"]), "--data-dir", str(data), "--out", str(paths["pred"]),
                 "--timelines", str(paths["timelines"])]) == 0
    return paths


def _ground_truth_with_an_empty_class(written) -> Path:
    """The test subset's ground truth plus one validation video of class 'Unseen' (no test segment)."""
    gt = strict_load(written["gt"])
    gt["database"]["video_validation_9999999"] = {
        "subset": "validation", "duration": 10.0, "annotations": [{"label": "Unseen", "segment": [1.0, 2.0]}]}
    gt["database"]["video_validation_9999998"] = {"subset": "empty", "duration": 5.0, "annotations": []}
    path = written["root"] / "gt_empty_class.json"
    path.write_text(json.dumps(gt))
    return path


def test_eval_json_writes_null_and_a_reason_for_a_class_without_ground_truth(written, capsys):
    gt = _ground_truth_with_an_empty_class(written)
    out = written["root"] / "eval_test.json"
    assert main(["eval", str(gt), str(written["pred"]), "--dataset", "thumos14", "--subset", "test",
                 "--per-class", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    m = strict_load(out)
    # 'Unseen' has a segment only in another subset: its AP is undefined (null), not 0, and the mAP is
    # the mean over the classes that do have test segments, as before
    assert m["per_class_AP"]["Unseen"] is None
    assert m["per_class_AP_reason"] == {
        "Unseen": "no ground-truth segments of this class in subset 'test': AP undefined, not counted in the mAP"}
    defined = [ap for c, ap in m["per_class_AP"].items() if c != "Unseen"]
    assert len(defined) == m["counts"]["classes"] > 0
    assert m["average_mAP"] == pytest.approx(sum(sum(ap) / len(ap) for ap in defined) / len(defined), abs=1e-12)
    assert "mAP_reason" not in m and "average_mAP_reason" not in m
    unseen_row = next(line for line in table.splitlines() if line.startswith("Unseen"))
    assert unseen_row.split()[1:] == ["-"] * 8  # 7 thresholds + the average


def test_eval_json_of_a_subset_without_segments_is_null_with_reasons(written, capsys):
    gt = _ground_truth_with_an_empty_class(written)
    out = written["root"] / "eval_empty.json"
    assert main(["eval", str(gt), str(written["pred"]), "--tiou", "0.3,0.5", "--subset", "empty",
                 "--json", str(out)]) == 0
    captured = capsys.readouterr()
    m = strict_load(out)  # the old writer put NaN here
    reason = "no ground-truth segments in subset 'empty': no class to average over, mAP undefined"
    assert (m["mAP"], m["average_mAP"]) == ([None, None], None)
    assert (m["mAP_reason"], m["average_mAP_reason"]) == (reason, reason)
    assert m["counts"]["gt_segments"] == 0
    assert captured.out.splitlines()[-2].split() == ["mAP", "(%)", "n/a", "n/a", "n/a"]


def test_run_config_reruns_without_preset_or_dataset(written):
    # the rerun resolved exactly the first run's configuration (quick preset, tiny overrides)
    first = (written["run"] / "config.yaml").read_text()
    assert (written["rerun"] / "config.yaml").read_text() == first
    assert "preset: quick" in first and "hidden: 8" in first


def test_bench_gpu_util_json_is_strict(tmp_path):
    from bench.gpu_bench import main as gpu_bench

    log = tmp_path / "smi.csv"
    # float() reads "nan": that sample used to make the mean NaN; --wall nan used to be written as NaN
    log.write_text("2026/01/01 00:00:00.000, 0, 40, 500\n"
                   "2026/01/01 00:00:00.500, 0, nan, 900\n"
                   "2026/01/01 00:00:01.000, 0, 80, 1000\n")
    out = tmp_path / "util.json"
    assert gpu_bench(["gpu-util", str(log), "--wall", "nan", "--json", str(out)]) == 0
    record = strict_load(out)
    # two finite samples: mean (40 + 80) / 2 = 60, max 80, memory max 1000; the wall time unmeasured: null
    assert (record["samples"], record["util_mean_pct"], record["util_max_pct"]) == (2, 60.0, 80.0)
    assert record["memory_used_max_mib"] == 1000.0 and record["ablation_wall_seconds"] is None


def test_strict_json_refuses_a_nan_naming_the_file(tmp_path):
    from harness.cli.evaluate import strict_json

    with pytest.raises(DataError, match=r"--out .*p\.json: refusing to write a non-finite number"):
        strict_json({"results": {"v": [{"score": float("nan")}]}}, "--out", tmp_path / "p.json")


def test_every_json_written_is_strict(written):
    # run after the tests above (pytest keeps file order): their eval outputs are checked here too
    files = sorted(written["root"].rglob("*.json"))
    names = {p.name for p in files}
    assert {"SYNTHETIC.json", "gt.json", "metrics.json", "predictions.json", "timelines.json",
            "pred.json"} <= names, names
    for path in files:
        strict_load(path)
    metrics = strict_load(written["run"] / "metrics.json")
    assert set(metrics["timing"]) == {"train_seconds", "wall_seconds", "epoch_seconds"}


def test_metrics_json_turns_every_non_finite_number_into_null_and_names_it():
    # issue 13: metrics.json of `emmil train` and of each trial held NaN (an mAP on a split without
    # ground truth, a diverged loss). Hand-made: two NaN (one nested in history), one inf, finite kept.
    import math

    from emmil.train import UNDEFINED_KEY, finite_or_null

    metrics = {"test_avg_mAP": math.nan, "test_mAP_0.50": 0.25, "timing": {"train_seconds": math.inf},
               "history": [{"loss": 1.5}, {"loss": math.nan}], "device": "cpu"}
    out = finite_or_null(metrics)
    text = json.dumps(out, allow_nan=False)  # would raise ValueError on a NaN left behind
    back = json.loads(text)
    assert back["test_avg_mAP"] is None and back["test_mAP_0.50"] == 0.25 and back["device"] == "cpu"
    assert back["timing"]["train_seconds"] is None and back["history"] == [{"loss": 1.5}, {"loss": None}]
    assert back[UNDEFINED_KEY]["keys"] == ["test_avg_mAP", "timing.train_seconds", "history[1].loss"]
    assert math.isnan(metrics["test_avg_mAP"])  # the caller's dict is untouched
    assert UNDEFINED_KEY not in finite_or_null({"a": 1.0})
