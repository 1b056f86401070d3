"""MLflow adapter: secrets redacted, buffered logging that survives an outage and a restart, and a real
`mlflow server` on loopback (no Ray)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from harness import tracking
from harness.tracking import TrackingTarget, TrialRun, redact_command, redact_uri


def test_redact_uri_hides_passwords_only():
    assert redact_uri("postgresql://bob:s3cret@db:5432/mlflow") == "postgresql://bob:***@db:5432/mlflow"
    assert redact_uri("http://u:p@127.0.0.1:5000?token=abc&x=1") == "http://u:***@127.0.0.1:5000?token=***&x=1"
    assert redact_uri("sqlite:////abs/path/mlflow.db") == "sqlite:////abs/path/mlflow.db"
    assert redact_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    cmd = redact_command(["emmil", "sweep", "--storage", "postgresql://a:pw@h/db", "--tracking-uri=http://a:pw@h"])
    assert cmd == "emmil sweep --storage postgresql://a:***@h/db --tracking-uri=http://a:***@h"
    assert "pw" not in cmd


def _store(results_dir: Path) -> tuple[str, str, str]:
    uri = tracking.default_tracking_uri(results_dir)
    exp = tracking.prepare_store(uri, "emmil-unit", results_dir / "mlartifacts")
    # the driver creates the experiment once; a second call finds it
    assert tracking.prepare_store(uri, "emmil-unit", results_dir / "mlartifacts") == exp
    parent = tracking.start_parent_run(uri, exp, "unit", {"emmil.kind": "ablation"}, {"seeds": 2})
    return uri, exp, parent


def test_outage_is_buffered_in_a_jsonl_file_and_survives_a_restart(results_dir, monkeypatch, tmp_path):
    uri, exp, parent = _store(results_dir)
    target = TrackingTarget(uri, exp, parent, "emmil-unit")
    buffer = tmp_path / "trial" / "t.jsonl"
    real_client = tracking.client
    down = {"on": True}

    def flaky(u):
        if down["on"]:
            raise ConnectionError("tracking server unreachable")
        return real_client(u)

    monkeypatch.setattr(tracking, "client", flaky)
    run = TrialRun(target, "unit/full-s0", {"emmil.variant": "full"}, buffer)
    run.log_params({"train.gamma": 0.15})
    run.log_metrics({"loss": 1.0, "val_avg_mAP": 0.1}, step=1)
    assert run.flush() is False and run.flush() is False  # 2 failed flushes, training goes on
    # the trial dies here; its replacement reloads what was not delivered
    lines = [json.loads(x) for x in buffer.read_text().splitlines()]
    assert [x["op"] for x in lines] == ["_state", "params", "metrics"]
    again = TrialRun(target, "unit/full-s0", {"emmil.variant": "full"}, buffer)
    assert again.failed_flushes == 2 and len(again.pending) == 2
    again.log_metrics({"loss": 0.5}, step=2)
    down["on"] = False
    again.terminate("FINISHED")
    assert again.flush() is True and again.pending == []
    c = real_client(uri)
    runs = tracking.child_runs(uri, exp, parent)
    assert len(runs) == 1
    r = c.get_run(runs[0].info.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params == {"train.gamma": "0.15"}
    assert r.data.tags["emmil.tracking_delayed_flushes"] == "2"
    assert r.data.tags["emmil.trial_id"] == "unit/full-s0" and r.data.tags["emmil.role"] == "trial"
    assert [(m.step, m.value) for m in c.get_metric_history(r.info.run_id, "loss")] == [(1, 1.0), (2, 0.5)]
    # a third incarnation (a retried trial without a checkpoint) finds the same run by its trial id
    third = TrialRun(target, "unit/full-s0", {}, tmp_path / "other.jsonl")
    third.log_metrics({"loss": 0.25}, step=3)
    assert third.flush() and third.run_id == r.info.run_id
    assert len(tracking.child_runs(uri, exp, parent)) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_logging_to_a_real_mlflow_server_on_loopback_with_an_outage(results_dir, tmp_path):
    # The store exists (schema + experiment + parent, created by the "driver"); the server is down
    # while the trial starts logging, comes up, and the buffered calls are delivered.
    sqlite_uri, exp, parent = _store(results_dir)
    port = _free_port()
    http_uri = f"http://127.0.0.1:{port}"
    target = TrackingTarget(http_uri, exp, parent, "emmil-unit")
    run = TrialRun(target, "unit/server-s0", {"emmil.stage": "ablation"}, tmp_path / "buf.jsonl")
    run.log_params({"localize.lam": 0.8})
    run.log_metrics({"loss": 2.0}, step=1)
    assert run.flush() is False  # nothing listens yet

    exe = shutil.which("mlflow", path=os.path.dirname(sys.executable))
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [exe, "server", "--backend-store-uri", sqlite_uri, "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{http_uri}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    pytest.fail("mlflow server did not come up on 127.0.0.1")
                time.sleep(0.5)
        art = tmp_path / "art"
        art.mkdir()
        (art / "metrics.json").write_text('{"test_avg_mAP": 0.25}')
        run.log_metrics({"loss": 1.0, "test_avg_mAP": 0.25}, step=2)
        run.log_artifacts(art)
        run.terminate("FINISHED")
        assert run.flush() is True
        c = tracking.client(http_uri)
        got = c.get_run(run.run_id)
        assert got.info.status == "FINISHED"
        assert got.data.tags["mlflow.parentRunId"] == parent
        assert got.data.tags["emmil.tracking_delayed_flushes"] == "1"
        assert got.data.params == {"localize.lam": "0.8"}
        assert [m.step for m in c.get_metric_history(run.run_id, "loss")] == [1, 2]
        assert [a.path for a in c.list_artifacts(run.run_id)] == ["metrics.json"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
