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
