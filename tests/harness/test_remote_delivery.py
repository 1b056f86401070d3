"""Units of issue 13's last items: what a trial reports to Tune per epoch, and the delivery loop of a
trial on another node than the driver's (the cluster case itself: tests/faults/test_two_node_cluster.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.ray_tune import EPOCH_REPORT_KEYS, TrackingUndelivered, deliver_before_done, epoch_report


def test_epoch_reports_carry_the_objective_and_progress_only():
    metrics = {"loss": 0.5, "loss_rgb": 0.2, "val_avg_mAP": 0.1, "val_mAP_0.50": 0.05, "lr": 1e-4,
               "epoch": 3, "total_epochs": 10}
    assert epoch_report(metrics) == {"loss": 0.5, "val_avg_mAP": 0.1, "epoch": 3, "total_epochs": 10}
    assert epoch_report({"loss": 1.0, "epoch": 1}) == {"loss": 1.0, "epoch": 1}  # no val this epoch
    assert "val_avg_mAP" in EPOCH_REPORT_KEYS  # the sweep's objective (harness.optuna_search.OBJECTIVE)


class FakeTracker:
    """Fails `failures` flushes, then delivers."""

    def __init__(self, failures: int):
        self.failures, self.calls = failures, 0
        self.trial_id, self.buffer_path, self.last_error = "exp/a-s0", Path("/node/buf/exp_a-s0.jsonl"), "ConnectionError"

    def flush(self) -> bool:
        self.calls += 1
        return self.calls > self.failures

    def pending_metric_values(self) -> int:
        return 0 if self.calls > self.failures else 42


def test_delivery_retries_until_the_server_answers(monkeypatch):
    monkeypatch.setattr("harness.ray_tune.time.sleep", lambda s: None)
    lines: list[str] = []
    tracker = FakeTracker(failures=3)
    deliver_before_done(tracker, "node-1", timeout_s=60, out=lambda *a, **k: lines.append(a[0]))
    assert tracker.calls == 4  # 3 failures, then delivered; nothing raised
    assert len(lines) == 3 and all("42 metric values buffered on this node" in line for line in lines)


def test_delivery_gives_up_at_its_deadline_naming_node_and_buffer(monkeypatch):
    clock = iter(range(0, 10_000, 50))  # each monotonic() call: 50 s later
    monkeypatch.setattr("harness.ray_tune.time.monotonic", lambda: float(next(clock)))
    monkeypatch.setattr("harness.ray_tune.time.sleep", lambda s: None)
    with pytest.raises(TrackingUndelivered) as err:
        deliver_before_done(FakeTracker(failures=10**6), "node-7", timeout_s=120, out=lambda *a, **k: None)
    text = str(err.value)
    assert "node node-7" in text and "/node/buf/exp_a-s0.jsonl" in text and "42 metric values" in text
    assert "EMMIL_TRACKING_DELIVER_TIMEOUT_S" in text
