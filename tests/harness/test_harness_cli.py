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


def test_ablate_list_prints_whole_descriptions(capsys):
    # issue 14.10: only each description's first line was printed, cutting sentences off mid-way
    from harness.experiments import list_experiments

    assert main(["ablate", "--list"]) == 0
    words = capsys.readouterr().out.split()  # wrapping only moves line breaks
    text = " ".join(words)
    for exp in list_experiments():
        assert " ".join(exp.description.split()) in text, exp.name
        assert f"{exp.seeds} seeds" in text


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


def test_a_symlink_below_the_run_folder_is_refused_before_anything_is_written(results_dir, tmp_path):
    # issue 15.4: report/report.md -> a file outside was overwritten by the report of a resume
    uri = tracking.default_tracking_uri(results_dir)
    place = runner.RunPlace(results_dir, "mini", uri, "emmil-mini")
    runner.open_parent(place, resume=False, kind="ablation", tags={})
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    (place.root / "report").mkdir()
    (place.root / "report" / "report.md").symlink_to(outside)
    with pytest.raises(ConfigError, match=r"report/report.md: a symbolic link inside the run folder .*precious.txt"):
        runner.check_place(place, resume=True)
    assert outside.read_text() == "keep me"


def test_sqlite_uris_keep_every_character_of_the_results_path(tmp_path):
    # issue 15.6: '?' started a query (mlflow.db landed in the parent folder), '%20' was unescaped
    from sqlalchemy.engine import make_url

    from harness.optuna_search import default_storage

    odd = tmp_path / "a?b%20c#d e"
    for uri, name in ((tracking.default_tracking_uri(odd), "mlflow.db"), (default_storage(odd), "optuna.db")):
        assert make_url(uri).database == str(odd / name) and not make_url(uri).query
    # the --storage check finds the same folder (decoding once more would look for 'a?b c#d e' instead)
    from harness.preflight import check_optuna_storage

    odd.mkdir()
    check_optuna_storage(default_storage(odd))
    (odd / "optuna.db").write_text("not a database")
    with pytest.raises(ConfigError, match=r"a\?b%20c#d e/optuna\.db is not a SQLite database"):
        check_optuna_storage(default_storage(odd))


@pytest.mark.parametrize("flag, value, words", [
    ("--max-failures", "-1", "--max-failures must be >= 0"),
])
def test_resource_flags_out_of_range_exit_2(flag, value, words, tmp_path, capsys):
    code = main(["ablate", "table3", "--data-dir", str(tmp_path), "--results", str(tmp_path / "r"), flag, value])
    assert code == 2 and words in capsys.readouterr().err


def test_tracking_uri_comes_from_the_environment_like_mlflow(tmp_path, monkeypatch):
    # issue 14.5: MLFLOW_TRACKING_URI is honoured by ablate/sweep as by report; --tracking-uri wins
    import argparse

    from harness.cli.ablate import add_arguments, launch_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    env_uri = f"sqlite:///{tmp_path}/env.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env_uri)
    base = ["--results", str(tmp_path / "r")]
    assert launch_from_args(parser.parse_args(base)).tracking_uri == env_uri
    flag_uri = f"sqlite:///{tmp_path}/flag.db"
    assert launch_from_args(parser.parse_args([*base, "--tracking-uri", flag_uri])).tracking_uri == flag_uri


def test_a_password_reaches_trials_by_environment_only(monkeypatch):
    # issue 15.2: the trial config (written to disk by Tune) holds the redacted URI
    monkeypatch.delenv(tracking.TRIAL_URI_ENV, raising=False)
    full = "http://user:pw-8841@127.0.0.1:5000"
    target = tracking.TrackingTarget(full, "1", "parent", "emmil-x")
    sent = target.to_dict()
    assert sent["uri"] == "http://user:***@127.0.0.1:5000" and "pw-8841" not in str(sent)
    assert tracking.trial_uri(sent["uri"]) == full  # the trial finds the full URI in its environment
    monkeypatch.setenv(tracking.TRIAL_URI_ENV, "http://user:other@10.0.0.1:5000")
    with pytest.raises(ConfigError, match="set for another URI"):
        tracking.trial_uri(sent["uri"])
    assert tracking.trial_uri("sqlite:////x/mlflow.db") == "sqlite:////x/mlflow.db"  # nothing secret
