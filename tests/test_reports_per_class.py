"""Issue 12: per-class AP tables (from the runs' per_class_ap.json) and several --run-id / --experiment in one
report. Expected numbers are worked out by hand in the comments, never from reports/ code."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from emmil.errors import ConfigError, DataError
from test_reports import SYNTH, THUMOS_T, Tracker, thumos_metrics

KEY = ("thumos14", SYNTH, "activitynet")


def _block(rows) -> pd.DataFrame:
    """rows: (run_id, variant, seed); one config per variant."""
    return pd.DataFrame([
        {"run_id": rid, "parent_run_id": "p", "dataset": KEY[0], "data_source": SYNTH, "eval_protocol": KEY[2],
         "stage": "ablation", "variant": variant, "param:variant": variant, "config_group": f"cfg-{variant}",
         "seed": seed, "test_avg_mAP": 0.3} for rid, variant, seed in rows])


def _doc(ap: dict, tiou=(0.5, 0.7)):
    from reports.per_class import parse_per_class

    return parse_per_class({"tiou": list(tiou), "per_class_AP": ap}, "test doc")


# full over seeds 0, 1, 2; joint over seeds 0, 1 where seed 1 has no artifact (an older run). tIoU 0.5, 0.7.
#   full A: (0.6, 0.4), (0.8, 0.6), (0.7, 0.5) -> per-run avg 0.5, 0.7, 0.6: mean 0.6, sd 0.1 -> "60.0 ± 10.0"
#           at 0.5: 0.6, 0.8, 0.7 -> 70.0 ± 10.0; at 0.7: 0.4, 0.6, 0.5 -> 50.0 ± 10.0
#   full B: (0.2, 0.0), (0.4, 0.2), (0.3, null) -> avg 0.1, 0.3 (seed 2 undefined): mean 0.2,
#           sd sqrt(2 * 0.1^2 / 1) = 0.1414 -> "20.0 ± 14.1 (n=2)"; at 0.5: 0.2, 0.4, 0.3 -> 30.0 ± 10.0;
#           at 0.7: 0.0, 0.2 -> "10.0 ± 14.1 (n=2)"
#   joint A: (0.5, 0.3) -> 40.0 (n=1: just the mean); joint B: (0.1, 0.1) -> 10.0
#   C: null everywhere (no test segment) -> no row, named in a note
DOCS = {
    "full0": {"A": [0.6, 0.4], "B": [0.2, 0.0], "C": [None, None]},
    "full1": {"A": [0.8, 0.6], "B": [0.4, 0.2], "C": [None, None]},
    "full2": {"A": [0.7, 0.5], "B": [0.3, None], "C": [None, None]},
    "joint0": {"A": [0.5, 0.3], "B": [0.1, 0.1], "C": [None, None]},
}
ROWS = [("full0", "full", 0), ("full1", "full", 1), ("full2", "full", 2), ("joint0", "joint", 0),
        ("joint1", "joint", 1)]


def test_per_class_cells_are_the_mean_and_std_over_seeds_and_a_missing_artifact_is_named():
    from reports.per_class import per_class_tables

    docs = {rid: _doc(ap) for rid, ap in DOCS.items()} | {"joint1": None}
    t = per_class_tables(KEY, _block(ROWS), docs)
    ov = t.overview
    assert ov.columns == ("Class", "full (n=3)", "joint (n=1)")
    assert ov.rows == (("A", "60.0 ± 10.0", "40.0"), ("B", "20.0 ± 14.1 (n=2)", "10.0"))
    data = ov.data.set_index(["class", "variant"])
    assert data.loc[("A", "full"), "AP_avg"] == pytest.approx(0.6)
    assert data.loc[("A", "full"), "AP_avg_std"] == pytest.approx(0.1)
    assert data.loc[("B", "full"), "n"] == 2 and data.loc[("B", "full"), "AP_avg_std"] == pytest.approx(math.sqrt(0.02))
    assert math.isnan(data.loc[("A", "joint"), "AP_avg_std"])  # one run: no spread
    notes = " ".join(ov.notes)
    assert "joint: 1 of 2 run(s) have no per_class_ap.json artifact (seed 1 (run joint1)); its column covers " \
           "the other 1." in notes
    assert "No AP in any run (no test segment of the class): C." in notes
    # the full classes x tIoU tables, one per variant
    full, joint = t.details
    assert full.columns == ("Class", "n", "0.5", "0.7", "avg 0.5:0.7")
    assert full.rows == (("A", "3", "70.0 ± 10.0", "50.0 ± 10.0", "60.0 ± 10.0"),
                         ("B", "2", "30.0 ± 10.0", "10.0 ± 14.1 (n=2)", "20.0 ± 14.1 (n=2)"))
    fd = full.data.set_index("class")
    assert fd.loc["B", "AP_0.70"] == pytest.approx(0.1) and fd.loc["B", "AP_0.70_n"] == 1 + 1
    assert fd.loc["B", "AP_0.50_n"] == 3
    assert joint.rows == (("A", "1", "50.0", "30.0", "40.0"), ("B", "1", "10.0", "10.0", "10.0"))
    assert full.key != joint.key and full.key.startswith("per_class_tiou_thumos14")


def test_a_block_without_any_artifact_says_so_and_bad_documents_are_refused():
    from reports.per_class import parse_per_class, per_class_tables

    t = per_class_tables(KEY, _block(ROWS[:2]), {"full0": None, "full1": None})
    assert t.overview is None and t.details == ()
    assert "no run has a per_class_ap.json artifact" in t.notes[0]
    assert "full: no column, none of its 2 run(s) has a per_class_ap.json artifact (seed 0 (run full0), seed 1 " \
           "(run full1))." in t.notes[0]
    with pytest.raises(DataError, match=r"run r1 per_class_ap.json: per_class_AP\['A'\]\[1\] = 1.5"):
        parse_per_class({"tiou": [0.5, 0.7], "per_class_AP": {"A": [0.1, 1.5]}}, "run r1 per_class_ap.json")
    with pytest.raises(DataError, match=r"per_class_AP\['A'\] must be a list of 2 values"):
        parse_per_class({"tiou": [0.5, 0.7], "per_class_AP": {"A": [0.1]}}, "x")
    with pytest.raises(DataError, match="'tiou' must be"):
        parse_per_class({"tiou": [], "per_class_AP": {}}, "x")
    # two runs of one block measured at other thresholds: refused, naming runs of each
    docs = {"full0": _doc({"A": [0.1, 0.2]}), "full1": _doc({"A": [0.1, 0.2]}, tiou=(0.5, 0.75))}
    with pytest.raises(DataError, match=r"different tIoU thresholds.*full0.*full1"):
        per_class_tables(KEY, _block(ROWS[:2]), docs)


# ---------------------------------------------------------------- two parents in one report (MLflow store)
# Two ablations of one experiment (emmil-cmp), a quick-preset and a paper-preset one, seeds 0 and 1 each.
# Per-class AP of class CleanAndJerk in every tIoU: quick full 0.2, 0.4 (avg 0.3 ± 0.1414);
# paper full 0.5, 0.7 (avg 0.6 ± 0.1414); joint 0.1 less than full. The paper run of joint seed 1 has no
# per_class_ap.json (logged before the artifact existed).
MAP05 = {"quick": {"full": (0.20, 0.22), "joint": (0.18, 0.19)},
         "paper": {"full": (0.30, 0.32), "joint": (0.27, 0.28)}}
CLASS_AP = {"quick": {"full": (0.2, 0.4), "joint": (0.1, 0.3)}, "paper": {"full": (0.5, 0.7), "joint": (0.4, 0.6)}}


@pytest.fixture
def compared(template_store, tmp_path):
    shutil.copy(template_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tr = Tracker(uri, tmp_path / "artifacts")
    exp = tr.experiment("emmil-cmp")
    parents, ids = {}, {}
    for preset, variants in MAP05.items():
        parent = parents[preset] = tr.parent(exp, kind="ablation", experiment="cmp", dataset="thumos14", source=SYNTH)
        tr.client.log_param(parent, "preset", preset)
        for variant, values in variants.items():
            for seed, m05 in enumerate(values):
                rid = ids[(preset, variant, seed)] = tr.trial(exp, parent, dataset="thumos14", source=SYNTH,
                                                              variant=variant, seed=seed,
                                                              metrics=thumos_metrics(m05, 0.5),
                                                              params={"preset": preset})
                if (preset, variant, seed) == ("paper", "joint", 1):
                    continue
                ap = CLASS_AP[preset][variant][seed]
                doc = {"tiou": list(THUMOS_T), "per_class_AP": {"CleanAndJerk": [ap] * 7, "Diving": [None] * 7}}
                tr.client.log_text(rid, json.dumps(doc), "per_class_ap.json")
    return uri, parents, ids, tmp_path


def test_two_parents_share_one_table3_and_per_class_table_side_by_side(compared):
    from reports.build import build_report

    uri, parents, ids, tmp = compared
    q, p = parents["quick"], parents["paper"]
    out = build_report(uri, parent_run_id=[q, p], out_dir=tmp / "both")
    stage = {"quick": f"cmp@{q[:8]} · ablation", "paper": f"cmp@{p[:8]} · ablation"}
    [t3_path] = (out / "tables").glob("table3_thumos14_*.csv")
    t3 = pd.read_csv(t3_path).set_index(["stage", "variant"])
    assert len(t3) == 4  # both parents' full and joint, in one table
    for preset, variants in MAP05.items():
        for variant, values in variants.items():
            assert t3.loc[(stage[preset], variant), "test_mAP_0.50"] == pytest.approx(np.mean(values))
    # each source's joint is paired with its own full: quick 0.18-0.20, 0.19-0.22 -> mean -0.025
    paired = pd.read_csv(next((out / "tables").glob("paired_thumos14_*.csv")))
    quick = paired[(paired["stage"] == stage["quick"]) & (paired["metric"] == "test_mAP_0.50")]
    assert quick["mean_diff"].tolist() == pytest.approx([-0.025])
    # per-class: quick full avg 0.3 ± 0.1414 (n 2); paper joint only seed 0 (0.4), the other run is named
    [pc_path] = (out / "tables").glob("per_class_thumos14_semi-synthetic_*.csv")
    pc = pd.read_csv(pc_path).set_index(["class", "stage", "variant"])
    row = pc.loc[("CleanAndJerk", stage["quick"], "full")]
    assert (row["AP_avg"], row["AP_avg_std"], row["n"]) == pytest.approx((0.3, math.sqrt(0.02), 2))
    assert pc.loc[("CleanAndJerk", stage["paper"], "joint"), "AP_avg"] == pytest.approx(0.4)
    assert "Diving" not in set(pc.index.get_level_values(0))
    md = (out / "report.md").read_text()
    # one column per (source, variant), sources in the order of their stage text (full first in each)
    cells = {"quick": (f"full · {stage['quick']} (n=2)", f"joint · {stage['quick']} (n=2)"),
             "paper": (f"full · {stage['paper']} (n=2)", f"joint · {stage['paper']} (n=1)")}
    values = {"quick": ("30.0 ± 14.1", "20.0 ± 14.1"), "paper": ("60.0 ± 14.1", "40.0")}
    order = sorted(stage, key=stage.get)
    assert "| Class | " + " | ".join(c for s in order for c in cells[s]) + " |" in md
    assert "| CleanAndJerk | " + " | ".join(v for s in order for v in values[s]) + " |" in md
    assert f"seed 1 (run {ids[('paper', 'joint', 1)][:8]})" in md and "no per_class_ap.json artifact" in md
    assert "No AP in any run (no test segment of the class): Diving." in md
    assert "## Appendix: per-class AP by tIoU" in md and len(list((out / "tables").glob("per_class_tiou_*.tex"))) == 4
    assert (f"Compared side by side: 'cmp@{q[:8]}' = parent run {q} (experiment emmil-cmp, preset quick); "
            f"'cmp@{p[:8]}' = parent run {p} (experiment emmil-cmp, preset paper)") in md
    # One parent: as before, no source in the stage and no Stage column.
    one = build_report(uri, parent_run_id=q, out_dir=tmp / "one", formats=("md", "csv"))
    t3_one = pd.read_csv(next((one / "tables").glob("table3_thumos14_*.csv")))
    assert set(t3_one["stage"]) == {"ablation"} and "Compared side by side" not in (one / "report.md").read_text()
    # The experiment holding both, reported as one source: its rows are told apart by config hash only.
    exp = build_report(uri, experiment="cmp", out_dir=tmp / "exp", formats=("csv",))
    t3_exp = pd.read_csv(next((exp / "tables").glob("table3_thumos14_*.csv")))
    assert set(t3_exp["stage"]) == {"ablation"} and all("[cfg " in v for v in t3_exp["variant"])


def test_cli_takes_run_id_and_experiment_several_times(compared, capsys):
    from harness.cli import main

    uri, parents, _, tmp = compared
    q, p = parents["quick"], parents["paper"]
    out = tmp / "cli"
    assert main(["report", "--run-id", q, "--run-id", p, "--tracking-uri", uri, "--out", str(out),
                 "--format", "md"]) == 0
    md = (out / "report.md").read_text()
    assert f"Report command: emmil report --run-id {q} --run-id {p} --tracking-uri {uri}" in md
    assert f"# EM-MIL bench report: parent runs cmp@{q[:8]}, cmp@{p[:8]}" in md
    assert main(["report", "--run-id", q, "--run-id", q, "--tracking-uri", uri, "--out", str(out)]) == 2
    assert f"--run-id {q} given twice" in capsys.readouterr().err
    assert main(["report", "--experiment", "cmp", "--experiment", "emmil-cmp", "--tracking-uri", uri,
                 "--out", str(out)]) == 2
    assert "are the same MLflow experiment emmil-cmp" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse: not both
        main(["report", "--experiment", "cmp", "--run-id", q, "--tracking-uri", uri])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_several_experiments_are_labelled_by_experiment(template_store, tmp_path):
    from reports.runs import load_runs

    shutil.copy(template_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tr = Tracker(uri, tmp_path / "artifacts")
    for name in ("a", "b", "c"):
        exp = tr.experiment(f"emmil-{name}")
        parent = tr.parent(exp, kind="ablation", experiment=name, dataset="thumos14", source=SYNTH)
        tr.trial(exp, parent, dataset="thumos14", source=SYNTH, variant="full", seed=0,
                 metrics=thumos_metrics(0.3, 0.5))
    rs = load_runs(uri, experiment=["a", "emmil-b"])  # c is not asked for
    assert sorted(rs.runs["source"]) == ["a", "b"] and rs.experiments == ("emmil-a", "emmil-b")
    assert rs.sources == {"a": "experiment emmil-a", "b": "experiment emmil-b"}
    with pytest.raises(ConfigError, match="--experiment 'nope'"):
        load_runs(uri, experiment=["a", "nope"])
