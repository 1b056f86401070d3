"""Ablations and sweeps on the shared Ray instance (2 CPUs, 4 logical GPUs): the MLflow tree, GPU
placement, a crashed trial retried from its checkpoint, a sweep with ASHA and a persisted study, a
driver killed mid-ablation and resumed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness import tracking
from harness.cli.ablate import Launch, run_ablation
from harness.experiments import parse_experiment, parse_space

from conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
MINI = parse_experiment(
    {"name": "mini", "variants": [{"name": "full", "overrides": {"variant": "full"}},
                                  {"name": "joint", "overrides": {"variant": "joint"}}]},
    "mini",
)


def _results(tmp_path_factory, template: Path, name: str) -> Path:
    out = tmp_path_factory.mktemp(name) / "results"
    out.mkdir()
    shutil.copy(template, out / "mlflow.db")
    return out


@pytest.fixture(scope="module")
def ablation(ray_cluster, tiny_data, tmp_path_factory, template_store):
    """2 variants x 2 seeds, 0.5 logical GPU per trial, trial joint-s1 crashes once at epoch 2."""
    results = _results(tmp_path_factory, template_store, "ablation")
    launch = Launch(results=results, overrides=TINY, gpus_per_trial=0.5, cpus_per_trial=1, report=False,
                    fail_once={"epoch": 2, "marker_dir": str(results / "markers"), "trial": "mini/joint-s1"})
    outcome = run_ablation(MINI, dataset="thumos14", preset="quick", seeds=2, launch=launch,
                           load_data=lambda: tiny_data, command="emmil ablate mini")
    return outcome


def _children(outcome):
    c = tracking.client(outcome.tracking_uri)
    parent = c.get_run(outcome.parent_run_id)
    runs = tracking.child_runs(outcome.tracking_uri, parent.info.experiment_id, outcome.parent_run_id)
    return c, parent, {r.data.tags["emmil.trial_id"]: c.get_run(r.info.run_id) for r in runs}


def test_ablation_writes_one_parent_and_one_child_per_trial(ablation):
    assert ablation.exit_code == 0
    c, parent, children = _children(ablation)
    assert parent.data.tags["emmil.role"] == "parent" and parent.data.tags["emmil.kind"] == "ablation"
    assert parent.data.tags["emmil.experiment"] == "mini"
    assert parent.data.tags["emmil.data_source"].startswith("semi-synthetic")
    assert parent.info.status == "FINISHED"
    assert c.get_experiment(parent.info.experiment_id).name == "emmil-mini"
    assert sorted(children) == ["mini/full-s0", "mini/full-s1", "mini/joint-s0", "mini/joint-s1"]
    for trial_id, run in children.items():
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        variant, seed = trial_id.split("/")[1].split("-s")
        assert run.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == ablation.parent_run_id
        assert (tags["emmil.role"], tags["emmil.stage"], tags["emmil.variant"], tags["emmil.seed"]) == (
            "trial", "ablation", variant, seed)
        for key in ("emmil.dataset", "emmil.eval_protocol", "emmil.git_commit", "emmil.device",
                    "emmil.config_hash", "emmil.command", "emmil.experiment", "emmil.data_source"):
            assert tags[key], key
        assert params["variant"] == variant and params["seed"] == seed and params["train.epochs"] == "3"
        assert 0.0 <= metrics["test_avg_mAP"] <= 1.0 and "test_mAP_0.50" in metrics
        assert "loss" in metrics and "lr" in metrics
        assert sorted(a.path for a in c.list_artifacts(run.info.run_id)) == [
            "config.yaml", "metrics.json", "model.pt", "per_class_ap.json", "predictions.json", "timelines.json"]
    # the trial's model (--keep-models all, the ablation default) is enough to predict: emmil predict loads it
    from emmil.model_file import load_model

    model_path = c.download_artifacts(run.info.run_id, "model.pt", str(ablation.root / "downloaded"))
    loaded = load_model(model_path)
    assert loaded.config.variant == variant and str(loaded.config.seed) == seed
    assert "full" in ablation.summary and "joint" in ablation.summary and "(2)" in ablation.summary
    # every trial trained on the object store's read-only buffer, not on a private copy of the data
    assert [r["features_zero_copy"] for r in ablation.rows] == [1.0] * 4


def test_crashed_trial_resumes_from_its_checkpoint_in_the_same_run(ablation):
    c, _, children = _children(ablation)
    crashed = children["mini/joint-s1"]
    # the crash hit epoch 2 of the first attempt; the retry continued from the epoch-1 checkpoint:
    # one run, and every epoch logged exactly once
    history = c.get_metric_history(crashed.info.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert len(c.get_metric_history(crashed.info.run_id, "test_avg_mAP")) == 1
    row = next(r for r in ablation.rows if r["trial_key"] == "mini/joint-s1")
    assert row["epoch"] == 3 and not row["error"]
    assert "iterations_since_restore" in row and row["iterations_since_restore"] < 3  # restored, not rerun


def test_tune_keeps_every_epoch_marker_and_the_state_lives_in_one_file_per_trial(ablation):
    # Tune may restore any checkpoint its last snapshot names; none may be pruned (the driver-kill race
    # of harness/ray_tune.py's module doc). The training state itself is one file per trial.
    import json

    import torch

    for trial in ("mini/full-s0", "mini/full-s1", "mini/joint-s0", "mini/joint-s1"):
        safe = trial.replace("/", "_")
        dirs = list((ablation.root / "ablation").glob(f"*trial_id_{safe}*/checkpoint_*"))
        epochs = sorted(json.loads((d / "epoch.json").read_text())["epoch"] for d in dirs)
        assert epochs == [1, 2, 3], (trial, dirs)  # joint-s1 too: its retry added epochs 2 and 3
        blob = torch.load(ablation.root / "trial-state" / f"{safe}.pt", weights_only=True)
        assert blob["state"]["epoch"] == 3 and blob["run_id"] and blob["report"]["epoch"] == 3
    assert sorted(p.name for p in (ablation.root / "trial-state").iterdir()) == [
        "mini_full-s0.pt", "mini_full-s1.pt", "mini_joint-s0.pt", "mini_joint-s1.pt"]


def test_bench_records_equal_the_ablation_trials(ablation, tiny_data, tmp_path):
    # bench/paper_references.py trains an experiment's trials outside Ray (records that outlive a session)
    # and claims they are the trials `emmil ablate` runs: same config hash, same test and val metrics to the
    # bit, for each variant x seed of the fixture's ablation (joint-s1 there crashed once and resumed).
    sys.path.insert(0, str(ROOT))
    from bench.paper_references import planned_trials, trial_record

    _, _, children = _children(ablation)
    plan = planned_trials(MINI, "thumos14", "quick", 2, TINY)
    assert [spec.name for spec, _ in plan] == ["full-s0", "joint-s0", "full-s1", "joint-s1"]
    for spec, cfg in plan:
        run = children[f"mini/{spec.name}"]
        rec = trial_record(cfg, tiny_data, tmp_path / spec.name, trial=spec.name, variant=spec.variant,
                           identity={}, commit="")
        assert rec["config_hash"] == run.data.tags["emmil.config_hash"], spec.name
        assert rec["params"] == {k: v for k, v in run.data.params.items() if k in rec["params"]}
        compared = [k for k in rec["metrics"] if k.startswith(("test_", "val_"))]
        assert "test_avg_mAP" in compared and "test_cls_mAP" in compared
        assert {k: rec["metrics"][k] for k in compared} == {k: run.data.metrics[k] for k in compared}, spec.name


def test_each_trial_runs_on_the_gpu_ray_assigned(ablation):
    # 0.5 logical GPU per trial: Ray sets CUDA_VISIBLE_DEVICES to one id and the core's device choice
    # follows it (no CUDA in this CPU build: "cpu"; on a GPU machine: cuda:0 = the assigned GPU).
    for row in ablation.rows:
        assert row["cuda_visible_devices"] in {"0", "1", "2", "3"}
        assert row["gpu_ids"] == row["cuda_visible_devices"]
        assert row["device"] == "cpu"
    _, _, children = _children(ablation)
    assert {r.data.tags["emmil.gpu_ids"] for r in children.values()} <= {"0", "1", "2", "3"}


def test_sweep_with_asha_persists_its_study_and_labels_the_stages(ray_cluster, tmp_path_factory, template_store):
    import optuna

    from emmil.data.synth import make_synthetic
    from harness.cli.sweep import run_sweep

    results = _results(tmp_path_factory, template_store, "sweep")
    data = make_synthetic("thumos14", dim=8, seed=0, max_videos=20)  # 15 train + 5 held-out videos
    space = parse_space({
        "name": "tiny", "fixed": {"train.val_fraction": 0.3, "train.eval_every": 1},
        "final_overrides": {"train.val_fraction": 0.0},
        "params": {"train.gamma": {"distribution": "uniform", "low": 0.0, "high": 0.4},
                   "localize.lam": {"distribution": "uniform", "low": 0.2, "high": 1.0}}}, "tiny.yaml")
    launch = Launch(results=results, overrides={**TINY, "train.epochs": 4}, report=False)
    outcome = run_sweep(space, dataset="thumos14", preset="quick", trials=4, scheduler="asha", study="tiny",
                        storage=None, sampler_seed=0, final_seeds=1, launch=launch, load_data=lambda: data,
                        command="emmil sweep")
    assert outcome.exit_code == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{results}/optuna.db")
    assert len(study.trials) == 4
    assert set(study.best_params) == {"train.gamma", "localize.lam"}  # usable as --set keys
    states = optuna.trial.TrialState
    for t in study.trials:  # ASHA-stopped trials are PRUNED in Optuna, as they are KILLED in MLflow
        assert t.state in (states.COMPLETE, states.PRUNED) and t.user_attrs["mlflow_run_id"]

    c, parent, children = _children(outcome)
    search = {k: r for k, r in children.items() if r.data.tags["emmil.stage"] == "search"}
    final = {k: r for k, r in children.items() if r.data.tags["emmil.stage"] == "final-test"}
    assert len(search) == 4 and len(final) == 1
    (final_id,) = final
    assert final_id.startswith("tiny/final-test/") and final_id.endswith("/s0")
    for run in search.values():
        assert "test_avg_mAP" not in run.data.metrics  # never looked at the test split while searching
        steps = [m.step for m in c.get_metric_history(run.info.run_id, "val_avg_mAP")]
        assert steps == sorted(set(steps)) and steps[0] == 1  # reported every epoch, once
        optuna_trial = next(t for t in study.trials if t.user_attrs["mlflow_run_id"] == run.info.run_id)
        if run.info.status == "KILLED":  # pruned by ASHA
            assert run.data.tags["emmil.stopped_early"] == "true" and len(steps) < 4
            assert optuna_trial.state == optuna.trial.TrialState.PRUNED
            assert optuna_trial.user_attrs["trial_id"] == run.data.tags["emmil.trial_id"]
        else:
            assert run.info.status == "FINISHED" and len(steps) == 4
            assert optuna_trial.state == optuna.trial.TrialState.COMPLETE
    fin = final[final_id]
    assert fin.info.status == "FINISHED" and "test_avg_mAP" in fin.data.metrics
    assert fin.data.params["train.val_fraction"] == "0.0"  # retrained on the full training split
    best_lam = parent.data.tags["emmil.best.localize.lam"]
    assert float(fin.data.params["localize.lam"]) == pytest.approx(float(best_lam))
    assert parent.data.tags["emmil.kind"] == "sweep" and parent.info.status == "FINISHED"
    # 0-GPU trials see no GPU at all (RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO)
    assert outcome.rows[0]["cuda_visible_devices"] == ""


DRIVER = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import TINY
from emmil.data.synth import make_synthetic
from harness.cli.ablate import Launch, run_ablation
from harness.experiments import parse_experiment
exp = parse_experiment({{"name": "resume", "variants": [{{"name": "full", "overrides": {{}}}}]}}, "resume")
launch = Launch(results=Path({results!r}), overrides={{**TINY, "train.epochs": 60}}, max_concurrent=1, report=False)
run_ablation(exp, dataset="thumos14", preset="quick", seeds=3, launch=launch,
             load_data=lambda: make_synthetic("thumos14", dim=8, seed=0, max_videos=6), command="emmil ablate resume")
"""


@pytest.mark.slow
def test_killed_driver_is_resumed_and_only_missing_trials_run(ray_cluster, tiny_data, tmp_path_factory,
                                                              template_store):
    results = _results(tmp_path_factory, template_store, "resume")
    script = results.parent / "driver.py"
    script.write_text(DRIVER.format(tests=str(Path(__file__).parent), results=str(results)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    finished_first = None
    try:
        deadline = time.time() + 240
        for line in proc.stdout:  # wait for the first finished trial, then kill the whole driver
            if line.startswith("[1/3]"):
                finished_first = line.split()[2]
                break
            assert time.time() < deadline, "the first trial did not finish in time"
        time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the private Ray it started
        proc.wait(timeout=30)
    assert finished_first is not None, "driver ended before finishing a trial"
    import json

    assert json.loads((results / "resume" / "harness.json").read_text())["stage"] == "started"  # unfinished

    launch = Launch(results=results, overrides={**TINY, "train.epochs": 60}, max_concurrent=1, report=False,
                    resume=True)
    exp = parse_experiment({"name": "resume", "variants": [{"name": "full", "overrides": {}}]}, "resume")
    outcome = run_ablation(exp, dataset="thumos14", preset="quick", seeds=3, launch=launch,
                           load_data=lambda: tiny_data, command="emmil ablate resume --resume")
    assert outcome.exit_code == 0
    c, parent, children = _children(outcome)
    assert sorted(children) == ["resume/full-s0", "resume/full-s1", "resume/full-s2"]  # one run per trial
    assert all(r.info.status == "FINISHED" and "test_avg_mAP" in r.data.metrics for r in children.values())
    first = children[finished_first]
    # 60 epochs: a tiny trial's epoch takes ~0.03 s (6 videos, dim 8); with 4, all 3 trials ended before the kill
    assert [m.step for m in c.get_metric_history(first.info.run_id, "loss")] == list(range(1, 61))  # not rerun
    for run in children.values():  # every epoch once, whether it ran before or after the kill
        assert sorted(m.step for m in c.get_metric_history(run.info.run_id, "loss")) == list(range(1, 61))
    assert parent.info.status == "FINISHED"
    assert len(outcome.rows) == 3 and all("test_avg_mAP" in r for r in outcome.rows)
