"""The dashboards a user opens on a finished sweep: `optuna-dashboard` (the `dashboard` extra) on the
study, exactly as `emmil sweep` prints it, and `mlflow ui` / `mlflow server` on the tracking store,
both on 127.0.0.1, read back through their HTTP APIs; `emmil predict runs:/<id>` through the server.

One real tiny sweep (2 search trials, 1 final retrain, 3 epochs on dim-8 features, keep-models `best`)
on the session's Ray instance feeds every test: a real study, a real MLflow tree with one trial run that
holds model.pt (the final-test retrain) and two that do not (search trials)."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import TINY

# tests/faults' helpers (free_port, wait_for, MlflowServer), loaded by path: its conftest clashes with
# this folder's, and faultlib itself imports no conftest.
_FAULTLIB = Path(__file__).resolve().parents[1] / "faults" / "faultlib.py"
if "faultlib" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("faultlib", _FAULTLIB)
    sys.modules["faultlib"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["faultlib"])
faultlib = sys.modules["faultlib"]

BIN = Path(sys.executable).parent  # the venv's console scripts: optuna-dashboard, mlflow


@pytest.fixture(scope="module")
def sweep(ray_cluster, tmp_path_factory, template_store):
    from emmil.data.loading import load_dataset
    from emmil.data.synth import write_synthetic
    from harness.cli.ablate import Launch
    from harness.cli.sweep import run_sweep
    from harness.experiments import parse_space

    root = tmp_path_factory.mktemp("dash")
    results = root / "results"
    results.mkdir()
    shutil.copy(template_store, results / "mlflow.db")
    # on disk, W-TALC layout: `emmil predict` reads it back; 15 train (5 held out) + test videos
    data_dir = write_synthetic("thumos14", root / "data", dim=8, seed=0, max_videos=20)
    data = load_dataset("thumos14", data_dir)
    space = parse_space({
        "name": "dash", "fixed": {"train.val_fraction": 0.3, "train.eval_every": 1},
        "final_overrides": {"train.val_fraction": 0.0},
        "params": {"train.gamma": {"distribution": "uniform", "low": 0.0, "high": 0.4}}}, "dash.yaml")
    lines: list[str] = []
    outcome = run_sweep(space, dataset="thumos14", preset="quick", trials=2, scheduler="none", study="dash",
                        storage=None, sampler_seed=0, final_seeds=1, launch=Launch(results=results, overrides=TINY,
                                                                                   report=False),
                        load_data=lambda: data, command="emmil sweep", out=lines.append)
    assert outcome.exit_code == 0, "\n".join(lines)
    printed = "\n".join(lines).splitlines()
    return {"outcome": outcome, "printed": printed, "results": results, "data_dir": data_dir, "dataset": data,
            "root": root}


def _printed(sweep, label: str) -> list[str]:
    """The command `emmil sweep` printed after `label:` (runner.locations), split as a shell would."""
    (line,) = [x for x in sweep["printed"] if x.startswith(f"{label}:")]
    return shlex.split(line.split(":", 1)[1])


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _listening(pid: int) -> set[str]:
    import psutil

    root = psutil.Process(pid)
    pids = {pid, *(p.pid for p in root.children(recursive=True))}
    return {c.laddr.ip for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids}


def test_the_printed_optuna_dashboard_command_serves_the_study(sweep, tmp_path):
    import optuna

    argv = _printed(sweep, "dashboard")
    storage = f"sqlite:///{sweep['results']}/optuna.db"
    assert argv[0] == "optuna-dashboard" and len(argv) == 2
    study = optuna.load_study(study_name="dash", storage=argv[1])  # the printed URL is the sweep's study
    assert optuna.load_study(study_name="dash", storage=storage).trials == study.trials
    exe = BIN / "optuna-dashboard"
    assert exe.is_file(), ("optuna-dashboard is not installed in this environment: pip install -e '.[dashboard]' "
                           "(make test installs it)")
    port = faultlib.free_port()
    log = tmp_path / "dashboard.log"
    with open(log, "w") as fh:  # the printed command, on loopback and a free port
        proc = subprocess.Popen([str(exe), *argv[1:], "--host", "127.0.0.1", "--port", str(port)], stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"

        def up():
            assert proc.poll() is None, f"optuna-dashboard exited with {proc.returncode}: {log.read_text()[-2000:]}"
            try:
                return _get_json(f"{base}/api/studies")
            except OSError:
                return None

        studies = faultlib.wait_for(up, 60, f"optuna-dashboard on {base}", poll=0.3)["study_summaries"]
        (summary,) = [s for s in studies if s["study_name"] == "dash"]
        assert summary["directions"] == ["maximize"]
        detail = _get_json(f"{base}/api/studies/{summary['study_id']}")
        assert len(detail["trials"]) == len(study.trials) == 2
        assert [t["state"] for t in detail["trials"]] == [t.state.name.capitalize() for t in study.trials]
        (best,) = detail["best_trials"]
        assert best["number"] == study.best_trial.number and best["values"] == [study.best_value]  # exact
        assert {p["name"] for p in best["params"]} == {"train.gamma"}  # the config keys, as --set takes them
        assert _listening(proc.pid) == {"127.0.0.1"}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the dashboard and nothing else
        proc.wait(timeout=30)


def test_mlflow_ui_serves_the_trials_model_byte_for_byte_and_predict_reads_it(sweep, tmp_path, capsys,
                                                                             monkeypatch):
    from emmil.model_file import load_model
    from harness import tracking
    from harness.cli import main

    argv = _printed(sweep, "browse")
    outcome = sweep["outcome"]
    assert argv[:3] == ["mlflow", "ui", "--backend-store-uri"] and argv[3] == outcome.tracking_uri
    c = tracking.client(outcome.tracking_uri)
    parent = c.get_run(outcome.parent_run_id)
    children = tracking.child_runs(outcome.tracking_uri, parent.info.experiment_id, outcome.parent_run_id)
    (final,) = [r for r in children if r.data.tags["emmil.stage"] == "final-test"]
    search = [r for r in children if r.data.tags["emmil.stage"] == "search"]
    assert len(search) == 2
    local = Path(urllib.parse.urlparse(final.info.artifact_uri).path) / "model.pt"  # the store's own copy
    assert local.is_file()

    # `mlflow ui` is `mlflow server` (MLflow's CLI aliases it): faultlib's server on the printed store
    server = faultlib.MlflowServer(argv[3], sweep["results"] / "mlartifacts", faultlib.free_port(),
                                   tmp_path / "mlflow.log")
    try:
        server.start()
        assert server.listening_addresses() == {"127.0.0.1"}
        listing = _get_json(f"{server.uri}/api/2.0/mlflow/artifacts/list?run_id={final.info.run_id}")
        files = {f["path"]: f for f in listing["files"]}
        assert {"model.pt", "config.yaml", "metrics.json", "predictions.json"} <= set(files)
        assert int(files["model.pt"]["file_size"]) == local.stat().st_size
        for run in search:  # keep-models `best`: a search trial keeps no model
            names = {f["path"] for f in _get_json(f"{server.uri}/api/2.0/mlflow/artifacts/list?run_id="
                                                  f"{run.info.run_id}").get("files", [])}
            assert "config.yaml" in names and "model.pt" not in names
        query = urllib.parse.urlencode({"path": "model.pt", "run_uuid": final.info.run_id})
        with urllib.request.urlopen(f"{server.uri}/get-artifact?{query}", timeout=30) as r:
            served = r.read()
        assert served == local.read_bytes()  # byte for byte
        got = tmp_path / "served" / "model.pt"
        got.parent.mkdir()
        got.write_bytes(served)
        loaded = load_model(got)
        assert loaded.classes == sweep["dataset"].classes and (loaded.rgb_dim, loaded.flow_dim) == (8, 8)

        # emmil predict through the server (REST download), then eval: the run's logged test mAP, exactly
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        pred = tmp_path / "pred.json"
        assert main(["predict", f"runs:/{final.info.run_id}", "--tracking-uri", server.uri, "--data-dir",
                     str(sweep["data_dir"]), "--out", str(pred)]) == 0
        assert f"runs:/{final.info.run_id}/model.pt" in capsys.readouterr().err
    finally:
        server.stop()
    ds = sweep["dataset"]
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(ds.ground_truth(ds.test_subset)))
    assert main(["eval", str(gt), str(pred), "--dataset", "thumos14", "--subset", "test", "--json",
                 str(tmp_path / "ev.json")]) == 0
    ev = json.loads((tmp_path / "ev.json").read_text())
    logged = c.get_run(final.info.run_id).data.metrics
    assert ev["mAP"] == [logged[f"test_mAP_{t:.2f}"] for t in ev["tiou"]] and len(ev["tiou"]) == 7
    assert ev["average_mAP"] == logged["test_avg_mAP"]
