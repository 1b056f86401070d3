"""SIGKILL a trial's worker process mid-training, twice in one `emmil ablate` (issue 6).

The experiment has two variants with IDENTICAL configs (same variant, same seed): trial `a` is killed
twice, trial `b` runs uninterrupted beside it and is the reference. Expected: both trials complete;
each has exactly one MLflow child run whose per-epoch history is contiguous (every epoch once); the
killed trial's final and per-epoch metrics equal the uninterrupted one's exactly (CPU, same seed);
no secret from the driver's environment reaches a param, tag or artifact.
"""

from __future__ import annotations

import json
import time

import pytest

from faultlib import (
    SECRET_ENV, TINY_SET, TWIN, Cli, env_for, latest_checkpoint, mlflow_tree, report, steps, trial_worker, wait_for,
)

EPOCHS = 14


def _kill_after(trial: str, tune_dir, at_least: int, timeout: float = 150) -> int:
    """Wait until `trial` has persisted checkpoint index >= at_least and a worker runs it; SIGKILL it.
    Returns the checkpoint index it had (epochs done - 1)."""
    proc = wait_for(lambda: latest_checkpoint(tune_dir, trial) >= at_least and trial_worker(trial), timeout,
                    f"trial {trial} past checkpoint {at_least}", poll=0.02)
    done = latest_checkpoint(tune_dir, trial)
    assert done < EPOCHS - 1, "the trial finished before it could be killed: raise EPOCHS"
    proc.kill()  # SIGKILL, mid-training: the trial is between two epoch checkpoints
    return done


def test_sigkilled_worker_resumes_and_matches_an_uninterrupted_run(tmp_path, fault_data, ray_tmp):
    (tmp_path / "twin.yaml").write_text(TWIN)
    results = tmp_path / "results"
    cli = Cli(["ablate", str(tmp_path / "twin.yaml"), "--data-dir", str(fault_data), "--results", str(results),
               "--set", f"train.epochs={EPOCHS}", *TINY_SET, "--max-failures", "3", "--no-report"],
              env_for(ray_tmp), tmp_path / "ablate.log")
    tune_dir = results / "twin" / "ablation"
    try:
        first = _kill_after("twin/a-s0", tune_dir, 2)
        # the retry starts a fresh worker from the last checkpoint; kill it again further on
        second = _kill_after("twin/a-s0", tune_dir, first + 3)
        code = cli.wait(timeout=300)
    finally:
        if cli.proc.poll() is None:
            cli.kill_group()
    out = cli.output()
    assert code == 0, out[-3000:]
    assert "2/2 trials ok" in out

    uri = f"sqlite:///{results}/mlflow.db"
    c, parents, children = mlflow_tree(uri, "emmil-twin")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(children) == ["twin/a-s0", "twin/b-s0"]
    duplicated = sum(len(runs) - 1 for runs in children.values())
    assert duplicated == 0, {k: [r.info.run_id for r in v] for k, v in children.items()}
    a, b = children["twin/a-s0"][0], children["twin/b-s0"][0]
    for run in (a, b):
        assert run.info.status == "FINISHED"
        for key in ("loss", "loss_rgb", "epoch_seconds", "lr"):
            assert steps(c, run.info.run_id, key) == list(range(1, EPOCHS + 1)), key  # contiguous, each once
        assert steps(c, run.info.run_id, "test_avg_mAP") == [EPOCHS]
    # exact equality with the uninterrupted twin, at every epoch and at the end
    for key in ("loss", "loss_rgb", "loss_flow", "loss_gate"):
        va = [m.value for m in sorted(c.get_metric_history(a.info.run_id, key), key=lambda m: m.step)]
        vb = [m.value for m in sorted(c.get_metric_history(b.info.run_id, key), key=lambda m: m.step)]
        assert va == vb, key
    final = {k: v for k, v in a.data.metrics.items() if k.startswith("test_")}
    assert len(final) >= 10 and final == {k: v for k, v in b.data.metrics.items() if k.startswith("test_")}
    assert a.data.params == b.data.params

    # no secret logged: params, tags (parent and children) and the config artifact
    logged = json.dumps([[r.data.params, r.data.tags] for r in [*parents, a, b]])
    for value in SECRET_ENV.values():
        assert value not in logged
    assert not any(v in (results / "twin").joinpath("harness.json").read_text() for v in SECRET_ENV.values())

    report("worker SIGKILL x2 (ablate)", injected=2, completed=2, total=2, lost=0, duplicated=duplicated,
           extra=f"killed after epochs {first + 1} and {second + 1} of {EPOCHS}, final metrics equal to the "
                 "uninterrupted twin")


QUAD = """name: quad
description: four identical trials, packed two by two; the first pack is killed, the second is the reference
dataset: thumos14
preset: quick
seeds: 1
variants:
  - {name: a, overrides: {variant: full}}
  - {name: b, overrides: {variant: full}}
  - {name: c, overrides: {variant: full}}
  - {name: d, overrides: {variant: full}}
"""


def test_sigkilled_worker_of_a_pack_resumes_every_member(tmp_path, fault_data, ray_tmp):
    """--pack 2 (issue 11): four identical trials are two packs, [a, b] and [c, d]; the first pack's
    worker is SIGKILLed twice. Every member of it resumes from the pack's state file, in its own run,
    and ends equal to its twin in the untouched pack (same configs, same pack layout)."""
    from harness.packed_trials import pack_id

    (tmp_path / "quad.yaml").write_text(QUAD)
    results = tmp_path / "results"
    cli = Cli(["ablate", str(tmp_path / "quad.yaml"), "--data-dir", str(fault_data), "--results", str(results),
               "--pack", "2", "--set", f"train.epochs={EPOCHS}", *TINY_SET, "--max-failures", "3",
               "--no-report"], env_for(ray_tmp), tmp_path / "ablate.log")
    tune_dir = results / "quad" / "ablation"
    killed = pack_id("quad", ["quad/a-s0", "quad/b-s0"])
    try:
        first = _kill_after(killed, tune_dir, 2)
        second = _kill_after(killed, tune_dir, first + 3)
        code = cli.wait(timeout=300)
    finally:
        if cli.proc.poll() is None:
            cli.kill_group()
    out = cli.output()
    assert code == 0, out[-3000:]
    assert "4 trials in 2 pack(s) of up to 2" in out and "4/4 trials ok" in out

    c, parents, children = mlflow_tree(f"sqlite:///{results}/mlflow.db", "emmil-quad")
    assert sorted(children) == ["quad/a-s0", "quad/b-s0", "quad/c-s0", "quad/d-s0"]
    duplicated = sum(len(runs) - 1 for runs in children.values())
    assert duplicated == 0
    for index, (member, twin) in enumerate((("a", "c"), ("b", "d"))):
        a, b = children[f"quad/{member}-s0"][0], children[f"quad/{twin}-s0"][0]
        assert a.data.tags["emmil.pack"] == killed and a.data.tags["emmil.pack_member"] == str(index)
        assert b.data.tags["emmil.pack"] != killed and b.data.tags["emmil.pack_member"] == str(index)
        for run in (a, b):
            assert run.info.status == "FINISHED"
            for key in ("loss", "lr"):
                assert steps(c, run.info.run_id, key) == list(range(1, EPOCHS + 1)), key  # each epoch once
        for key in ("loss", "loss_gate"):
            va = [m.value for m in sorted(c.get_metric_history(a.info.run_id, key), key=lambda m: m.step)]
            vb = [m.value for m in sorted(c.get_metric_history(b.info.run_id, key), key=lambda m: m.step)]
            assert va == vb, (member, key)
        final = {k: v for k, v in a.data.metrics.items() if k.startswith("test_")}
        assert len(final) >= 10 and final == {k: v for k, v in b.data.metrics.items() if k.startswith("test_")}
    report("worker SIGKILL x2 of a pack of 2 (ablate --pack 2)", injected=2, completed=4, total=4, lost=0,
           duplicated=duplicated, extra=f"killed after epochs {first + 1} and {second + 1} of {EPOCHS}; both "
                                        "members equal their twins in the untouched pack")
