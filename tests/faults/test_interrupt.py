"""SIGTERM and Ctrl-C of a running driver, a second driver on the same results dir, and what a local Ray
instance listens on (issue 13).

The ablation runs the TWIN experiment one trial at a time: trial `a` is interrupted mid-training, `b`
has not started. Expected: the driver exits 143 within seconds, every MLflow run it opened is closed
(KILLED, tagged emmil.interrupted=SIGTERM; none FINISHED, none RUNNING), the console names the resume
command; `--resume` then finishes both trials, `a` in its own run (continued from its state file), and
`a`'s metrics equal those of `b`, which was never interrupted. While the first driver runs, a second
one on the same results dir is refused at once, naming the lock and the first driver's pid, and every
listening socket of the driver's process tree (its private Ray) is on loopback.

The sweep test sends SIGINT to the driver's whole process group, as a terminal's Ctrl-C does (the Ray
workers get it too): exit 130, no MLflow run and no Optuna trial left RUNNING.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import time

import optuna
import psutil
import yaml

from faultlib import (
    TINY_SET, TWIN, Cli, env_for, latest_checkpoint, mlflow_tree, report, resume_twin_and_compare, steps,
    trial_worker, wait_for,
)

EPOCHS = 60  # a tiny epoch takes 0.1-0.4 s: long enough that the signal lands mid-trial


def _listeners(root_pid: int) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket of `root_pid` and its descendants."""
    try:
        root = psutil.Process(root_pid)
        pids = {root.pid} | {p.pid for p in root.children(recursive=True)}
    except psutil.NoSuchProcess:
        return []
    found = []
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            try:
                name = psutil.Process(conn.pid).name()
            except psutil.NoSuchProcess:
                name = "?"
            found.append((conn.laddr.ip, conn.laddr.port, name))
    return found


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or address).is_loopback


def test_sigterm_closes_runs_as_interrupted_and_resume_matches_the_uninterrupted_twin(tmp_path, fault_data, ray_tmp):
    (tmp_path / "twin.yaml").write_text(TWIN)
    results = tmp_path / "results"
    argv = ["ablate", str(tmp_path / "twin.yaml"), "--data-dir", str(fault_data), "--results", str(results),
            "--set", f"train.epochs={EPOCHS}", *TINY_SET, "--max-concurrent", "1", "--no-report"]
    first = Cli(argv, env_for(ray_tmp), tmp_path / "first.log")
    tune_dir = results / "twin" / "ablation"
    try:
        wait_for(lambda: latest_checkpoint(tune_dir, "twin/a-s0") >= 2 and trial_worker("twin/a-s0"), 200,
                 "trial a past its third epoch", poll=0.05)
        listening = _listeners(first.proc.pid)
        # a second driver on the same results dir, while the first runs: refused at once
        t0 = time.time()
        second = Cli(argv, env_for(ray_tmp), tmp_path / "second.log")
        second_code = second.wait(timeout=60)
        second_wall = time.time() - t0
        done_before = latest_checkpoint(tune_dir, "twin/a-s0") + 1
        assert done_before < EPOCHS, "trial a finished before the signal: raise EPOCHS"
        sent = time.time()
        os.kill(first.proc.pid, signal.SIGTERM)  # the driver only, as a batch scheduler sends it
        code = first.wait(timeout=60)
        stop_wall = time.time() - sent
    finally:
        if first.proc.poll() is None:
            first.kill_group()
    out = first.output()

    # loopback only: the private Ray's GCS, raylet, workers and agents
    assert listening, "no listening socket found under the driver: the check would prove nothing"
    outside = [entry for entry in listening if not _is_loopback(entry[0])]
    assert not outside, f"listening beyond loopback: {outside}"

    # the lock
    refused = second.output()
    assert second_code == 2, refused[-2000:]
    assert "another emmil driver is running" in refused and str(first.proc.pid) in refused
    assert ".emmil-driver.lock" in refused and "Traceback" not in refused

    # the interrupted driver
    assert code == 128 + signal.SIGTERM, out[-3000:]
    assert stop_wall < 30, f"the driver took {stop_wall:.0f} s to stop"
    assert "interrupted by SIGTERM" in out and "--resume" in out, out[-3000:]
    uri = f"sqlite:///{results}/mlflow.db"
    c, parents, children = mlflow_tree(uri, "emmil-twin")
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    assert parents[0].data.tags.get("emmil.interrupted") == "SIGTERM"
    assert parents[0].data.tags.get("emmil.planned_trials") == "2"
    assert list(children) == ["twin/a-s0"], "trial b should not have started (--max-concurrent 1)"
    run_a = children["twin/a-s0"][0]
    assert run_a.info.status == "KILLED" and run_a.data.tags.get("emmil.interrupted") == "SIGTERM"
    logged = steps(c, run_a.info.run_id, "loss")
    assert logged == list(range(1, len(logged) + 1)) and len(logged) >= done_before  # buffered epochs delivered
    assert json.loads((results / "twin" / "harness.json").read_text())["stage"] == "interrupted"

    # --resume finishes both; a continues in its run and equals the uninterrupted b
    a, duplicated = resume_twin_and_compare(argv, env_for(ray_tmp), tmp_path / "resume.log", uri, EPOCHS)
    assert a.info.run_id == run_a.info.run_id  # continued in its own run

    report("driver SIGTERM mid-trial (ablate --resume)", injected=1, completed=2, total=2, lost=0,
           duplicated=duplicated,
           extra=f"stopped {stop_wall:.1f} s after the signal, exit 143, trial a interrupted after epoch "
                 f"{done_before} of {EPOCHS} and equal to its uninterrupted twin after --resume; a second driver "
                 f"refused in {second_wall:.1f} s; {len(listening)} listening sockets, all loopback")


SPACE = {
    "name": "tiny", "dataset": "thumos14",
    "fixed": {"train.val_fraction": 0.3, "train.eval_every": 1},
    "final_overrides": {"train.val_fraction": 0.0},
    "params": {"train.gamma": {"distribution": "uniform", "low": 0.0, "high": 0.4}},
}


def test_ctrl_c_of_the_whole_group_leaves_nothing_running(tmp_path, fault_data, ray_tmp):
    space = tmp_path / "tiny.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    results = tmp_path / "results"
    argv = ["sweep", "--space", str(space), "--trials", "3", "--final-seeds", "1", "--scheduler", "none",
            "--data-dir", str(fault_data), "--results", str(results), "--max-concurrent", "2", "--no-report",
            "--preset", "quick", "--set", f"train.epochs={EPOCHS}", *TINY_SET]
    cli = Cli(argv, env_for(ray_tmp), tmp_path / "sweep.log")
    state_dir = results / "sweep-thumos14-tiny" / "trial-state"  # a search trial's file appears at its 1st epoch
    try:
        wait_for(lambda: state_dir.is_dir() and any(state_dir.glob("*.pt")), 200, "a search trial's first epoch",
                 poll=0.05)
        time.sleep(1.0)  # a few more epochs: the signal lands mid-trial
        sent = time.time()
        os.killpg(cli.proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches every process of the group
        code = cli.wait(timeout=60)
        stop_wall = time.time() - sent
    finally:
        if cli.proc.poll() is None:
            cli.kill_group()
    out = cli.output()
    assert code == 128 + signal.SIGINT, out[-3000:]
    assert "interrupted by SIGINT" in out and "--resume" in out, out[-3000:]

    c, parents, children = mlflow_tree(f"sqlite:///{results}/mlflow.db", "emmil-sweep-thumos14-tiny")
    runs = [r for runs in children.values() for r in runs]
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    assert runs and not [r for r in [*parents, *runs] if r.info.status == "RUNNING"]
    interrupted = [r for r in runs if r.data.tags.get("emmil.interrupted") == "SIGINT"]
    assert interrupted and all(r.info.status == "KILLED" for r in interrupted)
    study = optuna.load_study(study_name="thumos14-tiny", storage=f"sqlite:///{results}/optuna.db")
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states, states
    report("Ctrl-C to the sweep's process group", injected=1, completed=sum(r.info.status == "FINISHED" for r in runs),
           total=len(runs), lost=0, duplicated=0,
           extra=f"stopped {stop_wall:.1f} s after SIGINT, exit 130, {len(interrupted)} run(s) closed KILLED as "
                 f"interrupted, Optuna states {sorted(s.name for s in states)}")
