"""Security checks of issue 6 (fast, no Ray, no server): crafted pickles through every command that
reads data, no blanket unpickling in the code, names from config files cannot leave the results
directory, servers default to loopback, secrets are redacted.

End-to-end secret checks run with real runs elsewhere in this suite: test_worker_kill.py (environment
secrets absent from every param/tag) and test_tracking_outage.py (a tracking-URI password absent from
params, tags, harness.json and the console output)."""

from __future__ import annotations

import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (data_fixtures)
from data_fixtures import object_array, write_wtalc  # noqa: E402
from harness.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ANN = "Thumos14reduced-Annotations"


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


def _cli(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return int(code), capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "ablate"])
def test_crafted_annotation_pickle_refused_by_every_data_reading_command(command, tmp_path, capsys):
    root = write_wtalc(tmp_path / "data")
    with open(root / ANN / "segments.npy", "wb") as fh:  # a pickle that would run `touch pwned`
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": (4,)})
        fh.write(pickle.dumps(object_array([_Marker(tmp_path / "pwned")] * 4), protocol=3))
    common = ["--data-dir", str(root), "--preset", "quick"]
    argv = (["train", "--dataset", "thumos14", "--out", str(tmp_path / "run"), *common] if command == "train" else
            ["ablate", "table3", "--seeds", "1", "--results", str(tmp_path / "results"), "--no-report", *common])
    code, err = _cli(argv, capsys)
    assert code == 2 and "Traceback" not in err
    assert re.search(r"segments\.npy: refused to unpickle global (posix|os)\.system", err), err
    assert not (tmp_path / "pwned").exists()


def test_no_blanket_unpickling_of_user_files_in_the_code():
    # every .npy read goes through emmil.data.safe_pickle; no pickle.load; torch.load only weights_only=True
    offenders = []
    for path in [*ROOT.glob("emmil/**/*.py"), *ROOT.glob("harness/**/*.py"), *ROOT.glob("reports/**/*.py")]:
        text = path.read_text()
        rel = path.relative_to(ROOT).as_posix()
        for m in re.finditer(r"(np|numpy)\.load\((?P<args>[^)]*)\)", text):
            if rel != "emmil/data/safe_pickle.py" or "allow_pickle=False" not in m.group("args"):
                offenders.append(f"{rel}: {m.group(0)}")
        offenders += [f"{rel}: pickle.load" for _ in re.finditer(r"\bpickle\.loads?\(", text)]
        for m in re.finditer(r"torch\.load\((?P<args>[^\n]*)", text):
            if "weights_only=True" not in m.group("args"):
                offenders.append(f"{rel}: {m.group(0)}")
    assert offenders == []


def _experiment(tmp_path: Path, name: str, variant: str = "full") -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"name": name, "variants": [{"name": variant, "overrides": {}}]}))
    return path


@pytest.mark.parametrize("where, build", [
    ("experiment name", lambda t: ["ablate", str(_experiment(t, "../escape"))]),
    ("variant name", lambda t: ["ablate", str(_experiment(t, "exp", "../../escape"))]),
    ("absolute name", lambda t: ["ablate", str(_experiment(t, "/tmp/escape"))]),
    ("sweep study", lambda t: ["sweep", "--space", "thumos14", "--trials", "1", "--study", "../escape"]),
    ("space name", lambda t: ["sweep", "--trials", "1", "--space", str(_space(t, "../escape"))]),
])
def test_names_from_config_files_cannot_escape_the_results_dir(where, build, tmp_path, capsys):
    results = tmp_path / "box" / "results"
    argv = build(tmp_path) + ["--dataset", "thumos14", "--data-dir", str(tmp_path), "--results", str(results)]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = _cli(argv, capsys)
    assert code == 2 and "Traceback" not in err, err
    assert re.search(r"name '[^']*escape' is not allowed|would escape the results directory", err), err
    # nothing written beside the results dir (which may have been created, empty, before the check)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "box") == before
    assert not results.exists() or list(results.iterdir()) == []
    assert not (tmp_path / "escape").exists() and not Path("/tmp/escape").exists()


def _space(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"name": name, "fixed": {"train.val_fraction": 0.2},
                                    "params": {"train.gamma": {"distribution": "uniform", "low": 0, "high": 1}}}))
    return path


def test_inside_refuses_traversal_and_symlinks(tmp_path):
    from emmil.errors import ConfigError
    from harness.experiments import inside

    base = tmp_path / "results"
    base.mkdir()
    (base / "link").symlink_to(tmp_path)  # a symlink pointing out of the results dir
    assert inside(base, "ok-name") == (base / "ok-name").resolve()
    for name in ("../x", "a/../../x", "/etc", "link/x", ".", ""):
        with pytest.raises(ConfigError, match="escape the results directory"):
            inside(base, name)


def test_servers_default_to_loopback(monkeypatch):
    # 1. the MLflow UI/server the harness tells users to start binds 127.0.0.1 unless told otherwise
    import click
    from mlflow.cli import cli

    ui = cli.get_command(click.Context(cli), "ui")  # `mlflow ui` is an alias of `mlflow server`
    assert ui is not None and ui.name == "server"
    assert next(p for p in ui.params if p.name == "host").default == "127.0.0.1"
    from harness.runner import RunPlace, locations
    from harness.tracking import TrackingTarget

    text = locations(RunPlace(Path("/r"), "exp", "sqlite:////r/mlflow.db", "emmil-exp"),
                     TrackingTarget("sqlite:////r/mlflow.db", "1", "abc", "emmil-exp"))
    assert "mlflow ui --backend-store-uri" in text and "--host" not in text
    # 2. the private Ray instance starts without its dashboard (an HTTP server)
    import ray

    from harness.ray_tune import ray_session

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with ray_session(None):
        pass
    assert seen["address"] == "local" and seen["include_dashboard"] is False
    # 3. nothing in the project binds every interface
    hits = [p.relative_to(ROOT).as_posix() for pattern in ("emmil/**/*.py", "harness/**/*.py", "reports/**/*.py",
                                                         "bench/*.py", "bench/*.sh", "Makefile", "docs/*.md")
            for p in ROOT.glob(pattern) if re.search(r"0\.0\.0\.0|--host[ =]::", p.read_text())
            and p.name != "reliability.md"]
    assert hits == []


def test_secrets_are_redacted_in_what_is_logged():
    from harness.runner import command_line
    from harness.tracking import redact_uri

    argv = ["/venv/bin/emmil", "sweep", "--tracking-uri", "http://bob:hunter2@mlflow.lab:5000",
            "--storage=postgresql://optuna:hunter3@db.lab/optuna", "--storage", "mysql://u:hunter4@db/x?password=hunter5"]
    line = command_line(argv)
    assert line.startswith("emmil sweep --tracking-uri http://bob:***@mlflow.lab:5000")
    assert "postgresql://optuna:***@db.lab/optuna" in line
    for secret in ("hunter2", "hunter3", "hunter4", "hunter5"):
        assert secret not in line
    assert redact_uri("https://token@host/x?token=abc&x=1") == "https://token@host/x?token=***&x=1"
