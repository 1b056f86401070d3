"""reports/ pure parts on hand-made cases: seed statistics, published numbers, timelines, renderers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from emmil.errors import ConfigError, DataError
from reports.document import Figure, Report, Section, Table
from reports.render import tex_escape, to_html, to_latex, to_markdown
from reports.stats import mean_std, paired_difference


def test_mean_std_limits():
    assert mean_std([]).n == 0 and math.isnan(mean_std([]).mean)
    one = mean_std([0.3])
    assert (one.mean, one.n) == (0.3, 1) and math.isnan(one.std)  # n=1: no spread
    # 1, 2, 3, 4: mean 2.5, sample var = (2.25+0.25+0.25+2.25)/3 = 5/3
    ms = mean_std([1, 2, 3, 4])
    assert ms.mean == 2.5 and ms.std == pytest.approx(math.sqrt(5 / 3))
    with pytest.raises(ValueError, match="NaN"):
        mean_std([1.0, float("nan")])


def test_paired_difference_pairs_by_seed_and_gives_a_t_interval():
    # seeds 0,1 in both (seed 7 only in the variant): d = 0.1-0.2, 0.4-0.2 -> -0.1, +0.2; mean 0.05
    # sd = sqrt(((-0.15)^2 + 0.15^2) / 1) = 0.2121; t(0.975, 1) = 12.706; half = 12.706*0.2121/sqrt(2) = 1.906
    d = paired_difference({0: 0.1, 1: 0.4, 7: 0.9}, {0: 0.2, 1: 0.2})
    assert d.seeds == (0, 1) and d.n == 2 and d.mean == pytest.approx(0.05)
    assert (d.low, d.high) == pytest.approx((0.05 - 1.9060, 0.05 + 1.9060), abs=1e-3)
    # identical differences: sd 0, the interval is the point itself
    z = paired_difference({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.5, 2: 0.6})
    assert (z.low, z.high) == pytest.approx((0.1, 0.1)) and z.has_ci
    # one common seed: no interval
    one = paired_difference({0: 0.5}, {0: 0.4, 1: 0.1})
    assert one.n == 1 and not one.has_ci and math.isnan(one.low)
    assert paired_difference({}, {0: 1.0}).n == 0


def test_published_file_has_the_papers_numbers_and_rejects_bad_entries(tmp_path):
    from reports.tables import load_published

    pub = load_published()
    emmil = {p.dataset: p.values for p in pub.rows if p.is_emmil}
    # EM-MIL Table 1 and Table 2 (Luo et al., ECCV 2020)
    assert [emmil["thumos14"][k] for k in ("0.1", "0.5", "0.7", "avg")] == [59.1, 30.5, 16.4, 37.7]
    assert [emmil["anet12"][k] for k in ("0.5", "0.7", "0.9", "avg")] == [37.4, 23.1, 2.0, 20.3]
    assert pub.ablation == {"no-pseudo-label": 24.5, "joint": 26.8, "full": 30.5}
    assert {p.method for p in pub.rows} == {"EM-MIL (paper)", "W-TALC", "3C-Net", "BaS-Net", "CO2-Net", "DELU"}
    assert all(p.source for p in pub.rows) and pub.data_label == "paper, real I3D features"
    bad = tmp_path / "p.yaml"
    bad.write_text("data_label: x\nmethods:\n  - name: M\n    thumos14: {source: s, map: {'0.45': 10}}\n")
    with pytest.raises(DataError, match=r"p.yaml.*\(M\)\.thumos14\.map.*'0.45'"):
        load_published(bad)


def test_timelines_are_validated_naming_the_video_and_key():
    from reports.plots import parse_timelines

    doc = {"clip_seconds": 0.64, "videos": {"v1": {"duration": 3.2, "ground_truth": [
        {"label": "A", "segment": [0.64, 1.92]}], "tracks": [{"label": "A", "L": [0.1, 0.9, 0.9, 0.1, 0.1],
                                                             "threshold": 0.5, "segments": [[0.64, 1.92, 0.8]]}]}}}
    tl = parse_timelines(doc, "run r1 timelines.json")["v1"]
    assert tl.tracks[0].segments == ((0.64, 1.92),) and tl.ground_truth == (("A", 0.64, 1.92),)
    doc["videos"]["v1"]["tracks"][0]["L"] = [0.1, "x"]
    with pytest.raises(DataError, match=r"run r1 timelines.json: videos\['v1'\]\.tracks\[0\]\.L"):
        parse_timelines(doc, "run r1 timelines.json")


def test_renderers_escape_and_embed():
    t = Table("t1", "A & B_1", ("Method", "mAP"), (("full_1", "30.5 ± 1.0"), ("a|b", "")), rule_before=(1,),
              data=pd.DataFrame({"x": [1]}))
    png = b"\x89PNG\r\n\x1a\nfake"
    rep = Report("R", ("intro <b>",), (Section("S", ("p",), (t,), (Figure("f1", "cap", png),)),))
    md = to_markdown(rep)
    assert "| full_1 | 30.5 ± 1.0 |" in md and "| a\\|b |  |" in md and "](figures/f1.png)" in md
    html = to_html(rep)
    assert "intro &lt;b&gt;" in html and "data:image/png;base64,iVBORw0KGgpmYWtl" in html
    assert '<tr class="rule">' in html
    tex = to_latex(rep)
    assert r"A \& B\_1" in tex and r"30.5 $\pm$ 1.0" in tex and r"\midrule" in tex
    assert tex_escape("100%_#") == r"100\%\_\#"
    with pytest.raises(ValueError, match="row 0 has 1 cells"):
        Table("bad", "x", ("a", "b"), (("only",),))


def test_format_list_is_checked():
    from reports.build import parse_formats

    assert parse_formats("md, html,md") == ("md", "html")
    with pytest.raises(ConfigError, match="docx"):
        parse_formats("md,docx")
    with pytest.raises(ConfigError):
        parse_formats("")


def test_uris_are_printed_without_passwords():
    from reports.runs import redact

    assert redact("postgresql://bob:s3cr3t@db:5432/optuna") == "postgresql://bob:***@db:5432/optuna"
    assert redact("http://h/api?password=abc&x=1") == "http://h/api?password=***&x=1"
    assert redact("sqlite:////tmp/results/mlflow.db") == "sqlite:////tmp/results/mlflow.db"


# ---------------------------------------------------------------- reference rows (ceiling, oracle, floor)
SRC = "semi-synthetic (test)"
KEY = ("thumos14", SRC, "activitynet")


def _block(rows, stage="ablation") -> pd.DataFrame:
    """rows: (label = tag emmil.variant, config variant = param variant, seed, avg mAP, cls mAP), as fractions."""
    return pd.DataFrame([
        {"run_id": f"run{i}", "parent_run_id": "p", "dataset": KEY[0], "data_source": SRC, "eval_protocol": KEY[2],
         "stage": stage, "variant": label, "param:variant": cv, "config_group": f"cfg-{label}", "seed": seed,
         "test_avg_mAP": avg, "test_mAP_0.50": avg, "test_cls_mAP": cls, "test_coverage": 0.5}
        for i, (label, cv, seed, avg, cls) in enumerate(rows)])


# full 0.20, 0.30 -> 0.25; attention-mil 0.10, 0.20 -> 0.15; supervised 0.45, 0.55 -> 0.50 (the ceiling);
# whole-video (labelled `wv` by its experiment) 0.04, 0.06 -> 0.05. Fraction of ceiling = mean / 0.50:
# full 0.50, attention-mil 0.30, supervised 1.00, whole-video 0.10.
# Gate cls mAP: full 0.80, 0.90 -> 85.0 ± 7.1 (sd 0.1/sqrt(2) = 0.0707); attention-mil 0.70, 0.70 -> 70.0 ± 0.0;
# supervised 0.95, 0.99 -> 97.0 ± 2.8 (sd 0.04/sqrt(2) = 0.0283); whole-video 0.80, 0.90 -> 85.0 ± 7.1.
REFERENCE_BLOCK = [
    ("whole-video-run", "whole-video", 0, 0.04, 0.80), ("whole-video-run", "whole-video", 1, 0.06, 0.90),
    ("supervised", "supervised", 0, 0.45, 0.95), ("supervised", "supervised", 1, 0.55, 0.99),
    ("attention-mil", "attention-mil", 0, 0.10, 0.70), ("attention-mil", "attention-mil", 1, 0.20, 0.70),
    ("full", "full", 0, 0.20, 0.80), ("full", "full", 1, 0.30, 0.90),
]


def _column(table, name):
    i = table.columns.index(name)
    return {row[0]: row[i] for row in table.rows}


def test_reference_rows_follow_the_methods_with_fraction_of_ceiling_and_gate_cls_map():
    from reports.tables import NO_REFERENCE_NOTE, load_published, map_table

    pub = load_published()
    t = map_table(KEY, _block(REFERENCE_BLOCK), pub)
    ours = [r[0] for r in t.rows if r[1] == SRC]
    # methods first (full first), then ceiling, oracle, floor; a reference row is classified by its CONFIG
    # variant (param `variant`), and its label keeps the experiment's name plus the config variant.
    assert ours == ["full", "attention-mil", "ceiling: supervised", "floor: whole-video-run [variant whole-video]"]
    assert t.rule_before == (2, 4)  # a rule before the reference rows and before the published rows
    frac, gate = _column(t, "fraction of ceiling"), _column(t, "gate cls mAP")
    assert [frac[m] for m in ours] == ["0.50", "0.30", "1.00", "0.10"]
    assert [gate[m] for m in ours] == ["85.0 ± 7.1", "70.0 ± 0.0", "97.0 ± 2.8", "85.0 ± 7.1"]
    assert frac["EM-MIL (paper)"] == "" and gate["EM-MIL (paper)"] == ""  # published rows: no such columns
    data = t.data.set_index("method")
    assert data.loc["attention-mil", "fraction_of_ceiling"] == pytest.approx(0.30)
    assert data.loc["ceiling: supervised", "role"] == "ceiling" and data.loc["full", "role"] == "method"
    assert data.loc["full", "test_cls_mAP"] == pytest.approx(0.85)
    assert "Fraction of ceiling = mean test_avg_mAP of the row / that of 'ceiling: supervised' (50.0%)." in t.notes
    assert NO_REFERENCE_NOTE not in t.notes


def test_reference_rows_in_table3_paired_and_completeness_tables():
    from reports.tables import ablation_table, completeness_table, load_published, paired_table

    block = _block(REFERENCE_BLOCK)
    t3 = ablation_table(KEY, block, load_published())
    assert [r[0] for r in t3.rows][2:] == ["ceiling: supervised", "floor: whole-video-run [variant whole-video]"]
    paper = _column(t3, "Paper mAP@0.5 (paper, real I3D features)")
    assert paper["full"] == "30.5" and paper["ceiling: supervised"] == "" and t3.rule_before == (2,)
    assert _column(t3, "fraction of ceiling")["full"] == "0.50"
    assert _column(t3, "gate cls mAP")["ceiling: supervised"] == "97.0 ± 2.8"
    # supervised - full per seed: 0.45-0.20 = 0.55-0.30 = +0.25: sd 0, the interval is the point +25.0
    p = paired_table(KEY, block)
    assert [r[0] for r in p.rows[::2]] == ["attention-mil", "ceiling: supervised",
                                           "floor: whole-video-run [variant whole-video]"]
    sup = p.rows[2]
    assert sup[3:] == ("mAP@0.5", "2", "+25.0", "[+25.0, +25.0]", "better") and p.rule_before == (2,)
    comp = completeness_table(KEY, block)
    assert [r[0] for r in comp.rows] == ["full", "attention-mil", "ceiling: supervised",
                                         "floor: whole-video-run [variant whole-video]"]
    assert list(comp.data["role"]) == ["method", "method", "ceiling", "floor"]


def test_blocks_without_reference_rows_or_without_a_ceiling_say_so():
    from reports.tables import (NO_REFERENCE_NOTE, ablation_table, completeness_table, load_published, map_table,
                                paired_table)

    pub = load_published()
    # Methods only (one labelled by its experiment, lam-0.8, config variant full): no reference rows at all.
    methods = _block([("full", "full", 0, 0.2, 0.8), ("lam-0.8", "full", 0, 0.3, 0.8)])
    for table in (map_table(KEY, methods, pub), ablation_table(KEY, methods, pub), paired_table(KEY, methods),
                  completeness_table(KEY, methods)):
        assert NO_REFERENCE_NOTE in table.notes, table.key
        assert "no reference rows on this data: run `emmil ablate references`" in NO_REFERENCE_NOTE
    t = map_table(KEY, methods, pub)
    assert set(_column(t, "fraction of ceiling").values()) == {""} and t.rule_before == (2,)
    # A floor but no ceiling: blank column, and the note says why.
    floor = _block([("full", "full", 0, 0.2, 0.8), ("whole-video", "whole-video", 0, 0.05, 0.8)])
    t = map_table(KEY, floor, pub)
    assert set(_column(t, "fraction of ceiling").values()) == {""}
    assert any(n.startswith("no ceiling (`supervised`) rows") for n in t.notes)
    # A ceiling of 0: blank, stated.
    zero = _block([("full", "full", 0, 0.2, 0.8), ("supervised", "supervised", 0, 0.0, 0.9)])
    t = map_table(KEY, zero, pub)
    assert set(_column(t, "fraction of ceiling").values()) == {""}
    assert any("the ceiling is 0" in n for n in t.notes)


def test_several_ceiling_configs_use_the_one_with_most_seeds_and_say_so():
    from reports.tables import load_published, map_table

    # supervised cfg A over seeds 0, 1 (mean 0.40); cfg B over seed 2 only (0.80). full 0.20 -> 0.20/0.40 = 0.50.
    rows = [("full", "full", 0, 0.2, 0.8), ("supervised", "supervised", 0, 0.4, 0.9),
            ("supervised", "supervised", 1, 0.4, 0.9), ("supervised", "supervised", 2, 0.8, 0.9)]
    block = _block(rows)
    block.loc[3, "config_group"] = "cfg-B"
    block.loc[[1, 2], "config_group"] = "cfg-A"
    t = map_table(KEY, block, load_published())
    frac = _column(t, "fraction of ceiling")
    assert frac["full"] == "0.50" and frac["ceiling: supervised [cfg cfg-A]"] == "1.00"
    assert frac["ceiling: supervised [cfg cfg-B]"] == "2.00"
    assert any("2 ceiling configurations" in n and "'ceiling: supervised [cfg cfg-A]'" in n for n in t.notes)


def test_a_stage_without_its_own_ceiling_uses_the_blocks_and_says_so():
    from reports.tables import load_published, map_table

    # A sweep's final-test `full` (0.30) beside an ablation-stage ceiling (0.60): 0.30 / 0.60 = 0.50.
    block = pd.concat([_block([("full", "full", 0, 0.3, 0.8)], stage="final-test"),
                       _block([("supervised", "supervised", 0, 0.6, 0.9)], stage="ablation")], ignore_index=True)
    t = map_table(KEY, block, load_published())
    assert [r[:3] for r in t.rows[:2]] == [("full", SRC, "final-test"), ("ceiling: supervised", SRC, "ablation")]
    assert _column(t, "fraction of ceiling")["full"] == "0.50"
    assert any(n.startswith("stage final-test has no ceiling run") for n in t.notes)


def test_rows_keep_their_experiment_and_stage_and_the_paper_column_only_beside_ablation_trials():
    """Issue 14.6: a report over several experiments put a sweep's tuned `full` in Table 3 as the paper's
    'Full Model | 30.5' with no stage column, and paired one experiment's rows against another's `full`."""
    from reports.tables import ablation_table, blocks, load_published, paired_table

    pub = load_published()
    # table3: full 0.20, 0.30; joint 0.30, 0.40 (joint - full = +0.10 per seed: interval [+10.0, +10.0]).
    # sweep: final-test `full` (a tuned config) 0.50, 0.60. schedule: paper-schedule 0.20, 0.30 and its own
    # full 0.10, 0.20 (paper-schedule - full = +0.10 per seed); it must NOT be paired with table3's full (+0.0).
    t3 = _block([("full", "full", 0, 0.20, 0.8), ("full", "full", 1, 0.30, 0.8),
                 ("joint", "joint", 0, 0.30, 0.8), ("joint", "joint", 1, 0.40, 0.8)]).assign(experiment="emmil-table3")
    sw = _block([("full", "full", 0, 0.50, 0.8), ("full", "full", 1, 0.60, 0.8)],
                stage="final-test").assign(experiment="emmil-sweep-x", config_group="cfg-tuned")
    sc = _block([("paper-schedule", "full", 0, 0.20, 0.8), ("paper-schedule", "full", 1, 0.30, 0.8),
                 ("full", "full", 0, 0.10, 0.8), ("full", "full", 1, 0.20, 0.8)]).assign(experiment="emmil-schedule")
    runs = pd.concat([t3, sw, sc], ignore_index=True).assign(run_id=lambda d: [f"r{i}" for i in range(len(d))])
    [(key, block)] = blocks(runs)
    assert set(block["stage"]) == {"table3 · ablation", "sweep-x · final-test", "schedule · ablation"}
    t = ablation_table(key, block, pub)
    rows = [(r[0], r[t.columns.index("Stage")]) for r in t.rows]
    assert ("full", "sweep-x · final-test") in rows and ("full", "table3 · ablation") in rows
    by_row = {(r[0], r[t.columns.index("Stage")]): r for r in t.rows}
    col = t.columns.index("Paper mAP@0.5 (paper, real I3D features)")
    assert by_row[("full", "sweep-x · final-test")][col] == ""  # the tuned config is not the paper's row
    assert by_row[("full", "sweep-x · final-test")][1] == ""  # nor labelled 'Full Model'
    assert by_row[("full", "table3 · ablation")][col] == "30.5"
    assert by_row[("paper-schedule", "schedule · ablation")][col] == ""  # a variant the paper has no row for
    p = paired_table(key, block)
    pairs = {(r[0], r[1]): r for r in p.rows if r[3] == "mAP@0.5"}
    assert set(pairs) == {("joint", "full"), ("paper-schedule", "full")}
    assert pairs[("paper-schedule", "full")][5:7] == ("+10.0", "[+10.0, +10.0]")  # against schedule's own full
    # --baseline joint: joint is the reference of its stage; the other experiments have none and say so
    pj = paired_table(key, block, "joint")
    assert [(r[0], r[1], r[5]) for r in pj.rows if r[3] == "mAP@0.5"] == [("full", "joint", "-10.0")]
    assert "stage schedule · ablation: no 'joint' runs, so no paired differences" in pj.notes
    assert "vs joint: diff [95% CI]" in ablation_table(key, block, pub, "joint").columns


def test_unverified_features_are_not_called_semi_synthetic_or_real():
    from reports.tables import _synthetic_note

    unverified = _synthetic_note("user-provided features (unverified)", "paper, real I3D features")
    assert len(unverified) == 1 and "neither declared real I3D features" in unverified[0]
    assert "semi-synthetic" in unverified[0] and "NOT a reproduction" not in unverified[0]
    synth = _synthetic_note("semi-synthetic (emmil synth v2, dim 64)", "paper, real I3D features")
    assert "NOT a reproduction of the paper" in synth[0]
    assert _synthetic_note("real I3D features (W-TALC release, declared by the user)", "x") == (
        "This bench's rows: real I3D features (W-TALC release, declared by the user).",)


# ---------------------------------------------------------------- issue 14.9: partial data
ADVICE = ("; the tables below cover only the finished trials. Finish the run with `--resume` and rebuild the "
          "report.")


def test_a_partial_parent_run_gets_a_notice_naming_its_status_and_trial_count():
    from reports.build import partial_notice

    # FAILED, tagged 6 planned, 3 finished: the example wording of issue 14.9.
    assert partial_notice("p1", "emmil-table3", "FAILED", "6", 3) == (
        "Partial results: the parent run p1 (emmil-table3) is FAILED and 3 of 6 planned trials finished" + ADVICE)
    # KILLED before any trial finished
    assert partial_notice("p1", "e", "KILLED", "6", 0).startswith(
        "Partial results: the parent run p1 (e) is KILLED and 0 of 6 planned trials finished;")
    # A run older than the tag: judged by its status alone, the plan is said to be unknown.
    assert partial_notice("p1", "e", "RUNNING", "", 2).startswith(
        "Partial results: the parent run p1 (e) is RUNNING and 2 trials finished (the run has no "
        "emmil.planned_trials tag")
    # FINISHED but fewer trials finished than planned (e.g. a sweep's final stage never ran).
    assert partial_notice("p1", "e", "FINISHED", "6", 4) == (
        "Partial results: the parent run p1 (e) is FINISHED but only 4 of 6 planned trials finished" + ADVICE)
    # Complete: FINISHED with every planned trial (or more: a retried trial leaves two runs), or untagged.
    assert partial_notice("p1", "e", "FINISHED", "6", 6) is None
    assert partial_notice("p1", "e", "FINISHED", "6", 7) is None
    assert partial_notice("p1", "e", "FINISHED", "", 3) is None
    # A tag that is not a count is said, not skipped.
    assert "emmil.planned_trials='six', not a trial count" in partial_notice("p1", "e", "FINISHED", "six", 3)
    assert "is FAILED and 3 trials finished (its tag emmil.planned_trials='six'" in \
        partial_notice("p1", "e", "FAILED", "six", 3)


def test_finished_trials_are_counted_per_parent_and_only_when_finished():
    from reports.build import finished_trial_count

    trials = pd.DataFrame({"parent_run_id": ["a", "a", "a", "b", "a"],
                           "status": ["FINISHED", "FAILED", "FINISHED", "FINISHED", "KILLED"]})
    assert (finished_trial_count(trials, "a"), finished_trial_count(trials, "b")) == (2, 1)
    assert finished_trial_count(trials, "c") == 0 and finished_trial_count(pd.DataFrame(), "a") == 0
    # a search trial ASHA stopped early is KILLED with emmil.stopped_early=true: it ended as planned, and
    # a complete sweep with pruned trials is not "partial"; an interrupted KILLED run still does not count
    trials["stopped_early"] = [False, False, False, False, True]
    assert finished_trial_count(trials, "a") == 3
    trials["stopped_early"] = False
    assert finished_trial_count(trials, "a") == 2


# ---------------------------------------------------------------- issue 14.10: precision, CSVs, LaTeX fragments
LONG_DECIMAL = r"\.0*[1-9]\d{4,}"  # 5+ significant decimals (0.30512...): full float precision in a cell


def test_search_table_prints_logged_params_to_four_significant_digits():
    import re

    from reports.build import search_table
    from reports.tables import param_text

    # MLflow keeps params as str(value): an Optuna-sampled lr arrives as '0.000305123456789'.
    search = pd.DataFrame([
        {"run_id": "r0000000001", "trial_id": "t0", "status": "FINISHED", "variant": "full", "stage": "search",
         "val_avg_mAP": 0.30512345678, "param:train.lr": "0.000305123456789",
         "param:train.gamma": "0.24285714285714285", "param:train.batch": "32", "param:train.optim": "adam"},
        {"run_id": "r0000000002", "trial_id": "t1", "status": "FINISHED", "variant": "full", "stage": "search",
         "val_avg_mAP": 0.2, "param:train.lr": "1e-05", "param:train.gamma": "0.5",
         "param:train.batch": "64", "param:train.optim": "sgd"},
    ])
    t = search_table(search)
    first = dict(zip(t.columns, t.rows[0]))
    assert (first["train.lr"], first["train.gamma"], first["val_avg_mAP (%)"]) == ("0.0003051", "0.2429", "30.5")
    assert (first["train.batch"], first["train.optim"]) == ("32", "adam")  # integers and words as logged
    assert dict(zip(t.columns, t.rows[1]))["train.lr"] == "1e-05"
    assert t.data.loc[0, "param:train.lr"] == "0.000305123456789"  # the CSV keeps what was logged
    rep = Report("R", (), (Section("Sweep", tables=(t,)),))
    for text in (to_markdown(rep), to_html(rep), to_latex(rep)):
        assert not re.findall(LONG_DECIMAL, text)
    assert param_text(float("nan")) == "" and param_text("-3") == "-3" and param_text("inf") == "inf"


def test_table_csv_data_has_a_std_per_mean_and_integer_n():
    from reports.tables import ablation_table, completeness_table, load_published, map_table

    block = _block(REFERENCE_BLOCK)
    t1 = map_table(KEY, block, load_published())
    data = t1.data.set_index("method")
    # full avg mAP 0.20, 0.30: sample std 0.1/sqrt(2) = 0.0707
    assert data.loc["full", "test_avg_mAP_std"] == pytest.approx(0.1 / math.sqrt(2))
    assert data.loc["full", "test_mAP_0.50_std"] == pytest.approx(0.1 / math.sqrt(2))
    assert pd.isna(data.loc["EM-MIL (paper)", "test_avg_mAP_std"])  # a published number has no seed spread
    assert str(t1.data["n"].dtype) == "Int64" and data.loc["full", "n"] == 2 and pd.isna(data.loc["W-TALC", "n"])
    one = _block([("full", "full", 0, 0.2, 0.8)])
    t3 = ablation_table(KEY, one, load_published())
    assert t3.data.loc[0, "test_mAP_0.50"] == pytest.approx(0.2) and pd.isna(t3.data.loc[0, "test_mAP_0.50_std"])
    comp = completeness_table(KEY, block).data.set_index("variant")
    assert comp.loc["attention-mil", "test_mAP_0.50_std"] == pytest.approx(0.1 / math.sqrt(2))  # 0.10, 0.20
    assert comp.loc["full", "test_coverage_std"] == 0.0  # 0.5 on both seeds


def test_latex_fragments_are_written_per_table_and_input_by_report_tex(tmp_path):
    from reports.render import write_report

    a = Table("table1_x", "Table 1 & co", ("Method", "mAP"), (("full_1", "30.5 ± 1.0"), ("joint", "28.0")),
              rule_before=(1,), notes=("a note",))
    b = Table("paired_x", "Pairs", ("Variant", "Mean diff"), (("joint", "-2.5"),))
    rep = Report("R", ("intro",), (Section("S1", tables=(a,)), Section("S2", tables=(b,))))
    write_report(rep, tmp_path, ("tex",), pd.DataFrame())
    report_tex = (tmp_path / "report.tex").read_text()
    for t, rows in ((a, (r"full\_1 & 30.5 $\pm$ 1.0 \\", r"joint & 28.0 \\")), (b, (r"joint & -2.5 \\",))):
        fragment = (tmp_path / "tables" / f"{t.key}.tex").read_text()
        assert r"\documentclass" not in fragment and r"\begin{document}" not in fragment
        lines = fragment.splitlines()
        body = [ln for ln in lines if not ln.startswith("%")]
        assert body[0] == r"\begin{table}[ht]" and body[-1] == r"\end{table}"
        assert r"\toprule" in body and r"\bottomrule" in body
        # exactly the table's rows, in order, between \midrule (after the header) and \bottomrule
        cells = [ln for ln in body[body.index(r"\midrule") + 1:body.index(r"\bottomrule")] if ln != r"\midrule"]
        assert cells == list(rows)
        assert f"\\input{{tables/{t.key}.tex}}" in report_tex
    assert r"full\_1" not in report_tex  # the rows are in the fragment only: one source for both
    assert not list(tmp_path.glob("tables/*.csv"))  # csv not asked for
