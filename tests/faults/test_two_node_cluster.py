"""A two-node Ray cluster on one machine (issue 6): trials run on both nodes, and a trial survives
the loss of the worker node; a trial on the worker node delivers its own tracking buffer before it
reports done (issue 13: without a shared filesystem the driver never sees that node's buffer).

`ray start --head --block` and `ray start --address --block` on loopback, each with its own temp dir
and 1 CPU, both started here (their processes are found and killed by pid: never `ray stop`, which
kills every Ray on the host). RAY_AUTH_MODE is the same ("disabled", loopback only) in every process
(DESIGN.md section 10). `emmil ablate --address` runs two identical 1-CPU trials, one per node; once
both run, the worker node is SIGKILLed (its raylet and workers); the trial it ran is retried on the
head node from its last checkpoint. Expected: exit 0, one MLflow run per trial, every epoch once, and
the moved trial's final metrics equal those of its twin.

Outage case: the same ablation logs to a real `mlflow server`, which is killed while both trials
train and restarted only once the head-node trial has reported done and the worker-node trial is
waiting in its delivery loop. Expected: the worker-node trial reports done only after its runs' data
is delivered, by itself (tag emmil.delivered_by=trial); the head-node trial, which may leave its buffer
to the driver, is delivered by the driver (emmil.delivered_by=driver); every epoch once in both.

Slow (25-58 s each on the shared 2-core dev machine: cluster start plus a retried trial or an outage)
but inside the suite's budget, so CI runs them; EMMIL_FAULTS_CLUSTER=0 switches them off.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from faultlib import (
    TINY_SET, TWIN, Cli, MlflowServer, env_for, free_port, kill_leftovers, latest_checkpoint, make_sqlite_store,
    mlflow_tree, processes_under, report, rmtree, short_tmp, steps, trial_worker, wait_for,
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


@contextlib.contextmanager
def two_node_cluster(tmp_path: Path):
    """Head + worker node (1 CPU each) on loopback; yields (port, head temp, worker temp, driver env,
    the worker node's `ray start` process); every process is killed by pid at the end."""
    head_tmp, worker_tmp, driver_tmp = short_tmp("rh"), short_tmp("rw"), short_tmp("rd")
    env = env_for(driver_tmp, RAY_AUTH_MODE="disabled")
    port = free_port()
    head = _node(["--head", "--port", str(port), "--include-dashboard", "false"], head_tmp, env, tmp_path / "head.log")
    worker = None
    try:
        wait_for(lambda: _raylets(head_tmp), 120, "the head node's raylet", poll=0.2)
        worker = _node(["--address", f"127.0.0.1:{port}"], worker_tmp, env, tmp_path / "worker.log")
        wait_for(lambda: _raylets(worker_tmp), 120, "the worker node's raylet", poll=0.2)
        yield port, head_tmp, worker_tmp, env, worker
    finally:
        for proc in (worker, head):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, 9)
        for temp in (worker_tmp, head_tmp, driver_tmp):
            kill_leftovers(str(temp))
            rmtree(temp)


def _twin_on_both_nodes(tune_dir: Path, head_tmp: Path, worker_tmp: Path) -> tuple[str, str]:
    """Wait until trials a and b both train, one per node; returns (trial on the head, trial on the worker)."""
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
    on_head = [n for n, r in raylets.items() if r in head_raylets]
    assert len(on_worker) == 1 and len(on_head) == 1  # both nodes
    return f"twin/{on_head[0]}-s0", f"twin/{on_worker[0]}-s0"


def test_trials_run_on_both_nodes_and_survive_losing_the_worker_node(tmp_path, fault_data):
    cli = None
    with two_node_cluster(tmp_path) as (port, head_tmp, worker_tmp, env, worker):
        try:
            (tmp_path / "twin.yaml").write_text(TWIN)
            results = tmp_path / "results"
            cli = Cli(["ablate", str(tmp_path / "twin.yaml"), "--data-dir", str(fault_data), "--results", str(results),
                       "--address", f"127.0.0.1:{port}", "--cpus-per-trial", "1", "--set", f"train.epochs={EPOCHS}",
                       *TINY_SET, "--max-failures", "3", "--no-report"], env, tmp_path / "ablate.log")
            tune_dir = results / "twin" / "ablation"
            _, moved = _twin_on_both_nodes(tune_dir, head_tmp, worker_tmp)
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


def _buffer_state(buffer_dir: Path, trial_key: str) -> dict:
    """The trial's buffer bookkeeping line plus the kinds of its pending operations ({} before it exists)."""
    path = buffer_dir / (trial_key.replace("/", "_") + ".jsonl")
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):  # not written yet, or caught mid-replace
        return {}
    return {**lines[0], "ops": [op.get("op") for op in lines[1:]]} if lines else {}


def test_a_trial_on_another_node_delivers_its_buffer_before_it_reports_done(tmp_path, fault_data):
    backend = make_sqlite_store(tmp_path / "server.db")
    server = MlflowServer(backend, tmp_path / "server-artifacts", free_port(), tmp_path / "server.log")
    cli = None
    with two_node_cluster(tmp_path) as (port, head_tmp, worker_tmp, env, _):
        try:
            server.start()
            (tmp_path / "twin.yaml").write_text(TWIN)
            results = tmp_path / "results"
            cli = Cli(["ablate", str(tmp_path / "twin.yaml"), "--data-dir", str(fault_data), "--results", str(results),
                       "--address", f"127.0.0.1:{port}", "--cpus-per-trial", "1", "--set", f"train.epochs={EPOCHS}",
                       "--tracking-uri", server.uri, *TINY_SET, "--max-failures", "3", "--no-report"],
                      env, tmp_path / "ablate.log")
            tune_dir, buffers = results / "twin" / "ablation", results / "twin" / "tracking-buffer"
            on_head, on_worker = _twin_on_both_nodes(tune_dir, head_tmp, worker_tmp)
            server.stop()  # SIGKILL: the outage covers the end of both trials
            assert latest_checkpoint(tune_dir, on_worker) < EPOCHS - 1, "a trial ended before the outage: raise EPOCHS"
            # the head-node trial gives up after its 3 final attempts and reports done (the driver delivers later)
            wait_for(lambda: latest_checkpoint(tune_dir, on_head) == EPOCHS - 1, 240, f"{on_head} to report done")
            # the worker-node trial keeps trying: a 4th failed flush with its run's termination still pending
            wait_for(lambda: (lambda st: "terminate" in st.get("ops", ()) and st.get("failed_flushes", 0) >= 4)(
                _buffer_state(buffers, on_worker)), 240, f"{on_worker} waiting to deliver its buffer")
            assert latest_checkpoint(tune_dir, on_worker) < EPOCHS - 1  # not reported done while undelivered
            server.start()
            code = cli.wait(timeout=300)
            out = cli.output()
            assert code == 0, out[-3000:]
            assert "all buffered metrics delivered, none lost" in out, out[-2000:]
            c, parents, children = mlflow_tree(server.uri, "emmil-twin")
            assert sorted(children) == ["twin/a-s0", "twin/b-s0"] and all(len(v) == 1 for v in children.values())
            for (run,) in children.values():
                assert run.info.status == "FINISHED"
                for key in ("loss", "lr"):
                    assert steps(c, run.info.run_id, key) == list(range(1, EPOCHS + 1)), key  # none lost, none twice
            assert children[on_worker][0].data.tags["emmil.delivered_by"] == "trial"
            assert children[on_head][0].data.tags["emmil.delivered_by"] == "driver"
            assert int(children[on_worker][0].data.tags["emmil.tracking_delayed_flushes"]) >= 4
            # the trial says why it waits, in its stdout file (Tune's log_to_file, in the node's session folder)
            said = "".join(p.read_text(errors="replace") for d in (results, worker_tmp, head_tmp)
                           for p in d.rglob("stdout*") if p.is_file())
            assert "retrying before reporting done" in said
            report("tracking server down at the end of a trial on another node (2-node Ray cluster)", injected=1,
                   completed=2, total=2, lost=0, duplicated=0,
                   extra=f"{on_worker} delivered its own buffer after the restart, {on_head}'s by the driver")
        finally:
            if cli is not None and cli.proc.poll() is None:
                cli.kill_group()
            server.stop()
