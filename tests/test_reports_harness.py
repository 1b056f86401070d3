"""A report built by a tiny REAL ablation (harness -> Ray Tune -> MLflow -> reports), numbers checked
against the runs the harness tracked."""

from __future__ import annotations

import math

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def test_tiny_real_ablation_report_matches_its_tracked_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    from emmil.data.synth import write_synthetic
    from emmil.data.loading import load_dataset
    from harness.cli.ablate import Launch, run_ablation
    from harness.experiments import load_experiment

    data_dir = write_synthetic("thumos14", tmp_path / "data", dim=16, seed=0, max_videos=6)
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\ndataset: thumos14\nseeds: 1\nvariants:\n"
                    "  - {name: full, overrides: {variant: full}}\n"
                    "  - {name: attention-mil, overrides: {variant: attention-mil}}\n")
    launch = Launch(results=tmp_path / "results", max_concurrent=2, max_failures=0,
                    overrides={"train.epochs": 2, "train.cycle_epochs": 1, "train.cycle": 1})
    outcome = run_ablation(load_experiment(str(spec)), dataset="thumos14", preset="quick", seeds=1, launch=launch,
                           load_data=lambda: load_dataset("thumos14", str(data_dir)), out=lambda *_: None)
    assert outcome.exit_code == 0
    report = outcome.root / "report"
    md = (report / "report.md").read_text()
    for title in ("Table 1: THUMOS14", "Table 3: ablation", "Paired differences vs full", "Completeness",
                  "Timelines (Figure 5 style)", "Provenance"):
        assert f"## {title}" in md

    # Independently: the metrics MLflow holds for the two trial runs.
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    children = client.search_runs([client.get_run(outcome.parent_run_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'")
    logged = {r.data.tags["emmil.variant"]: r.data.metrics for r in children}
    source = children[0].data.tags["emmil.data_source"]
    assert source.startswith("semi-synthetic") and set(logged) == {"full", "attention-mil"}
    # Every planned trial finished (the harness tags the plan, issue 14.9): the report says nothing is partial.
    assert client.get_run(outcome.parent_run_id).data.tags.get("emmil.planned_trials") == "2"
    assert "Partial results" not in md
    # The parent run carries its report and MLflow's own source-version tag (issue 14.10).
    parent = client.get_run(outcome.parent_run_id)
    commit = parent.data.tags["emmil.git_commit"]  # 'unknown' outside a git checkout: then no MLflow tag
    assert parent.data.tags.get("mlflow.source.git.commit") == (None if commit == "unknown" else commit)
    attached = {a.path for a in client.list_artifacts(outcome.parent_run_id, "report")}
    assert {"report/report.md", "report/tables"} <= attached, attached
    table1 = next(pd.read_csv(p) for p in (report / "tables").glob("table1_*.csv"))
    ours = table1[table1["data"] == source].set_index("method")
    for variant, metrics in logged.items():
        for key in ("test_mAP_0.10", "test_mAP_0.50", "test_avg_mAP"):
            assert ours.loc[variant, key] == pytest.approx(metrics[key]), (variant, key)
    paired = next(pd.read_csv(p) for p in (report / "tables").glob("paired_*.csv")).set_index("metric")
    # One seed: the difference is the plain difference, and there is no interval.
    expected = logged["attention-mil"]["test_mAP_0.50"] - logged["full"]["test_mAP_0.50"]
    assert paired.loc["test_mAP_0.50", "mean_diff"] == pytest.approx(expected)
    assert paired.loc["test_mAP_0.50", "n"] == 1 and math.isnan(paired.loc["test_mAP_0.50", "ci_low"])
    assert any(p.name.startswith("timelines_") for p in (report / "figures").iterdir())
    comp = next(pd.read_csv(p) for p in (report / "tables").glob("completeness_*.csv")).set_index("variant")
    assert comp.loc["full", "test_coverage"] == pytest.approx(logged["full"]["test_coverage"])

    # Issue 12: every trial logged per_class_ap.json; the mean over the classes with a test segment is the
    # logged test mAP at each tIoU, and the report's per-class table holds each class's tIoU-averaged AP
    # (one seed: the run's own value, no spread).
    import json
    from pathlib import Path

    pc = next(pd.read_csv(p) for p in (report / "tables").glob("per_class_thumos14_*.csv")).set_index(
        ["variant", "class"])
    for run in children:
        variant = run.data.tags["emmil.variant"]
        path = client.download_artifacts(run.info.run_id, "per_class_ap.json", str(tmp_path / run.info.run_id))
        doc = json.loads(Path(path).read_text())
        defined = {c: ap for c, ap in doc["per_class_AP"].items() if ap[0] is not None}
        assert defined
        for k, t in enumerate(doc["tiou"]):
            mean = sum(ap[k] for ap in defined.values()) / len(defined)
            assert mean == pytest.approx(logged[variant][f"test_mAP_{t:.2f}"], abs=1e-9), (variant, t)
        for c, ap in defined.items():
            assert pc.loc[(variant, c), "AP_avg"] == pytest.approx(sum(ap) / len(ap)), (variant, c)
            assert pc.loc[(variant, c), "n"] == 1 and math.isnan(pc.loc[(variant, c), "AP_avg_std"])
    assert "## Per-class AP" in md and "no per_class_ap.json artifact" not in md
