"""model.pt (emmil.model_file) and `emmil predict`: round trip to the run's own test metrics, refusals."""

import dataclasses
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
import yaml

from emmil.config import resolve_config
from emmil.errors import DataError
from emmil.model_file import MODEL_FILE, load_model, match_data
from harness.cli import main

TINY = {"train.epochs": 4, "train.cycle": 1, "train.cycle_epochs": 2, "train.batch_videos": 6,
        "model.hidden": 16, "model.cls_hidden": 16, "device": "cpu"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run (quick preset, 4 epochs, ~3 s) on semi-synthetic THUMOS14 written in the
    W-TALC layout: 24 training + 24 test videos, features 16 RGB + 16 flow."""
    from emmil.data.loading import load_dataset
    from emmil.data.synth import write_synthetic
    from emmil.train import train_run

    root = tmp_path_factory.mktemp("predict")
    data = write_synthetic("thumos14", root / "data", dim=16, seed=0, max_videos=24)
    dataset = load_dataset("thumos14", data)
    cfg = resolve_config("thumos14", preset="quick", overrides=TINY)
    metrics = train_run(cfg, dataset, root / "run", progress=False)
    return {"root": root, "data": data, "run": root / "run", "dataset": dataset, "metrics": metrics, "config": cfg}


def _error(capsys, argv) -> str:
    # a user error: exit 2, one `error: ...` line, no traceback
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "Traceback" not in err
    return err


def test_predict_then_eval_gives_the_runs_own_test_map_exactly(trained, tmp_path):
    new = tmp_path / "new"  # the same videos in another folder: nothing is read from the run but model.pt
    shutil.copytree(trained["data"], new)
    pred = tmp_path / "pred.json"
    assert main(["predict", str(trained["run"]), "--data-dir", str(new), "--out", str(pred)]) == 0
    # the run's own test predictions, byte for byte (same device, same scoring packs)
    assert pred.read_bytes() == (trained["run"] / "predictions.json").read_bytes()
    gt = tmp_path / "gt.json"
    ds = trained["dataset"]
    gt.write_text(json.dumps(ds.ground_truth(ds.test_subset)))
    assert main(["eval", str(gt), str(pred), "--dataset", "thumos14", "--subset", "test",
                 "--json", str(tmp_path / "ev.json")]) == 0
    ev = json.loads((tmp_path / "ev.json").read_text())
    saved = json.loads((trained["run"] / "metrics.json").read_text())
    assert len(ev["tiou"]) == 7  # THUMOS14 grid 0.1:0.7:0.1
    assert ev["mAP"] == [saved[f"test_mAP_{t:.2f}"] for t in ev["tiou"]]  # exact, not approx
    assert ev["average_mAP"] == saved["test_avg_mAP"]
    assert saved["test_avg_mAP"] > 0  # a vacuous 0 == 0 would prove nothing


def test_model_file_holds_config_classes_widths_and_the_test_localizer(trained):
    loaded = load_model(trained["run"] / MODEL_FILE)
    config, model, classes, *_ = loaded  # also unpacks as a tuple
    assert config == trained["config"]
    assert config.to_dict() == yaml.safe_load((trained["run"] / "config.yaml").read_text())
    assert classes == trained["dataset"].classes and len(classes) == 20
    assert (loaded.rgb_dim, loaded.flow_dim, loaded.clip_seconds) == (16, 16, 0.64)
    m = trained["metrics"]
    # the localiser chosen on held-out videos, not the config's lam 0.8 / gate 0.15 (unless chosen)
    assert (loaded.localize.lam, loaded.localize.gate) == (m["selected_lam"], m["selected_gate"])
    assert loaded.predict_config.localize == loaded.localize and loaded.predict_config.model == config.model
    assert not model.training


def _write_per_video(dataset, root, names, split=False, width_cut=None):
    root.mkdir()
    for v in dataset.videos:
        if v.name not in names:
            continue
        f = dataset.features_of(v)
        if width_cut is not None:
            f = np.concatenate([f[:, :width_cut], f[:, 16:16 + width_cut]], axis=1)
        if split:
            for stream, part in (("rgb", f[:, : f.shape[1] // 2]), ("flow", f[:, f.shape[1] // 2:])):
                (root / stream).mkdir(exist_ok=True)
                np.save(root / stream / f"{v.name}.npy", part)
        else:
            np.save(root / f"{v.name}.npy", f)


@pytest.mark.parametrize("split", [False, True])
def test_per_video_features_only_needs_no_annotations(trained, tmp_path, split):
    ds = trained["dataset"]
    test = ds.in_subset(ds.test_subset)
    _write_per_video(ds, tmp_path / "pv", {v.name for v in test}, split=split)
    pred = tmp_path / "pred.json"
    tl = tmp_path / "tl.json"
    assert main(["predict", str(trained["run"] / MODEL_FILE), "--data-dir", str(tmp_path / "pv"),
                 "--out", str(pred), "--timelines", str(tl)]) == 0
    got = json.loads(pred.read_text())["results"]
    want = json.loads((trained["run"] / "predictions.json").read_text())["results"]
    assert set(got) == set(want) == {v.name for v in test}
    for v in test:
        a, b = got[v.name], want[v.name]
        # identical scores, labels and starts; without annotations the duration is T x 0.64 s, so only
        # an end past the annotated duration differs (the run clipped it there)
        assert [(p["label"], p["score"], p["segment"][0]) for p in a] == \
               [(p["label"], p["score"], p["segment"][0]) for p in b]
        assert [min(p["segment"][1], v.duration) for p in a] == [p["segment"][1] for p in b]
    timelines = json.loads(tl.read_text())
    track = timelines["videos"][test[0].name]["tracks"][0]
    assert len(track["L"]) == len(track["Q"]) == len(track["P"]) == test[0].num_clips
    assert timelines["clip_seconds"] == 0.64


def test_per_video_with_annotations_reproduces_the_run(trained, tmp_path):
    # per-video features + an ActivityNet JSON of the test videos: durations known, so the run's
    # own test predictions come back exactly
    ds = trained["dataset"]
    _write_per_video(ds, tmp_path / "pv", {v.name for v in ds.in_subset(ds.test_subset)})
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(ds.ground_truth(ds.test_subset)))
    pred = tmp_path / "pred.json"
    assert main(["predict", str(trained["run"]), "--data-dir", str(tmp_path / "pv"), "--layout", "per-video",
                 "--annotations", str(ann), "--out", str(pred)]) == 0
    assert json.loads(pred.read_text()) == json.loads((trained["run"] / "predictions.json").read_text())


def test_videos_list_scores_only_those(trained, tmp_path):
    ds = trained["dataset"]
    names = [v.name for v in ds.in_subset(ds.test_subset)][:2]
    pred = tmp_path / "pred.json"
    assert main(["predict", str(trained["run"]), "--data-dir", str(trained["data"]), "--videos", ",".join(names),
                 "--out", str(pred)]) == 0
    want = json.loads((trained["run"] / "predictions.json").read_text())["results"]
    got = json.loads(pred.read_text())["results"]
    assert sorted(got) == sorted(names)
    assert all(got[n] == want[n] for n in names)  # packing two videos instead of 24 changes no score


def test_wrong_feature_width_is_refused_naming_both(trained, tmp_path, capsys):
    ds = trained["dataset"]
    _write_per_video(ds, tmp_path / "narrow", {ds.videos[-1].name}, width_cut=4)  # 4 RGB + 4 flow
    err = _error(capsys, ["predict", str(trained["run"]), "--data-dir", str(tmp_path / "narrow"),
                          "--out", str(tmp_path / "p.json")])
    assert "16 RGB + 16 flow = 32" in err and "4 RGB + 4 flow = 8" in err
    assert str(trained["run"] / MODEL_FILE) in err and str(tmp_path / "narrow") in err
    assert not (tmp_path / "p.json").exists()


def test_class_list_mismatch_is_refused_naming_both(trained):
    loaded = load_model(trained["run"])
    ds = trained["dataset"]
    renamed = dataclasses.replace(ds, classes=("Juggling",) + ds.classes[1:])
    with pytest.raises(DataError) as exc:
        match_data(loaded, renamed)
    msg = str(exc.value)
    assert loaded.path in msg and "unknown to the model ['Juggling']" in msg
    assert f"not in the data ['{ds.classes[0]}']" in msg
    # the same classes in another order: accepted, relabelled in the model's output order
    shuffled = dataclasses.replace(ds, classes=tuple(reversed(ds.classes)))
    assert match_data(loaded, shuffled).classes == loaded.classes


def test_missing_model_is_refused_naming_the_path(trained, tmp_path, capsys):
    err = _error(capsys, ["predict", str(tmp_path / "absent"), "--data-dir", str(trained["data"]),
                          "--out", str(tmp_path / "p.json")])
    assert str(tmp_path / "absent") in err
    (tmp_path / "emptyrun").mkdir()  # a run directory without model.pt
    err = _error(capsys, ["predict", str(tmp_path / "emptyrun"), "--data-dir", str(trained["data"]),
                          "--out", str(tmp_path / "p.json")])
    assert str(tmp_path / "emptyrun" / MODEL_FILE) in err and "not found" in err


class _Payload:
    """Unpickling this would create the marker file (a stand-in for running arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_crafted_pickle_posing_as_model_is_refused_and_not_run(trained, tmp_path, capsys, writer):
    marker = tmp_path / "PWNED"
    fake = tmp_path / MODEL_FILE
    doc = {"format": "emmil-model", "version": 1, "state_dict": _Payload(marker)}
    if writer == "pickle":
        fake.write_bytes(pickle.dumps(doc))
    else:
        torch.save(doc, fake)
    assert not marker.exists()
    err = _error(capsys, ["predict", str(fake), "--data-dir", str(trained["data"]), "--out", str(tmp_path / "p.json")])
    assert str(fake) in err and "not a valid emmil model file" in err
    assert not marker.exists()  # the payload never ran


def test_truncated_and_malformed_model_files_are_refused(trained, tmp_path):
    good = (trained["run"] / MODEL_FILE).read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=f"{cut}: not a valid emmil model file"):
        load_model(cut)
    keys = tmp_path / "keys.pt"
    torch.save({"format": "emmil-model", "version": 1, "classes": ["A"]}, keys)
    with pytest.raises(DataError, match=r"keys\.pt: not a valid emmil model file: missing keys \['emmil_version'"):
        load_model(keys)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)  # some other tool's file
    with pytest.raises(DataError, match="other.pt: not an emmil model file"):
        load_model(other)
    raw = torch.load(trained["run"] / MODEL_FILE, weights_only=True)
    raw["classes"] = raw["classes"][:-1]  # 19 names for 20 outputs: the state dict no longer fits
    shrunk = tmp_path / "shrunk.pt"
    torch.save(raw, shrunk)
    with pytest.raises(DataError, match="shrunk.pt: not a valid emmil model file: field 'state_dict'"):
        load_model(shrunk)


def test_rerun_removes_the_stale_model_until_it_finishes(trained, tmp_path, monkeypatch):
    from emmil import train as train_mod

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)

    def boom(*a, **k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(train_mod, "evaluate_test", boom)  # the rerun dies after training
    with pytest.raises(RuntimeError):
        train_mod.train_run(trained["config"], trained["dataset"], run, progress=False)
    assert not (run / MODEL_FILE).exists() and not (run / "metrics.json").exists()
    assert not os.path.exists(run / (MODEL_FILE + ".tmp"))


# ---------------------------------------------------------------------------------------- from MLflow


@pytest.fixture(scope="module")
def tracked(trained, template_store, tmp_path_factory):
    """The MLflow tree a harness run writes, without Ray: a copy of the session's template SQLite store,
    a parent run and two trial runs logged through harness.tracking.TrialRun, their artifact folders
    written by the trials' own writer (harness.ray_tune._write_artifacts) under the --keep-models policy
    `best`: `kept` (an ablation trial: model.pt) and `search` (a sweep's search trial: no model.pt).
    The model is the `trained` fixture's; its test metrics are recomputed by evaluate_test as a trial's."""
    from emmil.train import evaluate_test
    from harness import tracking
    from harness.ray_tune import _write_artifacts, keeps_model

    root = tmp_path_factory.mktemp("tracked")
    shutil.copy(template_store, root / "mlflow.db")
    uri = tracking.sqlite_uri(root / "mlflow.db")
    exp = tracking.prepare_store(uri, "emmil-unit", root / "mlartifacts")
    parent = tracking.start_parent_run(uri, exp, "unit", {"emmil.kind": "ablation"})
    target = tracking.TrackingTarget(uri=uri, experiment_id=exp, parent_run_id=parent, experiment_name="emmil-unit")
    cfg, ds = trained["config"], trained["dataset"]
    model = load_model(trained["run"]).model
    outcome = evaluate_test(cfg, ds, model, device="cpu")
    final = {k: float(v) for k, v in outcome.metrics.items()}
    ids = {"parent": parent}
    for name, stage in (("kept", "ablation"), ("search", "search")):
        run = tracking.TrialRun(target, f"unit/{name}", {"emmil.stage": stage}, root / f"{name}.jsonl")
        run.log_params(cfg.to_flat_dict())
        metrics = final if stage != "search" else {"val_avg_mAP": 0.5}  # a search trial never sees test
        run.log_metrics(metrics, step=cfg.train.epochs)
        keep = model if keeps_model("best", stage) else None
        run.log_artifacts(_write_artifacts(root / name, cfg, metrics, outcome if stage != "search" else None,
                                           keep, ds))
        run.terminate("FINISHED")
        assert run.flush(), run.last_error
        ids[name] = run.run_id
    return {"uri": uri, "ids": ids, "root": root}


@pytest.fixture
def no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_predict_from_an_mlflow_run_then_eval_gives_the_runs_metric_exactly(trained, tracked, tmp_path, capsys,
                                                                          monkeypatch, no_env_uri):
    from mlflow.tracking import MlflowClient

    uri, run_id = tracked["uri"], tracked["ids"]["kept"]
    downloads = []
    real = MlflowClient.download_artifacts

    def spy(self, rid, path, dst_path=None):
        downloads.append((rid, path))
        return real(self, rid, path, dst_path)

    monkeypatch.setattr(MlflowClient, "download_artifacts", spy)
    data = ["--data-dir", str(trained["data"])]
    uri_form = tmp_path / "uri.json"
    assert main(["predict", f"runs:/{run_id}", "--tracking-uri", uri, *data, "--out", str(uri_form)]) == 0
    assert f"model: runs:/{run_id}/model.pt: full on thumos14" in capsys.readouterr().err
    bare = tmp_path / "bare.json"  # a bare run id with --tracking-uri
    assert main(["predict", run_id, "--tracking-uri", uri, *data, "--out", str(bare)]) == 0
    env = tmp_path / "env.json"  # runs:/ with the URI from MLflow's own variable
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["predict", f"runs:/{run_id}", *data, "--out", str(env)]) == 0
    assert downloads == [(run_id, "model.pt")] * 3  # only the model file, not the run's other artifacts
    assert uri_form.read_bytes() == bare.read_bytes() == env.read_bytes()
    # the trial's own predictions artifact, byte for byte
    assert uri_form.read_bytes() == (tracked["root"] / "kept" / "predictions.json").read_bytes()

    gt = tmp_path / "gt.json"
    ds = trained["dataset"]
    gt.write_text(json.dumps(ds.ground_truth(ds.test_subset)))
    assert main(["eval", str(gt), str(uri_form), "--dataset", "thumos14", "--subset", "test",
                 "--json", str(tmp_path / "ev.json")]) == 0
    ev = json.loads((tmp_path / "ev.json").read_text())
    logged = MlflowClient(tracking_uri=uri).get_run(run_id).data.metrics  # what the run's MLflow page shows
    assert len(ev["tiou"]) == 7
    assert ev["mAP"] == [logged[f"test_mAP_{t:.2f}"] for t in ev["tiou"]]  # exact, not approx
    assert ev["average_mAP"] == logged["test_avg_mAP"] > 0


def test_mlflow_run_without_model_is_refused_naming_the_run_and_keep_models(trained, tracked, tmp_path, capsys,
                                                                          no_env_uri):
    run_id = tracked["ids"]["search"]
    err = _error(capsys, ["predict", f"runs:/{run_id}", "--tracking-uri", tracked["uri"], "--data-dir",
                          str(trained["data"]), "--out", str(tmp_path / "p.json")])
    assert f"MLflow run {run_id} (unit/search, stage search, FINISHED) has no model.pt artifact" in err
    assert "'config.yaml'" in err and "--keep-models all" in err and "final-test run" in err
    assert not (tmp_path / "p.json").exists()
    parent = tracked["ids"]["parent"]  # the parent of an ablation holds no model: pass a trial
    err = _error(capsys, ["predict", parent, "--tracking-uri", tracked["uri"], "--data-dir", str(trained["data"]),
                          "--out", str(tmp_path / "p.json")])
    assert f"MLflow run {parent}" in err and "parent run" in err


def test_unknown_mlflow_run_and_missing_tracking_uri_are_refused(trained, tracked, tmp_path, capsys, no_env_uri):
    out = ["--data-dir", str(trained["data"]), "--out", str(tmp_path / "p.json")]
    unknown = "0123456789abcdef0123456789abcdef"
    for model in (f"runs:/{unknown}", unknown):
        err = _error(capsys, ["predict", model, "--tracking-uri", tracked["uri"], *out])
        assert f"MLflow run '{unknown}': no such run at {tracked['uri']}" in err
    # runs:/ without --tracking-uri or $MLFLOW_TRACKING_URI: which store is meant is not guessed
    err = _error(capsys, ["predict", f"runs:/{tracked['ids']['kept']}", *out])
    assert "needs a tracking URI" in err and "--tracking-uri" in err
    # a bare run id without --tracking-uri is a local path that does not exist: the error says how to mean a run
    err = _error(capsys, ["predict", unknown, *out])
    assert f"pass runs:/{unknown} or --tracking-uri" in err
    absent = tmp_path / "absent.db"  # no store is created there just to report that the run is not in it
    err = _error(capsys, ["predict", f"runs:/{unknown}", "--tracking-uri", f"sqlite:///{absent}", *out])
    assert f"sqlite:///{absent}: no such SQLite file" in err and not absent.exists()
    # with --tracking-uri MODEL is a run id; a local run directory is not silently read instead
    err = _error(capsys, ["predict", str(trained["run"]), "--tracking-uri", tracked["uri"], *out])
    assert "is an MLflow run id" in err and str(trained["run"]) in err
    assert not (tmp_path / "p.json").exists()


def test_crafted_pickle_logged_as_a_runs_model_is_refused_and_not_run(trained, tracked, tmp_path, capsys, no_env_uri):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=tracked["uri"])
    run = c.create_run(c.get_run(tracked["ids"]["kept"]).info.experiment_id)
    marker = tmp_path / "PWNED"
    fake = tmp_path / "art" / MODEL_FILE
    fake.parent.mkdir()
    torch.save({"format": "emmil-model", "version": 1, "state_dict": _Payload(marker)}, fake)
    c.log_artifact(run.info.run_id, str(fake))
    err = _error(capsys, ["predict", f"runs:/{run.info.run_id}", "--tracking-uri", tracked["uri"], "--data-dir",
                          str(trained["data"]), "--out", str(tmp_path / "p.json")])
    assert f"runs:/{run.info.run_id}/model.pt: not a valid emmil model file" in err  # named as the user gave it
    assert not marker.exists()  # weights_only: the payload never ran
