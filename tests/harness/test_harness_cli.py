"""The `emmil ablate` / `emmil sweep` command lines: listing, user errors (exit 2, message naming the
file/key), and the refusal to overwrite or to resume nothing (no Ray started)."""

from __future__ import annotations

import pytest

from emmil.errors import ConfigError
from harness import runner, tracking
from harness.cli import main


def test_ablate_list_names_every_shipped_experiment(capsys):
    assert main(["ablate", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("table3", "lambda", "gamma", "schedule"):
        assert name in out
    assert "no-pseudo-label, joint, full, attention-mil" in out


@pytest.mark.parametrize("argv, words", [
    (["ablate", "nope", "--data-dir", "x"], "unknown experiment 'nope'"),
    (["ablate", "table3", "--data-dir", "x", "--results", "/proc/emmil-x"], "cannot create the results directory"),
    (["ablate", "table3", "--data-dir", "x", "--cpus-per-trial", "0"], "--cpus-per-trial must be > 0"),
    (["ablate", "table3", "--data-dir", "x", "--set", "train.gama=1"], "unknown config key 'train.gama'"),
    (["sweep", "--space", "nope.yaml", "--trials", "2", "--data-dir", "x"], "search space file nope.yaml does not exist"),
])
def test_user_errors_exit_2_with_a_message(argv, words, capsys, tmp_path):
    if "--results" not in argv:
        argv = argv + ["--results", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err


def test_bad_space_file_is_named_in_the_error(tmp_path, capsys):
    space = tmp_path / "bad.yaml"
    space.write_text("params:\n  train.gamma: {distribution: uniform, low: 0.5, high: 0.1}\n")
    assert main(["sweep", "--space", str(space), "--trials", "2", "--dataset", "thumos14", "--data-dir", "x",
                 "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"{space}: params.train.gamma: empty range" in err


def test_a_run_folder_is_never_overwritten_and_resume_needs_one(results_dir):
    uri = tracking.default_tracking_uri(results_dir)
    place = runner.RunPlace(results_dir, "mini", uri, "emmil-mini")
    with pytest.raises(ConfigError, match="nothing to resume"):
        runner.open_parent(place, resume=True, kind="ablation", tags={})
    target, state = runner.open_parent(place, resume=False, kind="ablation", tags={"emmil.experiment": "mini"})
    with pytest.raises(ConfigError, match="already holds the ablation with parent run .*pass --resume"):
        runner.open_parent(place, resume=False, kind="ablation", tags={})
    again, _ = runner.open_parent(place, resume=True, kind="ablation", tags={})
    assert again.parent_run_id == target.parent_run_id == state["parent_run_id"]
    other = runner.RunPlace(results_dir, "mini", "sqlite:////elsewhere/mlflow.db", "emmil-mini")
    with pytest.raises(ConfigError, match="pass the same --tracking-uri"):
        runner.open_parent(other, resume=True, kind="ablation", tags={})


def test_version_names_the_package_and_the_commit(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    line = capsys.readouterr().out.strip()
    # "emmil-bench 0.1.0 (git 6c1ab541ace7)": the installed version, then this checkout's HEAD
    assert line.startswith("emmil-bench ") and f"(git {tracking.git_commit()[:12]})" in line, line
