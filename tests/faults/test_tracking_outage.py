"""The MLflow tracking server stopped during `emmil sweep` and restarted (issue 6).

A real `mlflow server` on 127.0.0.1 (SQLite backend, MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false) is
SIGKILLed once both search trials have created their runs. Training goes on: the test waits until a
trial has failed to flush (its JSONL buffer counts the attempt) and kept training. Then, so that the
test does not depend on how fast this machine trains compared with how slowly the server starts
(10-20 s), the sweep's processes are frozen (SIGSTOP, by pid) while the server restarts on the same
port and store, and thawed (SIGCONT). Expected: the sweep completes; every epoch of every trial is in
MLflow exactly once (metrics logged during the outage, with their original timestamps, delivered
later); the runs carry `emmil.tracking_delayed_flushes`; the summary says the metrics were delayed and
none was lost. The tracking URI carries a password and comes from $MLFLOW_TRACKING_URI, as a user sets it
(issue 15.2): the password must appear nowhere in what is logged, in no file under the results folder or
Ray's temp root (Tune state, params.json, session logs), and in no process's command line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

import psutil
import yaml

from faultlib import (
    TINY_SET, Cli, MlflowServer, env_for, free_port, make_sqlite_store, mlflow_tree, processes_under, report,
    steps, wait_for,
)

EPOCHS = 40
PASSWORD = "pw-s3cr3t-7731"
SPACE = {
    "name": "outage", "dataset": "thumos14",
    "fixed": {"train.val_fraction": 0.3, "train.eval_every": 1},
    "params": {"train.gamma": {"distribution": "uniform", "low": 0.0, "high": 0.4}},
}


def _buffer_states(buffer_dir) -> list[dict]:
    states = []
    for path in buffer_dir.glob("*.jsonl"):
        try:
            first = path.read_text().splitlines()[0]
            states.append({**json.loads(first), "pending": len(path.read_text().splitlines()) - 1})
        except (IndexError, ValueError, OSError):
            continue
    return states


def _signal_all(procs: list[psutil.Process], sig: int) -> None:
    for p in procs:
        try:
            os.kill(p.pid, sig)
        except ProcessLookupError:
            pass


def _files_containing(root, secret: str) -> list[str]:
    """Every regular file below `root` whose bytes contain `secret` (symlinks and sockets skipped)."""
    hits = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                with open(path, "rb") as f:
                    if secret.encode() in f.read():
                        hits.append(path)
            except OSError:
                continue
    return hits


def _cmdlines_containing(procs: list[psutil.Process], secret: str) -> list[str]:
    hits = []
    for p in procs:
        try:
            line = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if secret in line:
            hits.append(f"{p.pid}: {line[:200]}")
    return hits


def test_tracking_server_outage_loses_no_metric(tmp_path, fault_data, ray_tmp):
    backend = make_sqlite_store(tmp_path / "server.db")
    server = MlflowServer(backend, tmp_path / "server-artifacts", free_port(), tmp_path / "server.log")
    space = tmp_path / "outage.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    results = tmp_path / "results"
    uri = f"http://fault:{PASSWORD}@127.0.0.1:{server.port}"
    cli = None
    try:
        server.start()
        assert server.listening_addresses() == {"127.0.0.1"}  # loopback only, as the project documents
        cli = Cli(["sweep", "--space", str(space), "--trials", "2", "--final-seeds", "0", "--scheduler", "none",
                   "--data-dir", str(fault_data), "--results", str(results), "--max-concurrent", "2",
                   "--no-report", "--preset", "quick", "--set", f"train.epochs={EPOCHS}",
                   *TINY_SET], env_for(ray_tmp, MLFLOW_TRACKING_URI=uri), tmp_path / "sweep.log")
        buffers = results / "sweep-thumos14-outage" / "tracking-buffer"
        wait_for(lambda: sum(1 for s in _buffer_states(buffers) if s.get("run_id")) == 2, 240,
                 "both search trials to create their MLflow runs", poll=0.1)
        # while the trials run: the driver, its Ray processes and the trial workers take the URI by environment
        in_ps = _cmdlines_containing(list(psutil.process_iter()), PASSWORD)
        server.stop()  # SIGKILL: the outage starts
        down_at = time.time() * 1000
        # training goes on: a flush fails, and epochs keep being logged into the buffer meanwhile
        wait_for(lambda: any(s["failed_flushes"] >= 1 and s["pending"] >= 2 for s in _buffer_states(buffers)),
                 120, "a failed flush with buffered epochs", poll=0.1)
        frozen = [psutil.Process(cli.proc.pid), *processes_under(str(ray_tmp))]
        _signal_all(frozen, signal.SIGSTOP)
        try:
            restart_s = server.start()
        finally:
            _signal_all(frozen, signal.SIGCONT)
        up_at = time.time() * 1000
        code = cli.wait(timeout=300)
    finally:
        if cli is not None and cli.proc.poll() is None:
            cli.kill_group()
        out = cli.output() if cli is not None else ""
    try:
        assert code == 0, out[-3000:]
        assert re.search(r"search tracking:\s+server unavailable for a while: [12] trial\(s\)", out), out[-2000:]
        assert "all buffered metrics delivered, none lost" in out

        c, parents, children = mlflow_tree(server.uri, "emmil-sweep-thumos14-outage")
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert len(children) == 2 and all(len(v) == 1 for v in children.values())
        delayed, during = 0, 0
        for (run,) in children.values():
            assert run.info.status == "FINISHED"
            for key in ("loss", "val_avg_mAP", "lr"):
                assert steps(c, run.info.run_id, key) == list(range(1, EPOCHS + 1)), key  # none lost, none twice
            delayed += int(run.data.tags["emmil.tracking_delayed_flushes"]) > 0
            during += sum(down_at <= m.timestamp <= up_at for m in c.get_metric_history(run.info.run_id, "loss"))
        assert delayed >= 1 and during >= 1  # logged while the server was down, delivered after

        # the password of the tracking URI is used, never logged
        logged = json.dumps([[r.data.params, r.data.tags] for r in [*parents, *(v[0] for v in children.values())]])
        assert PASSWORD not in logged and PASSWORD not in out
        assert "fault:***@127.0.0.1" in out  # the driver names the store it used, redacted
        assert in_ps == [], in_ps
        on_disk = _files_containing(results, PASSWORD) + _files_containing(ray_tmp, PASSWORD)
        assert on_disk == [], on_disk
    finally:
        server.stop()
    report("tracking server killed and restarted (sweep)", injected=1, completed=2, total=2, lost=0, duplicated=0,
           extra=f"{during} epoch metrics logged during the outage delivered later, server restart {restart_s:.0f} s")
