"""The driver's progress lines: a long trial prints a heartbeat, at most one per interval."""
from types import SimpleNamespace

import harness.ray_tune as ray_tune


def test_heartbeat_once_per_interval(monkeypatch, capsys):
    clock = {"now": 1000.0}
    monkeypatch.setattr(ray_tune.time, "time", lambda: clock["now"])
    progress = ray_tune.TrialProgress(total=3, label="trial", heartbeat_s=60.0)
    trial = SimpleNamespace(trial_id="t0", config={"trial": {"name": "full-s0"}}, last_result={})
    # t = +10 s, +59 s: inside the first interval, silent; +61 s: one line; +100 s: silent again
    # (39 s after the last line); +125 s: a second line.
    for offset, epoch in ((10, 1), (59, 2), (61, 3), (100, 4), (125, 5)):
        clock["now"] = 1000.0 + offset
        progress.on_trial_result(0, [], trial, {"epoch": epoch, "total_epochs": 65})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert "full-s0 running" in lines[0] and "epoch 3/65" in lines[0] and "61.0s" in lines[0]
    assert "epoch 5/65" in lines[1]


def test_done_line_shows_the_trials_own_duration(monkeypatch, capsys):
    # Issue 14.9: the time column was the time since the driver started. The driver starts at 1000 s;
    # trial t1 starts at 1300 s and is done at 1342.5 s: the line says 42.5 s for the trial, 342 s total.
    clock = {"now": 1000.0}
    monkeypatch.setattr(ray_tune.time, "time", lambda: clock["now"])
    progress = ray_tune.TrialProgress(total=2, label="trial")
    trial = SimpleNamespace(trial_id="t1", config={"trial": {"name": "full-s1"}},
                            last_result={"epoch": 4, "total_epochs": 4, "test_avg_mAP": 0.25})
    clock["now"] = 1300.0
    progress.on_trial_start(0, [], trial)
    clock["now"] = 1342.5
    progress.on_trial_complete(0, [], trial)
    line = capsys.readouterr().out.strip()
    assert "full-s1 done" in line and "trial   42.5s (total 342s)" in line, line
