"""Helpers of the fault-injection suite: run `emmil` in a subprocess with its own Ray temp dir, find a
trial's worker process, read the MLflow tree back, start/stop a real `mlflow server` on loopback,
and clean up ONLY the processes a test started (by pid, never by name)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

ROOT = Path(__file__).resolve().parents[2]
EMMIL = str(Path(sys.executable).parent / "emmil")
MLFLOW = str(Path(sys.executable).parent / "mlflow")
# Tiny trials: narrow heads on dim-8 features (a trial epoch is ~0.1-0.4 s on 2 cores).
TINY_SET = ["--set", "model.hidden=8", "--set", "model.cls_hidden=8", "--set", "train.batch_videos=4"]
# A secret in the driver's environment: it must appear in no param, tag or artifact.
SECRET_ENV = {"EMMIL_FAULT_SECRET": "s3cr3t-do-not-log-8841", "AWS_SECRET_ACCESS_KEY": "s3cr3t-aws-8841"}

# Two variants with IDENTICAL configs: one is the fault's victim, the other the uninterrupted reference.
TWIN = """name: twin
description: two identical trials; `a` is killed, `b` is the uninterrupted reference
dataset: thumos14
preset: quick
seeds: 1
variants:
  - name: a
    overrides: {variant: full}
  - name: b
    overrides: {variant: full}
"""

RECORDS: list[str] = []  # FAULTS lines, printed again by conftest's terminal summary


def report(name: str, *, injected: int, completed: int, total: int, lost: int, duplicated: int, extra: str = "") -> str:
    line = (f"FAULTS: {name}: faults injected={injected}, trials completed={completed}/{total}, "
            f"runs lost={lost}, runs duplicated={duplicated}" + (f", {extra}" if extra else ""))
    RECORDS.append(line)
    print(line)
    return line


def short_tmp(prefix: str) -> Path:
    """A short folder under /tmp: Ray's unix socket paths under its temp dir must stay < 108 chars."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def env_for(ray_tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTEST_CURRENT_TEST")}
    env.update({"RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
                "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1", **SECRET_ENV, **extra})
    return env


@dataclass
class Cli:
    """One `emmil ...` subprocess in its own session (process group), output collected in a file."""

    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen = field(init=False)

    def __post_init__(self):
        self._fh = open(self.log, "w")
        self.proc = subprocess.Popen([EMMIL, *self.argv], cwd=ROOT, env=self.env, stdout=self._fh,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def output(self) -> str:
        if not self._fh.closed:
            self._fh.flush()
        return self.log.read_text()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if not self._fh.closed:
                self._fh.flush()

    def kill_group(self) -> None:
        """SIGKILL the driver and every process of its session (its private Ray)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self._fh.close()


def wait_for(predicate: Callable[[], object], timeout: float, what: str, poll: float = 0.05):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def processes_under(marker: str) -> list[psutil.Process]:
    """Processes whose command line or working directory mentions `marker` (a test's own tmp path)."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or ()) or marker in p.cwd():
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def kill_leftovers(marker: str) -> int:
    """SIGKILL, by pid, what a test started and left running (Ray processes under its temp dir)."""
    procs = [p for p in processes_under(marker) if p.pid != os.getpid()]
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    return len(procs)


def trial_worker(trial_key: str) -> psutil.Process | None:
    """The Ray worker process now running trial `trial_key` (e.g. 'twin/a-s0'): Tune makes the trial's
    working dir its cwd, and that folder name carries the trial id."""
    needle = "trial_id_" + trial_key.replace("/", "_")
    for p in psutil.process_iter(["pid", "name"]):
        try:
            if (p.info["name"] or "").startswith("ray::") and needle in p.cwd():
                return p
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return None


def latest_checkpoint(tune_dir: Path, trial_key: str) -> int:
    """Highest checkpoint index (= epochs done - 1) persisted for the trial, -1 if none."""
    needle = "trial_id_" + trial_key.replace("/", "_")
    best = -1
    for d in tune_dir.glob(f"*{needle}*/checkpoint_*"):
        try:
            best = max(best, int(d.name.split("_")[-1]))
        except ValueError:
            continue
    return best


# ------------------------------------------------------------------------------------------------
# MLflow


def mlflow_tree(uri: str, experiment: str):
    """(client, parent runs, {trial_id: [child runs]}) of one MLflow experiment."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r} at {uri}"
    runs = c.search_runs([exp.experiment_id], max_results=10000)
    parents = [r for r in runs if r.data.tags.get("emmil.role") == "parent"]
    children: dict[str, list] = {}
    for r in runs:
        if r.data.tags.get("emmil.role") == "trial":
            children.setdefault(r.data.tags["emmil.trial_id"], []).append(r)
    return c, parents, children


def steps(c, run_id: str, key: str) -> list[int]:
    return [m.step for m in sorted(c.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend (2 processes with job execution off)."""

    def __init__(self, backend_uri: str, artifacts: Path, port: int, log: Path):
        self.backend_uri, self.artifacts, self.port, self.log = backend_uri, artifacts, port, log
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> float:
        """Start and wait until /health answers; returns the seconds it took."""
        t0 = time.time()
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log, "a") as fh:
            self.proc = subprocess.Popen(
                [MLFLOW, "server", "--backend-store-uri", self.backend_uri, "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1", "--artifacts-destination", str(self.artifacts)],
                stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_for(self.healthy, timeout, f"mlflow server on 127.0.0.1:{self.port}", poll=0.3)
        return time.time() - t0

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"mlflow server exited with {self.proc.returncode}: see {self.log}")
        try:
            urllib.request.urlopen(f"{self.uri}/health", timeout=2)
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.proc = None

    def listening_addresses(self) -> set[str]:
        """Local addresses the server's processes listen on."""
        pids = set()
        if self.proc is not None:
            root = psutil.Process(self.proc.pid)
            pids = {root.pid, *(p.pid for p in root.children(recursive=True))}
        return {c.laddr.ip for c in psutil.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN and c.pid in pids}


def make_sqlite_store(path: Path) -> str:
    """Create the MLflow schema once (what the driver does for its default store)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{path}"
    MlflowClient(tracking_uri=uri).search_experiments()
    return uri


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def resume_twin_and_compare(argv: list[str], env: dict[str, str], log: Path, uri: str, epochs: int):
    """Run the TWIN ablation `argv` again with --resume after a fault hit trial `a`; check it finished
    both trials, one FINISHED run each with every epoch once, and `a`'s test metrics == those of `b`,
    which the fault never touched. Returns (run of a, number of duplicated runs)."""
    resumed = Cli(argv + ["--resume"], env, log)
    try:
        code = resumed.wait(timeout=300)
    finally:
        if resumed.proc.poll() is None:
            resumed.kill_group()
    out = resumed.output()
    assert code == 0, out[-3000:]
    assert "2/2 trials ok" in out
    c, parents, children = mlflow_tree(uri, "emmil-twin")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    duplicated = sum(len(runs) - 1 for runs in children.values())
    assert duplicated == 0 and sorted(children) == ["twin/a-s0", "twin/b-s0"]
    a, b = children["twin/a-s0"][0], children["twin/b-s0"][0]
    for run in (a, b):
        assert run.info.status == "FINISHED"
        assert steps(c, run.info.run_id, "loss") == list(range(1, epochs + 1))
    final_a = {k: v for k, v in a.data.metrics.items() if k.startswith("test_")}
    assert len(final_a) >= 10 and final_a == {k: v for k, v in b.data.metrics.items() if k.startswith("test_")}
    return a, duplicated
