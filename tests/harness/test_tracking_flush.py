"""`emmil tracking flush`: metrics a trial buffered while the server was down, still on disk after the
driver ended, are delivered to their run; the parent the driver could not close is closed (issue 13)."""

from __future__ import annotations

from harness import runner, tracking
from harness.cli import main
from harness.tracking import TrackingTarget, TrialRun


def _run_folder(results_dir):
    """A finished ablation folder whose parent is still RUNNING and whose trial buffer holds 2 epochs
    that never reached MLflow (their flush failed: the server was 'down')."""
    uri = tracking.default_tracking_uri(results_dir)
    exp = tracking.prepare_store(uri, "emmil-unit", results_dir / "mlartifacts")
    parent = tracking.start_parent_run(uri, exp, "unit", {"emmil.kind": "ablation"})
    place = runner.RunPlace(results_dir, "unit", uri, "emmil-unit")
    runner.write_state(place, {"kind": "ablation", "parent_run_id": parent, "experiment_id": exp,
                               "mlflow_experiment": "emmil-unit", "tracking_uri": tracking.redact_uri(uri),
                               "stage": "done", "format": runner.RESUME_FORMAT})
    good = TrackingTarget(uri, exp, parent, "emmil-unit")
    run = TrialRun(good, "unit/full-s0", {"emmil.variant": "full"}, place.buffer_dir / "unit_full-s0.jsonl")
    run.log_metrics({"loss": 3.0}, step=1)
    assert run.flush()  # epoch 1 delivered: the run exists
    run.target, run._client = TrackingTarget("http://127.0.0.1:1", exp, parent, "emmil-unit"), None
    run.log_metrics({"loss": 2.0, "lr": 0.1}, step=2)
    run.log_metrics({"loss": 1.0, "lr": 0.1}, step=3)
    run.terminate("FINISHED")
    assert not run.flush() and run.pending_metric_values() == 4
    return uri, parent, run.run_id, place


def test_flush_delivers_leftover_buffers_and_closes_the_parent(results_dir, capsys):
    uri, parent, run_id, place = _run_folder(results_dir)
    c = tracking.client(uri)
    assert [m.step for m in c.get_metric_history(run_id, "loss")] == [1]
    assert main(["tracking", "flush", "--results", str(results_dir), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "unit: 1 buffer(s) with undelivered calls; 1 delivered (4 metric values)" in out, out
    assert sorted(m.step for m in c.get_metric_history(run_id, "loss")) == [1, 2, 3]
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["emmil.trial_id"] == "unit/full-s0"  # not the file stem
    assert c.get_run(parent).info.status == "FINISHED"  # harness.json said done
    # twice is harmless: nothing pending, nothing logged again
    assert main(["tracking", "flush", "--results", str(results_dir), "--tracking-uri", uri]) == 0
    assert sorted(m.step for m in c.get_metric_history(run_id, "loss")) == [1, 2, 3]


def test_flush_with_the_server_still_down_is_an_error_that_keeps_the_buffers(results_dir, capsys):
    uri, parent, run_id, place = _run_folder(results_dir)
    before = (place.buffer_dir / "unit_full-s0.jsonl").read_text()
    # the server still down: `error: ... unreachable` naming it (preflight), exit 2, buffer untouched
    assert main(["tracking", "flush", "--results", str(results_dir), "--tracking-uri", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "127.0.0.1:1" in err
    assert (place.buffer_dir / "unit_full-s0.jsonl").read_text() == before
