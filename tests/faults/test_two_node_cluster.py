"""A two-node Ray cluster on one machine (issue 6): trials run on both nodes, and a trial survives
the loss of the worker node.

`ray start --head --block` and `ray start --address --block` on loopback, each with its own temp dir
and 1 CPU, both started here (their processes are found and killed by pid: never `ray stop`, which
kills every Ray on the host). RAY_AUTH_MODE is the same ("disabled", loopback only) in every process
(DESIGN.md section 10). `emmil ablate --address` runs two identical 1-CPU trials, one per node; once
both run, the worker node is SIGKILLed (its raylet and workers); the trial it ran is retried on the
head node from its last checkpoint. Expected: exit 0, one MLflow run per trial, every epoch once, and
the moved trial's final metrics equal those of its twin.

Slow (25-58 s on the shared 2-core dev machine: cluster start plus a retried trial) but inside the
suite's budget, so CI runs it; EMMIL_FAULTS_CLUSTER=0 switches it off.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from faultlib import (
    TINY_SET, TWIN, Cli, env_for, free_port, kill_leftovers, latest_checkpoint, mlflow_tree, processes_under, report,
    rmtree, short_tmp, steps, trial_worker, wait_for,
)

EPOCHS = 80  # long enough that both trials overlap even when one node starts its worker late
RAY = str(Path(sys.executable).parent / "ray")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("EMMIL_FAULTS_CLUSTER") == "0",
                       reason="EMMIL_FAULTS_CLUSTER=0: two-node Ray cluster test switched off"),
]


def _node(args: list[str], temp: Path, env: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen([RAY, "start", "--block", "--temp-dir", str(temp), "--num-cpus", "1", "--num-gpus", "0",
                                 "--node-ip-address", "127.0.0.1", "--disable-usage-stats", *args],
                                stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _raylet_of(proc: psutil.Process) -> int | None:
    for parent in proc.parents():
        if parent.name() == "raylet":
            return parent.pid
    return None


def _raylets(temp: Path) -> set[int]:
    return {p.pid for p in processes_under(str(temp)) if p.name() == "raylet"}


def test_trials_run_on_both_nodes_and_survive_losing_the_worker_node(tmp_path, fault_data):
    head_tmp, worker_tmp, driver_tmp = short_tmp("rh"), short_tmp("rw"), short_tmp("rd")
    env = env_for(driver_tmp, RAY_AUTH_MODE="disabled")
    port = free_port()
    head = _node(["--head", "--port", str(port), "--include-dashboard", "false"], head_tmp, env, tmp_path / "head.log")
    worker = cli = None
    try:
        wait_for(lambda: _raylets(head_tmp), 120, "the head node's raylet", poll=0.2)
        worker = _node(["--address", f"127.0.0.1:{port}"], worker_tmp, env, tmp_path / "worker.log")
        wait_for(lambda: _raylets(worker_tmp), 120, "the worker node's raylet", poll=0.2)
        (tmp_path / "twin.yaml").write_text(TWIN)
        results = tmp_path / "results"
        cli = Cli(["ablate", str(tmp_path / "twin.yaml"), "--data-dir", str(fault_data), "--results", str(results),
                   "--address", f"127.0.0.1:{port}", "--cpus-per-trial", "1", "--set", f"train.epochs={EPOCHS}",
                   *TINY_SET, "--max-failures", "3", "--no-report"], env, tmp_path / "ablate.log")
        tune_dir = results / "twin" / "ablation"
        def running():  # both trials training at the same moment (one has checkpointed an epoch)
            procs = [trial_worker("twin/a-s0"), trial_worker("twin/b-s0")]
            if not all(procs) or max(latest_checkpoint(tune_dir, t) for t in ("twin/a-s0", "twin/b-s0")) < 0:
                return None
            return procs

        both = wait_for(running, 240, "both trials running")
        raylets = {name: _raylet_of(p) for name, p in zip(("a", "b"), both)}
        head_raylets, worker_raylets = _raylets(head_tmp), _raylets(worker_tmp)
        assert {raylets["a"], raylets["b"]} <= head_raylets | worker_raylets
        on_worker = [n for n, r in raylets.items() if r in worker_raylets]
        assert len(on_worker) == 1 and len([r for r in raylets.values() if r in head_raylets]) == 1  # both nodes
        moved = f"twin/{on_worker[0]}-s0"
        wait_for(lambda: latest_checkpoint(tune_dir, moved) >= 1, 120, f"{moved} to checkpoint 2 epochs")
        done = latest_checkpoint(tune_dir, moved)
        assert done < EPOCHS - 1, "the trial finished before its node was lost: raise EPOCHS"
        os.killpg(worker.pid, 9)  # the worker node dies: its raylet, workers and everything else
        kill_leftovers(str(worker_tmp))
        code = cli.wait(timeout=300)
        out = cli.output()
        assert code == 0, out[-3000:]
        c, parents, children = mlflow_tree(f"sqlite:///{results}/mlflow.db", "emmil-twin")
        assert sorted(children) == ["twin/a-s0", "twin/b-s0"] and all(len(v) == 1 for v in children.values())
        a, b = children["twin/a-s0"][0], children["twin/b-s0"][0]
        for run in (a, b):
            assert run.info.status == "FINISHED"
            assert steps(c, run.info.run_id, "loss") == list(range(1, EPOCHS + 1))
        assert {k: v for k, v in a.data.metrics.items() if k.startswith("test_")} == {
            k: v for k, v in b.data.metrics.items() if k.startswith("test_")}
        report("worker node lost (2-node Ray cluster)", injected=1, completed=2, total=2, lost=0, duplicated=0,
               extra=f"trial {moved} moved to the head node after epoch {done + 1} of {EPOCHS}")
    finally:
        if cli is not None and cli.proc.poll() is None:
            cli.kill_group()
        for proc in (worker, head):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, 9)
        for temp in (worker_tmp, head_tmp, driver_tmp):
            kill_leftovers(str(temp))
            rmtree(temp)
