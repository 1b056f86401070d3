"""emmil report: tables and plots rebuilt from real MLflow runs written by hand into a SQLite store.

The runs follow docs/CONTRACTS.md "Tracking schema" exactly. Expected numbers are computed here
independently (numpy / scipy) from the values logged, never from reports/ code.
"""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from emmil.errors import ConfigError, DataError

SYNTH = "semi-synthetic (THUMOS14 annotations, test generator)"
SYNTH_ANET = "semi-synthetic (ActivityNet1.2 annotations, test generator)"
REAL = "real I3D features (W-TALC release)"
THUMOS_T = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
ANET_T = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

# THUMOS14 synthetic ablation: mAP@0.5 per (variant, seed); other tIoUs follow m_t = m_0.5 * (1.5 - t).
MAP05 = {
    "full": {0: 0.30, 1: 0.32, 2: 0.31},
    "joint": {0: 0.27, 1: 0.28, 2: 0.30},
    "no-pseudo-label": {0: 0.24, 1: 0.25, 2: 0.23},
    "attention-mil": {0: 0.20, 1: 0.22},  # seed 2 crashed (FAILED run below): pairs over seeds 0, 1
}
COVERAGE = {"full": 0.70, "joint": 0.62, "no-pseudo-label": 0.55, "attention-mil": 0.50}
# Reference rows of the same block: label (tag emmil.variant) -> (config variant = param `variant`, mAP@0.5 by seed).
# The floor is labelled by its experiment (`floor-run`): the report must classify it by the param.
REFERENCES = {"supervised": ("supervised", {0: 0.50, 1: 0.52, 2: 0.54}),
              "floor-run": ("whole-video", {0: 0.05, 1: 0.06, 2: 0.07})}


def thumos_metrics(m05: float, coverage: float) -> dict[str, float]:
    out = {f"test_mAP_{t:.2f}": m05 * (1.5 - t) for t in THUMOS_T}
    out["test_avg_mAP"] = float(np.mean([out[f"test_mAP_{t:.2f}"] for t in THUMOS_T]))
    out["test_coverage"] = coverage
    out["test_cls_mAP"] = 0.9
    return out


def anet_metrics(m05: float) -> dict[str, float]:
    out = {f"test_mAP_{t:.2f}": m05 * (1.5 - t) for t in ANET_T}
    out["test_avg_mAP"] = float(np.mean([out[f"test_mAP_{t:.2f}"] for t in ANET_T]))
    out["test_coverage"] = 0.8
    return out


def timelines_doc(variant: str) -> dict:
    # Two videos, 50 clips of 0.64 s; L rises inside the action; `full` predicts the whole segment.
    T = 50
    L = [0.9 if 10 <= i < 30 else 0.1 for i in range(T)]
    seg = [6.4, 19.2] if variant == "full" else [9.6, 14.0]
    videos = {
        name: {"duration": T * 0.64,
               "ground_truth": [{"label": "CleanAndJerk", "segment": [6.4, 19.2]}],
               "tracks": [{"label": "CleanAndJerk", "L": L, "threshold": 0.5, "segments": [seg + [0.8]]}]}
        for name in ("video_test_0000004", "video_test_0000006")
    }
    return {"clip_seconds": 0.64, "videos": videos}


# ---------------------------------------------------------------- writing runs (the harness's schema)
def _tags(**kw) -> dict[str, str]:
    return {f"emmil.{k}": str(v) for k, v in kw.items()}


class Tracker:
    def __init__(self, uri: str, artifact_root: Path):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.artifact_root = artifact_root

    def experiment(self, name: str) -> str:
        return self.client.create_experiment(name, artifact_location=(self.artifact_root / name).as_uri())

    def parent(self, exp_id: str, *, kind: str, experiment: str, dataset: str, source: str, extra=None) -> str:
        tags = {"emmil.role": "parent"} | _tags(kind=kind, experiment=experiment, dataset=dataset, data_source=source,
                                                command=f"emmil ablate {experiment}", git_commit="abc1234")
        run = self.client.create_run(exp_id, tags=tags | (extra or {}), run_name=f"{experiment}-parent")
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    def trial(self, exp_id: str, parent: str, *, dataset: str, source: str, variant: str, seed: int,
              metrics: dict | None, stage: str = "ablation", status: str = "FINISHED", history=(),
              timelines=None, params=None, protocol="activitynet; ambiguous removed") -> str:
        from mlflow.entities import Metric, Param

        tags = {"mlflow.parentRunId": parent, "emmil.role": "trial"} | _tags(
            trial_id=f"t{variant}{seed}", experiment="x", dataset=dataset, data_source=source, variant=variant,
            seed=seed, eval_protocol=protocol, git_commit="abc1234", device="cpu", config_hash=f"h{variant[:3]}{seed}",
            stage=stage, command=f"emmil ablate x --seed {seed}")
        run = self.client.create_run(exp_id, tags=tags, run_name=f"{variant}-s{seed}")
        rid = run.info.run_id
        ps = {"variant": variant, "seed": str(seed), "train.gamma": "0.15", "device": "cpu"} | (params or {})
        now = int(time.time() * 1000)
        ms = [Metric("val_avg_mAP", v, now, e) for e, v in history]
        ms += [Metric(k, v, now, 0) for k, v in (metrics or {}).items()]
        self.client.log_batch(rid, metrics=ms, params=[Param(k, v) for k, v in ps.items()])
        if timelines is not None:
            self.client.log_text(rid, json.dumps(timelines), "timelines.json")
        self.client.set_terminated(rid, status)
        return rid


@pytest.fixture
def store(template_store, tmp_path):
    db = tmp_path / "mlflow.db"
    shutil.copy(template_store, db)
    uri = f"sqlite:///{db}"
    return uri, Tracker(uri, tmp_path / "artifacts")


def write_ablation(tr: Tracker) -> dict:
    """THUMOS14 synthetic ablation (4 variants x 3 seeds, one FAILED), plus ActivityNet1.2 and real-feature runs."""
    exp = tr.experiment("emmil-table3")
    parent = tr.parent(exp, kind="ablation", experiment="table3", dataset="thumos14", source=SYNTH)
    ids = {}
    for variant, seeds in MAP05.items():
        for seed, m05 in seeds.items():
            hist = [(e, m05 * e / 3) for e in (1, 2, 3)]
            tl = timelines_doc(variant) if seed == 0 and variant in ("full", "attention-mil") else None
            ids[(variant, seed)] = tr.trial(exp, parent, dataset="thumos14", source=SYNTH, variant=variant, seed=seed,
                                            metrics=thumos_metrics(m05, COVERAGE[variant]), history=hist,
                                            timelines=tl, params={"lam": "0.8"})
    ids["failed"] = tr.trial(exp, parent, dataset="thumos14", source=SYNTH, variant="attention-mil", seed=2,
                             metrics=None, status="FAILED")
    for label, (config_variant, seeds) in REFERENCES.items():
        for seed, m05 in seeds.items():
            tr.trial(exp, parent, dataset="thumos14", source=SYNTH, variant=label, seed=seed,
                     metrics=thumos_metrics(m05, 0.9) | {"test_cls_mAP": 0.95 + 0.01 * seed},
                     params={"lam": "0.8", "variant": config_variant})
    # Same experiment, another dataset and another data source: must stay in their own tables.
    for seed, m05 in {0: 0.35, 1: 0.37}.items():
        tr.trial(exp, parent, dataset="anet12", source=SYNTH_ANET, variant="full", seed=seed,
                 metrics=anet_metrics(m05), protocol="activitynet")
    tr.trial(exp, parent, dataset="thumos14", source=REAL, variant="full", seed=0,
             metrics=thumos_metrics(0.29, 0.6))
    tr.trial(exp, parent, dataset="thumos14", source=REAL, variant="joint", seed=0,
             metrics=thumos_metrics(0.25, 0.5))
    return {"parent": parent, "ids": ids}


@pytest.fixture(scope="module")
def built(tmp_path_factory, template_store):
    """The ablation report, built once for the module's read-only checks."""
    from reports.build import build_report

    tmp = tmp_path_factory.mktemp("report")
    shutil.copy(template_store, tmp / "mlflow.db")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    info = write_ablation(Tracker(uri, tmp / "artifacts"))
    out = build_report(uri, experiment="table3", out_dir=tmp / "out")
    return out, info, uri


def _csv(out: Path, prefix: str, source: str) -> pd.DataFrame:
    """The one tables/<prefix>*.csv whose rows were measured on `source`."""
    found = []
    for path in sorted((out / "tables").glob(f"{prefix}_*.csv")):
        df = pd.read_csv(path)
        if source in set(df["data"]):
            found.append(df)
    assert len(found) == 1, (prefix, source, sorted(p.name for p in (out / "tables").iterdir()))
    return found[0]


# ---------------------------------------------------------------- tests
def test_table1_means_and_stds_match_the_logged_runs(built):
    out, _, _ = built
    t1 = _csv(out, "table1_thumos14", SYNTH)
    ours = t1[t1["data"] == SYNTH].set_index("method")
    # full, mAP@0.5 over seeds {0.30, 0.32, 0.31}: mean 0.31
    assert ours.loc["full", "test_mAP_0.50"] == pytest.approx(0.31)
    assert ours.loc["full", "n"] == 3 and ours.loc["attention-mil", "n"] == 2  # FAILED run not counted
    for variant, seeds in MAP05.items():
        avg = [thumos_metrics(v, 0)["test_avg_mAP"] for v in seeds.values()]
        assert ours.loc[variant, "test_avg_mAP"] == pytest.approx(np.mean(avg))
    # Published rows sit beside ours, labelled as the paper's real-feature numbers.
    paper = t1[t1["data"] == "paper, real I3D features"].set_index("method")
    assert paper.loc["EM-MIL (paper)", "test_mAP_0.50"] == pytest.approx(0.305)
    assert paper.loc["EM-MIL (paper)", "test_avg_mAP"] == pytest.approx(0.377)
    assert {"W-TALC", "3C-Net", "BaS-Net", "CO2-Net", "DELU"} <= set(paper.index)
    assert math.isnan(paper.loc["W-TALC", "test_mAP_0.60"])  # not published: empty, not guessed
    md = (out / "report.md").read_text()
    # full, mAP@0.1 = m05 * 1.4: seeds 0.420, 0.448, 0.434 -> 43.4 ± 1.4 (std 0.014)
    sd = np.std([0.30 * 1.4, 0.32 * 1.4, 0.31 * 1.4], ddof=1)
    assert f"| full | {SYNTH} | 3 | 43.4 ± {100 * sd:.1f} |" in md


def test_paired_ci_vs_full_matches_an_independent_t_interval(built):
    out, _, _ = built
    p = _csv(out, "paired_thumos14", SYNTH)
    p = p[p["metric"] == "test_mAP_0.50"].set_index("variant")
    # joint - full by seed: -0.03, -0.04, -0.01
    d = np.array([MAP05["joint"][s] - MAP05["full"][s] for s in (0, 1, 2)])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert p.loc["joint", "n"] == 3
    assert p.loc["joint", "mean_diff"] == pytest.approx(d.mean())
    assert (p.loc["joint", "ci_low"], p.loc["joint", "ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    # attention-mil pairs on seeds 0 and 1 only: diffs -0.10, -0.10 -> sd 0, CI is the point -0.10
    assert p.loc["attention-mil", "n"] == 2 and p.loc["attention-mil", "seeds"] == "0 1"
    assert p.loc["attention-mil", "ci_high"] == pytest.approx(-0.10)
    md = (out / "report.md").read_text()
    assert f"| joint | full | {SYNTH} | mAP@0.5 | 3 | {100 * d.mean():+.1f} | " \
           f"[{100 * (d.mean() - half):+.1f}, {100 * (d.mean() + half):+.1f}] | not distinguishable |" in md
    assert "| no-pseudo-label | full |" in md and "| worse |" in md
    # The real-feature block has one seed per variant: no interval, said so.
    real = _csv(out, "paired_thumos14", REAL)
    assert real["n"].tolist() == [1, 1] and real["ci_low"].isna().all()
    assert "no CI (n=1 < 2)" in md


def test_ablation_and_completeness_tables(built):
    out, _, _ = built
    t3 = _csv(out, "table3_thumos14", SYNTH).set_index("variant")
    assert t3.loc["no-pseudo-label", "test_mAP_0.50"] == pytest.approx(0.24)
    # Paper Table 3 beside it: 24.5 / 26.8 / 30.5; attention-mil has no paper row.
    nan = float("nan")
    assert t3["paper_mAP_0.50"].to_dict() == pytest.approx(
        {"full": 0.305, "joint": 0.268, "no-pseudo-label": 0.245, "attention-mil": nan, "ceiling: supervised": nan,
         "floor: floor-run [variant whole-video]": nan}, nan_ok=True)  # reference rows get no paper number
    comp = _csv(out, "completeness_thumos14", SYNTH).set_index("variant")
    assert comp.loc["joint", "test_coverage"] == pytest.approx(0.62)
    assert comp.loc["full", "test_mAP_0.70"] == pytest.approx(np.mean([v * 0.8 for v in MAP05["full"].values()]))


def test_datasets_and_data_sources_are_never_merged(built):
    out, _, _ = built
    t2 = _csv(out, "table2_anet12", SYNTH_ANET)
    ours = t2[t2["data"] == SYNTH_ANET]
    assert ours["n"].tolist() == [2] and ours["test_mAP_0.50"].tolist() == pytest.approx([0.36])
    real = _csv(out, "table1_thumos14", REAL)
    assert real[real["data"] == REAL].set_index("method")["n"].to_dict() == {"full": 1, "joint": 1}
    synth = _csv(out, "table1_thumos14", SYNTH)
    assert REAL not in set(synth["data"]) and SYNTH_ANET not in set(synth["data"])
    runs = pd.read_csv(out / "runs.csv")
    # every trial run, the FAILED one included
    assert len(runs) == sum(map(len, MAP05.values())) + 1 + sum(len(s) for _, s in REFERENCES.values()) + 2 + 2
    md = (out / "report.md").read_text()
    assert "NOT a reproduction of the paper" in md


def test_every_section_and_format_is_written(built):
    out, info, _ = built
    md = (out / "report.md").read_text()
    for title in ("Table 1: THUMOS14", "Table 2: ActivityNet1.2", "Table 3: ablation", "Paired differences vs full",
                  "Completeness", "mAP vs tIoU", "Validation curves", "Timelines (Figure 5 style)", "Provenance"):
        assert f"## {title}" in md, title
    assert "## Sweep" not in md  # an ablation has no sweep section
    # Provenance: command, config hash, git commit of each row; the FAILED run listed, not silently dropped.
    assert "emmil ablate x --seed 0" in md and "hful0; hful1; hful2" in md and "abc1234" in md
    assert info["ids"]["failed"] in md and "status FAILED" in md
    tex = (out / "report.tex").read_text()
    assert r"\includegraphics" in tex and r"\input{tables/" in tex
    fragments = "".join(p.read_text() for p in (out / "tables").glob("*.tex"))  # report.tex \inputs them
    assert r"\toprule" in fragments and r"\bottomrule" in fragments and r"$\pm$" in fragments
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert any(f.startswith("timelines_thumos14") for f in figures)
    assert any(f.startswith("val_curves") for f in figures) and any(f.startswith("map_vs_tiou") for f in figures)


def test_html_is_self_contained_with_decodable_pngs(built):
    out, _, _ = built
    page = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # 3 blocks x (mAP vs tIoU) + 1 block with val history + 1 block with timelines
    assert len(images) == 5
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'src="figures/' not in page and "<script" not in page


def test_errors_name_the_experiment_the_run_and_the_format(store, tmp_path):
    from reports.build import build_report

    uri, tr = store
    exp = tr.experiment("emmil-bad")
    parent = tr.parent(exp, kind="ablation", experiment="bad", dataset="thumos14", source=SYNTH)
    with pytest.raises(ConfigError, match="'nope'.*emmil-bad"):
        build_report(uri, experiment="nope", out_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match="pdf"):
        build_report(uri, experiment="bad", out_dir=tmp_path / "a", formats="md,pdf")
    rid = tr.trial(exp, parent, dataset="thumos14", source=SYNTH, variant="full", seed=0,
                   metrics=thumos_metrics(0.3, 0.5))
    tr.client.delete_tag(rid, "emmil.data_source")
    with pytest.raises(DataError, match=f"{rid}.*emmil.data_source"):
        build_report(uri, parent_run_id=parent, out_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match="not a parent run"):
        build_report(uri, parent_run_id=rid, out_dir=tmp_path / "a")
    # The same ablation run twice into one experiment: seed 0 of `full` twice -> ask for one parent.
    tr.client.set_tag(rid, "emmil.data_source", SYNTH)
    parent2 = tr.parent(exp, kind="ablation", experiment="bad", dataset="thumos14", source=SYNTH)
    tr.trial(exp, parent2, dataset="thumos14", source=SYNTH, variant="full", seed=0, metrics=thumos_metrics(0.3, 0.5))
    with pytest.raises(DataError, match="two finished runs with seed 0.*--run-id PARENT"):
        build_report(uri, experiment="bad", out_dir=tmp_path / "a")
    assert (build_report(uri, parent_run_id=parent2, out_dir=tmp_path / "b") / "report.html").is_file()


def test_sweep_report_has_search_table_and_optuna_plots(store, tmp_path):
    import optuna

    from reports.build import build_report

    uri, tr = store
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    # the study's name differs from the experiment's, and the parent is tagged as `emmil sweep` tags it
    # (emmil.study, emmil.optuna_storage): the report must find the study from those tags (issue 14.6)
    study = optuna.create_study(study_name="lr-study", storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    exp = tr.experiment("emmil-sweep-lr")
    parent = tr.parent(exp, kind="sweep", experiment="lr", dataset="thumos14", source=SYNTH,
                       extra={"emmil.study": "lr-study", "emmil.optuna_storage": storage})
    for i in range(6):
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-5, 1e-3, log=True)
        gamma = trial.suggest_float("gamma", 0.0, 0.3)
        val = 0.2 + gamma - 10 * lr  # gamma matters most
        study.tell(trial, val)
        tr.trial(exp, parent, dataset="thumos14", source=SYNTH, variant="full", seed=0, metrics=None, stage="search",
                 history=[(1, val / 2), (2, val)], params={"train.lr": str(lr), "train.gamma": str(gamma)})
    for seed in (0, 1):
        tr.trial(exp, parent, dataset="thumos14", source=SYNTH, variant="full", seed=seed, stage="final-test",
                 metrics=thumos_metrics(0.3 + 0.01 * seed, 0.7))
    out = build_report(uri, parent_run_id=parent, out_dir=tmp_path / "out", formats=("md", "html"),
                       optuna_storage=storage)
    md = (out / "report.md").read_text()
    assert "## Sweep" in md and "6 search trials" in md and "| Stage |" in md and "final-test" in md
    assert (out / "figures" / "optuna_history.png").is_file() and (out / "figures" / "optuna_importances.png").is_file()
    assert not (out / "report.tex").exists() and not (out / "runs.csv").exists()  # only the formats asked for
    tagged = build_report(uri, parent_run_id=parent, out_dir=tmp_path / "tagged", formats=("md",))
    assert (tagged / "figures" / "optuna_history.png").is_file()  # storage and study from the parent's tags
    # The best search trial (highest last val_avg_mAP) is listed first.
    best = max(study.trials, key=lambda t: t.value)
    first_row = md.split("| Trial | Run |")[1].split("\n")[2]
    assert f"{100 * best.value:.1f}" in first_row
    # params are logged as str(float) (0.00012345678...): the table prints 4 significant digits (issue 14.10)
    assert f"| {best.params['lr']:.4g} |" in first_row and f"| {best.params['gamma']:.4g} |" in first_row
    assert str(best.params["lr"]) not in md and not re.findall(r"\.0*[1-9]\d{4,}", md)


def test_cli_writes_the_report_and_exits_2_on_bad_input(store, tmp_path, capsys):
    from harness.cli import main

    uri, tr = store
    exp = tr.experiment("emmil-cli")
    parent = tr.parent(exp, kind="ablation", experiment="cli", dataset="thumos14", source=SYNTH)
    for seed in (0, 1):
        tr.trial(exp, parent, dataset="thumos14", source=SYNTH, variant="full", seed=seed,
                 metrics=thumos_metrics(0.3, 0.5))
    out = tmp_path / "rep"
    assert main(["report", "--experiment", "cli", "--tracking-uri", uri, "--out", str(out), "--format", "md,csv"]) == 0
    assert (out / "runs.csv").is_file() and not (out / "report.html").exists()
    md = (out / "report.md").read_text()
    assert f"Report command: emmil report --experiment cli --tracking-uri {uri} --out {out}" in md
    assert main(["report", "--run-id", "0" * 32, "--tracking-uri", uri, "--out", str(out)]) == 2
    assert "no such run" in capsys.readouterr().err
    assert main(["report", "--experiment", "cli", "--tracking-uri", uri, "--out", str(out), "--baseline", "jiont"]) == 2
    assert "--baseline 'jiont': no finished trial run of that variant in emmil-cli (variants: full)" in \
        capsys.readouterr().err


def test_reference_rows_fraction_of_ceiling_and_gate_column(built):
    from reports.tables import NO_REFERENCE_NOTE

    out, _, _ = built
    t1 = _csv(out, "table1_thumos14", SYNTH)
    ours = t1[t1["data"] == SYNTH]
    # methods (full first), then the ceiling, then the floor (classified by its param variant); published after
    assert list(ours["method"]) == ["full", "attention-mil", "joint", "no-pseudo-label", "ceiling: supervised",
                                    "floor: floor-run [variant whole-video]"]
    assert list(ours["role"]) == ["method"] * 4 + ["ceiling", "floor"]
    ours = ours.set_index("method")
    # avg mAP = m05 * mean(1.5 - t) over the 7 tIoUs, so fraction = mean(m05 of the row) / mean(m05 of supervised)
    ceiling = np.mean(list(REFERENCES["supervised"][1].values()))
    for variant, seeds in MAP05.items():
        assert ours.loc[variant, "fraction_of_ceiling"] == pytest.approx(np.mean(list(seeds.values())) / ceiling)
    assert ours.loc["ceiling: supervised", "fraction_of_ceiling"] == pytest.approx(1.0)
    # gate: 0.95, 0.96, 0.97 -> 96.0 ± 1.0 for the references; 0.9 for every method run -> 90.0 ± 0.0
    assert ours.loc["ceiling: supervised", "test_cls_mAP"] == pytest.approx(0.96)
    md = (out / "report.md").read_text()
    frac_full = np.mean(list(MAP05["full"].values())) / ceiling  # 0.31 / 0.52 = 0.596
    assert f"| {frac_full:.2f} | 90.0 ± 0.0 |" in md and "| 1.00 | 96.0 ± 1.0 |" in md
    paired = _csv(out, "paired_thumos14", SYNTH)
    assert "floor: floor-run [variant whole-video]" in set(paired["variant"])  # references are paired too
    # Blocks without reference runs say so; the report of the THUMOS14 synthetic block does not.
    assert md.count(NO_REFERENCE_NOTE) == 2 * 4  # (anet12 synthetic, THUMOS14 real) x 4 per-block tables
    t2 = _csv(out, "table2_anet12", SYNTH_ANET)
    assert t2["fraction_of_ceiling"].isna().all() and t2["test_cls_mAP"].isna().all()  # no ceiling, no cls metric


# ---------------------------------------------------------------- issue 14.9: partial data
def _intro_paragraphs(out: Path) -> dict[str, list[str]]:
    """The intro paragraphs of each format: between the title and the first section."""
    md = (out / "report.md").read_text().split("\n## ")[0].split("\n\n")[1:]
    page = (out / "report.html").read_text()
    html_intro = re.findall(r"<p>(.*?)</p>", page.split("</h1>")[1].split("<h2>")[0])
    tex = (out / "report.tex").read_text().split("\\subsection*")[0].split("\\section*{")[1]
    tex = tex.split("}\n", 1)[1].split("\n\n")
    return {"md": [p.strip() for p in md if p.strip()], "html": html_intro,
            "tex": [p.strip() for p in tex if p.strip()]}


def test_a_partial_run_says_so_first_in_every_format(store, tmp_path):
    from reports.build import build_report

    uri, tr = store
    exp = tr.experiment("emmil-part")
    # An ablation that planned 6 trials and FAILED after 3 finished (one more FAILED, two never started).
    parent = tr.parent(exp, kind="ablation", experiment="part", dataset="thumos14", source=SYNTH,
                       extra={"emmil.planned_trials": "6"})
    tr.client.set_terminated(parent, "FAILED")
    for seed in (0, 1, 2):
        tr.trial(exp, parent, dataset="thumos14", source=SYNTH, variant="full", seed=seed,
                 metrics=thumos_metrics(0.3, 0.5))
    tr.trial(exp, parent, dataset="thumos14", source=SYNTH, variant="joint", seed=0, metrics=None, status="FAILED")
    out = build_report(uri, parent_run_id=parent, out_dir=tmp_path / "out", formats=("md", "html", "tex"))
    intro = _intro_paragraphs(out)
    head = f"Partial results: the parent run {parent} (emmil-part) is FAILED and 3 of 6 planned trials finished"
    assert intro["md"][0] == head + ("; the tables below cover only the finished trials. Finish the run with "
                                     "`--resume` and rebuild the report.")
    assert intro["html"][0] == intro["md"][0]  # nothing to escape in it
    assert intro["tex"][0].startswith(head.replace("_", r"\_")) and "-{}-resume" in intro["tex"][0]
    for fmt, paragraphs in intro.items():  # before the generated-from line and the semi-synthetic warning
        assert paragraphs[1].startswith("Generated ") and paragraphs[3].startswith("WARNING"), fmt

    # Completed: every planned trial FINISHED, parent FINISHED -> no notice.
    done = tr.parent(exp, kind="ablation", experiment="part", dataset="thumos14", source=SYNTH,
                     extra={"emmil.planned_trials": "2"})
    for seed in (0, 1):
        tr.trial(exp, done, dataset="thumos14", source=SYNTH, variant="full", seed=seed,
                 metrics=thumos_metrics(0.3, 0.5))
    md = (build_report(uri, parent_run_id=done, out_dir=tmp_path / "done", formats=("md",)) / "report.md").read_text()
    assert "Partial results" not in md
    # A run older than the tag, still RUNNING: judged by its status; its count without a plan.
    old = tr.parent(exp, kind="ablation", experiment="part", dataset="thumos14", source=SYNTH)
    tr.client.update_run(old, status="RUNNING")
    tr.trial(exp, old, dataset="thumos14", source=SYNTH, variant="full", seed=0, metrics=thumos_metrics(0.3, 0.5))
    intro = _intro_paragraphs(build_report(uri, parent_run_id=old, out_dir=tmp_path / "old", formats=("md", "html",
                                                                                                       "tex")))
    assert all("is RUNNING and 1 trial finished (the run has no emmil.planned_trials tag" in p[0]
               for p in (intro["md"], intro["html"])), intro
    assert r"is RUNNING and 1 trial finished (the run has no emmil.planned\_trials tag" in intro["tex"][0]


# ---------------------------------------------------------------- issue 14.10: CSV tables and LaTeX fragments
def _csv_text(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV's header and rows as the text written (not parsed by pandas, which would read 3 and 3.0 alike)."""
    import csv

    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_table_csvs_have_std_columns_and_integer_n(built):
    out, _, _ = built
    paths = sorted((out / "tables").glob("*.csv"))
    assert paths
    for path in paths:
        header, rows = _csv_text(path)
        means = [c for c in header if c.startswith("test_") and not c.endswith("_std")]
        assert all(f"{m}_std" in header for m in means), (path.name, header)
        if "n" in header:
            assert all(re.fullmatch(r"\d*", r["n"]) for r in rows), (path.name, [r["n"] for r in rows])
    [t1] = [p for p in paths if p.name.startswith("table1_thumos14_semi-synthetic")]
    header, rows = _csv_text(t1)
    by_method = {r["method"]: r for r in rows}
    full = by_method["full"]
    assert full["n"] == "3" and by_method["EM-MIL (paper)"]["n"] == ""
    assert float(full["test_mAP_0.50_std"]) == pytest.approx(np.std(list(MAP05["full"].values()), ddof=1))
    assert float(full["test_avg_mAP_std"]) == pytest.approx(
        np.std([thumos_metrics(v, 0)["test_avg_mAP"] for v in MAP05["full"].values()], ddof=1))
    assert header.index("test_mAP_0.50_std") == header.index("test_mAP_0.50") + 1  # beside its mean
    assert by_method["EM-MIL (paper)"]["test_mAP_0.50_std"] == ""
    # n = 1 (the real-feature block): the std is empty, not 0 and not nan
    [real] = [p for p in paths if p.name.startswith("table1_thumos14_real")]
    assert {r["method"]: (r["n"], r["test_mAP_0.50_std"]) for r in _csv_text(real)[1]
            if r["data"] == REAL} == {"full": ("1", ""), "joint": ("1", "")}
    [t3] = [p for p in paths if p.name.startswith("table3_thumos14_semi-synthetic")]
    t3_rows = {r["variant"]: r for r in _csv_text(t3)[1]}
    assert float(t3_rows["joint"]["test_mAP_0.50_std"]) == pytest.approx(np.std(list(MAP05["joint"].values()), ddof=1))


def test_latex_fragment_per_table_matches_its_rows(built):
    out, _, _ = built
    tex = (out / "report.tex").read_text()
    inputs = re.findall(r"\\input\{tables/([^}]+)\.tex\}", tex)
    fragments = {p.stem: p.read_text() for p in (out / "tables").glob("*.tex")}
    assert sorted(inputs) == sorted(fragments) and len(inputs) == len(set(inputs))
    # every table of the report has one (each table has a CSV too)
    assert {p.stem for p in (out / "tables").glob("*.csv")} <= set(fragments)
    for name, text in fragments.items():
        assert r"\documentclass" not in text and r"\begin{document}" not in text, name
        assert r"\begin{table}" in text and text.rstrip().endswith(r"\end{table}") and r"\toprule" in text, name
    # The fragment's data rows are the CSV's rows, in order: Table 1 (THUMOS14, semi-synthetic)
    name = next(n for n in fragments if n.startswith("table1_thumos14_semi-synthetic"))
    body = fragments[name].splitlines()
    body = body[body.index(r"\midrule") + 1:body.index(r"\bottomrule")]
    cells = [ln.removesuffix(r" \\").split(" & ") for ln in body if ln != r"\midrule"]
    csv_rows = _csv_text(out / "tables" / f"{name}.csv")[1]
    assert [c[0] for c in cells] == [r["method"].replace("_", r"\_") for r in csv_rows]
    full = next(c for c in cells if c[0] == "full")
    sd = np.std([v * 1.4 for v in MAP05["full"].values()], ddof=1)
    assert full[2:4] == ["3", f"43.4 $\\pm$ {100 * sd:.1f}"]  # n, mAP@0.1 (mean ± std, percent)
