"""The results disk fills up in the middle of `emmil ablate`, then space is freed and `--resume` finishes
(issues 13 and 15.7).

The results dir is a small tmpfs (mounted here, as root; skipped otherwise, with the reason in the
output). Trial `a` of the TWIN experiment trains one trial at a time; once it has written its state
file, a filler file takes every free byte. Expected: the driver stops within seconds with one
`error: disk full at <results>` line and the resume command, exit 2, no traceback, without burning the
trial's retries; no MLflow run is FINISHED without its artifacts; harness.json and the SQLite store
are intact (JSON parses, PRAGMA integrity_check = ok). After the filler is removed, `--resume` finishes
both trials, one run each, and the interrupted `a` equals its never-interrupted twin `b`.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time

import pytest

from faultlib import TINY_SET, TWIN, Cli, env_for, mlflow_tree, report, resume_twin_and_compare, trial_worker, wait_for

EPOCHS = 60  # a tiny epoch is 0.03-0.4 s: the disk fills mid-trial
TMPFS_MIB = 240  # the start needs 200 MiB free (harness.experiments.check_results_dir)


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "results"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("disk-full test: needs root to mount a tmpfs (not root here)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MIB}m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"disk-full test: cannot mount a tmpfs ({done.stderr.strip()[:200]})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(folder) -> int:
    """Write a filler file until the disk refuses; returns its size in bytes."""
    chunk, written = b"\0" * 2**20, 0
    with open(folder / "filler.bin", "wb", buffering=0) as f:
        try:
            while True:
                written += f.write(chunk)
        except OSError:
            pass
    # the last partial chunk: fill the remaining bytes one small write at a time
    with open(folder / "filler.bin", "ab", buffering=0) as f:
        try:
            while True:
                written += f.write(b"\0" * 4096)
        except OSError:
            pass
    return written


def test_disk_full_mid_run_stops_cleanly_and_resume_completes(tmp_path, fault_data, ray_tmp, small_disk):
    (tmp_path / "twin.yaml").write_text(TWIN)
    results = small_disk
    argv = ["ablate", str(tmp_path / "twin.yaml"), "--data-dir", str(fault_data), "--results", str(results),
            "--set", f"train.epochs={EPOCHS}", *TINY_SET, "--max-concurrent", "1", "--max-failures", "3",
            "--no-report"]
    first = Cli(argv, env_for(ray_tmp), tmp_path / "first.log")  # the log lives off the full disk
    state_dir = results / "twin" / "trial-state"
    try:
        wait_for(lambda: state_dir.is_dir() and any(state_dir.glob("*.pt")) and trial_worker("twin/a-s0"), 200,
                 "trial a's first epoch", poll=0.05)
        filled = _fill(results)
        filled_at = time.time()
        code = first.wait(timeout=120)
        stop_wall = time.time() - filled_at
    finally:
        if first.proc.poll() is None:
            first.kill_group()
    out = first.output()
    assert code == 2, out[-3000:]
    # the driver's last word is one error naming the path and the resume command (Ray, Tune and MLflow
    # log their own failed writes above it, with their tracebacks: library logging, not a crash)
    tail = out[out.rindex("\nerror: "):] if "\nerror: " in out else out[-3000:]
    assert tail.startswith(f"\nerror: disk full at {results}") and "--resume" in tail, out[-3000:]
    assert "Traceback" not in tail, tail
    retries = out.count("retrying from its last checkpoint")
    assert retries < 3, f"{retries} retries burnt on a full disk"

    # nothing corrupt, nothing half-written marked finished
    state = json.loads((results / "twin" / "harness.json").read_text())
    assert state["parent_run_id"]
    with sqlite3.connect(f"file:{results / 'mlflow.db'}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    uri = f"sqlite:///{results}/mlflow.db"
    c, parents, children = mlflow_tree(uri, "emmil-twin")
    for runs in children.values():
        for run in runs:
            if run.info.status == "FINISHED":
                names = {a.path for a in c.list_artifacts(run.info.run_id)}
                assert {"config.yaml", "metrics.json"} <= names, (run.data.tags.get("emmil.trial_id"), names)
    assert not list(state_dir.glob(".*.tmp")), "a half-written state file was left behind"

    (results / "filler.bin").unlink()
    _, duplicated = resume_twin_and_compare(argv, env_for(ray_tmp), tmp_path / "resume.log", uri, EPOCHS)
    shutil.rmtree(results / "twin", ignore_errors=True)
    report("results disk full mid-run (ablate --resume)", injected=1, completed=2, total=2, lost=0,
           duplicated=duplicated,
           extra=f"stopped {stop_wall:.1f} s after the disk filled ({filled / 2**20:.0f} MiB filler), exit 2 "
                 f"'disk full at PATH', {retries} retry(ies), SQLite integrity ok, equal to the twin after --resume")
