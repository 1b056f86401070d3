"""Disk full or unwritable results directory: a clear error BEFORE any work starts (issue 6), and a
metric replayed after a restore is never logged twice (the tracking buffer remembers what it logged)."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from faultlib import report
from harness.cli import main

Usage = namedtuple("Usage", "total used free")


def _run(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return int(code), capsys.readouterr().err


@pytest.mark.parametrize("command", ["ablate", "sweep"])
def test_full_disk_is_refused_before_work_starts(command, tmp_path, monkeypatch, capsys):
    import ray

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(2**30, 2**30 - 50 * 2**20, 50 * 2**20))  # 50 MiB free
    results = tmp_path / "results"
    argv = (["ablate", "table3"] if command == "ablate" else ["sweep", "--space", "thumos14", "--trials", "2"]) + [
        "--dataset", "thumos14", "--data-dir", str(tmp_path / "absent"), "--results", str(results)]
    code, err = _run(argv, capsys)
    monkeypatch.setattr(shutil, "disk_usage", real)
    assert code == 2 and "Traceback" not in err
    assert f"error: --results {results}: only 50 MiB free, need at least 200 MiB" in err
    assert list(results.iterdir()) == []  # no run folder, no MLflow/Optuna store
    assert not ray.is_initialized()  # Ray never started


def test_unwritable_results_dir_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    cases = {str(tmp_path / "file" / "results"): "cannot create the results directory",
             str(tmp_path / "file"): "cannot create the results directory (File exists)",
             "/proc/emmil-results": "cannot create the results directory"}
    for path, fragment in cases.items():
        code, err = _run(["ablate", "table3", "--data-dir", str(tmp_path), "--results", path], capsys)
        assert code == 2 and f"--results {path}: {fragment}" in err, err
    report("results dir full / unwritable", injected=2 + len(cases), completed=0, total=0, lost=0, duplicated=0,
           extra="each refused before any work started")


def test_replayed_epochs_are_not_logged_twice_after_a_restart(tmp_path):
    # A worker SIGKILLed after logging epoch 3 but before Tune recorded checkpoint 3 is restored from
    # checkpoint 2 and replays epoch 3 (identical values). The buffer's state line remembers the last
    # step of each key, so the restarted TrialRun drops the replay; new keys at that step still go in.
    from harness.tracking import TrackingTarget, TrialRun

    target = TrackingTarget("sqlite:///unused.db", "1", "parent", "emmil-x")  # never contacted: no flush
    buf = tmp_path / "trial.jsonl"
    first = TrialRun(target, "x/a-s0", {}, buf)
    for epoch in (1, 2, 3):
        first.log_metrics({"loss": 1.0 / epoch}, step=epoch)
    second = TrialRun(target, "x/a-s0", {}, buf)  # the restarted worker
    second.log_metrics({"loss": 1 / 3}, step=3)  # replayed: dropped
    second.log_metrics({"loss": 0.25}, step=4)
    second.log_metrics({"loss": 0.25, "test_avg_mAP": 0.5}, step=4)  # loss at 4 again: dropped; test key kept
    logged = [(op["step"], sorted(op["values"])) for op in second.pending if op["op"] == "metrics"]
    assert logged == [(1, ["loss"]), (2, ["loss"]), (3, ["loss"]), (4, ["loss"]), (4, ["test_avg_mAP"])]
