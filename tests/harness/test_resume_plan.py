"""--resume from our own plan (issues 14.1, 15.1): a resume never unpickles Ray Tune's state, extends a
plan with new seeds (finished trials kept, not rerun), refuses a changed setting by name; a request
that no node can meet is refused before anything starts (14.2)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from conftest import TINY
from emmil.errors import ConfigError
from harness import tracking
from harness.cli.ablate import Launch, run_ablation
from harness.experiments import parse_experiment

ONE = parse_experiment({"name": "plan", "variants": [{"name": "full", "overrides": {"variant": "full"}}]}, "plan")


class _Payload:
    """Unpickling this creates the file `marker`: what a crafted tuner.pkl would do on Tuner.restore."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _children(uri: str, parent_id: str) -> dict:
    c = tracking.client(uri)
    parent = c.get_run(parent_id)
    runs = tracking.child_runs(uri, parent.info.experiment_id, parent_id)
    return {r.data.tags["emmil.trial_id"]: c.get_run(r.info.run_id) for r in runs}


def test_resume_extends_the_plan_and_never_unpickles_tune_state(ray_cluster, tiny_data, tmp_path, template_store):
    import pickle

    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(template_store, results / "mlflow.db")
    launch = Launch(results=results, overrides=TINY, report=False)
    quiet = lambda *_: None  # noqa: E731
    first = run_ablation(ONE, dataset="thumos14", preset="quick", seeds=1, launch=launch,
                         load_data=lambda: tiny_data, command="emmil ablate plan", out=quiet)
    assert first.exit_code == 0
    s0_before = _children(first.tracking_uri, first.parent_run_id)["plan/full-s0"]

    # crafted pickles where Tune keeps its experiment state: Tuner.restore would unpickle them
    marker = tmp_path / "PAYLOAD-RAN"
    tune_dir = results / "plan" / "ablation"
    (tune_dir / "tuner.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    for state_file in tune_dir.glob("experiment_state-*.json"):
        state_file.write_text(json.dumps({"trial_data": [pickle.dumps(_Payload(marker)).hex()]}))

    lines: list[str] = []
    second = run_ablation(ONE, dataset="thumos14", preset="quick", seeds=2,
                          launch=dataclasses.replace(launch, resume=True), load_data=lambda: tiny_data,
                          command="emmil ablate plan --seeds 2 --resume", out=lines.append)
    assert not marker.exists()  # nothing of Tune's state was unpickled
    assert second.exit_code == 0, lines
    assert "resume: 1 of 2 trials already finished (kept, not run again), 1 to run" in lines
    children = _children(second.tracking_uri, second.parent_run_id)
    assert sorted(children) == ["plan/full-s0", "plan/full-s1"]
    s0 = children["plan/full-s0"]
    assert s0.info.run_id == s0_before.info.run_id and s0.info.end_time == s0_before.info.end_time  # not rerun
    c = tracking.client(second.tracking_uri)
    for run in children.values():
        assert [m.step for m in c.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
        assert run.info.status == "FINISHED"
    assert sorted(r["trial_key"] for r in second.rows) == ["plan/full-s0", "plan/full-s1"]
    assert all("test_avg_mAP" in r for r in second.rows)
    state = json.loads((results / "plan" / "harness.json").read_text())
    assert sorted(state["plan"]) == ["plan/full-s0", "plan/full-s1"] and state["stage"] == "done"
    assert (results / "plan" / "ablation-resume1").is_dir()  # a fresh Tune experiment, not a restored one

    # a changed setting is another run: refused by name before anything runs
    changed = dataclasses.replace(launch, resume=True, overrides={**TINY, "train.epochs": 5})
    with pytest.raises(ConfigError, match=r"other settings \(set.train.epochs: was 3, now 5\)"):
        run_ablation(ONE, dataset="thumos14", preset="quick", seeds=2, launch=changed,
                     load_data=lambda: tiny_data, command="x", out=quiet)
    with pytest.raises(ConfigError, match=r"preset: was \"quick\", now \"paper\""):
        run_ablation(ONE, dataset="thumos14", preset="paper", seeds=2, launch=dataclasses.replace(launch, resume=True),
                     load_data=lambda: tiny_data, command="x", out=quiet)
    # everything finished: the resume reports the same trials and starts no Tune experiment
    third = run_ablation(ONE, dataset="thumos14", preset="quick", seeds=2, launch=dataclasses.replace(launch, resume=True),
                         load_data=lambda: tiny_data, command="x", out=quiet)
    assert third.exit_code == 0 and len(third.rows) == 2
    assert not (results / "plan" / "ablation-resume2").exists()


def test_a_request_no_node_can_meet_is_refused_before_the_parent_run_opens(ray_cluster, tiny_data, tmp_path,
                                                                           template_store):
    from harness.ray_tune import Resources, check_resources

    check_resources(Resources(2, 4))  # the shared instance: 2 CPUs, 4 logical GPUs, one node
    with pytest.raises(ConfigError, match=r"--cpus-per-trial 3 --gpus-per-trial 0: no node .*2 CPUs \+ 4 GPUs"):
        check_resources(Resources(3, 0))
    with pytest.raises(ConfigError, match=r"--gpus-per-trial 5: no node"):
        check_resources(Resources(1, 5))
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(template_store, results / "mlflow.db")
    launch = Launch(results=results, overrides=TINY, report=False, cpus_per_trial=8)
    with pytest.raises(ConfigError, match="--cpus-per-trial 8"):
        run_ablation(ONE, dataset="thumos14", preset="quick", seeds=1, launch=launch,
                     load_data=lambda: tiny_data, command="x", out=lambda *_: None)
    assert not (results / "plan" / "harness.json").exists()  # no parent run left RUNNING, nothing to resume


def test_ray_address_auto_without_a_cluster_is_a_clear_error(monkeypatch):
    # A subprocess would find this test session's own Ray through /tmp/ray/ray_current_cluster, so the
    # "no cluster" answer of ray.init is stood in for: the ConnectionError Ray raises for "auto".
    import ray

    from harness.ray_tune import ray_session

    def no_cluster(*_args, **_kwargs):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    with pytest.raises(ConfigError, match=r"\$RAY_ADDRESS auto: no running Ray cluster found .*ray start --head"):
        with ray_session():
            pass
    with pytest.raises(ConfigError, match=r"--address auto: no running Ray cluster found"):
        with ray_session("auto"):
            pass


def test_check_resume_compares_settings_as_stored_and_names_the_changed_key(tmp_path):
    from harness.runner import RESUME_FORMAT, RunPlace, check_resume

    place = RunPlace(results=tmp_path, name="sweep-x", tracking_uri="", mlflow_experiment="emmil-sweep-x")
    # harness.json stores JSON: a tuple in today's settings reads back as a list and is the same setting
    stored = {"format": RESUME_FORMAT, "signature": {"space": {"params": [{"choices": [], "low": 0.0}]}},
              "plan": {"t0": "aaaa"}}
    check_resume(stored, place, {"space": {"params": [{"choices": (), "low": 0.0}]}}, {"t0": "aaaa", "t1": "bbbb"})
    with pytest.raises(ConfigError, match=r"space.params: was \[\{\"choices\": \[\], \"low\": 0.0\}\], now "):
        check_resume(stored, place, {"space": {"params": [{"choices": [], "low": 0.1}]}}, {})
    with pytest.raises(ConfigError, match=r"1 trial\(s\) changed .*t0 \(config aaaa -> cccc\)"):
        check_resume(stored, place, stored["signature"], {"t0": "cccc"})
    with pytest.raises(ConfigError, match="older emmil-bench"):
        check_resume({"signature": {}}, place, {}, {})
