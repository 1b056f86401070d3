"""Experiment files, search-space files, results-dir checks and the summary table (no Ray)."""

from __future__ import annotations

import math
import os

import pytest

from emmil.errors import ConfigError
from harness.experiments import (
    check_results_dir,
    expand_trials,
    inside,
    list_experiments,
    load_experiment,
    load_space,
    mean_std,
    parse_experiment,
    parse_space,
    summary_table,
)
from harness.optuna_search import check_space, pick_best


def _exp(**extra):
    data = {"name": "mini", "variants": [{"name": "a", "overrides": {"variant": "full"}},
                                         {"name": "b", "overrides": {"variant": "joint", "train.gamma": 0.1}}]}
    data.update(extra)
    return parse_experiment(data, "mini")


def test_shipped_experiments_include_table3_with_the_paper_rows():
    names = {e.name: e for e in list_experiments()}
    assert {"table3", "lambda", "gamma", "schedule", "references", "localize"} <= set(names)
    rows = [v.name for v in names["table3"].variants]
    assert rows == ["no-pseudo-label", "joint", "full", "attention-mil"]
    # every variant of every shipped file resolves to a valid config
    from emmil.config import resolve_config

    for exp in names.values():
        for trial in expand_trials(exp, 1):
            resolve_config(exp.dataset or "thumos14", preset="quick", seed=trial.seed, overrides=trial.overrides)


def test_expand_trials_is_seed_major_with_merged_overrides():
    exp = _exp(overrides={"train.epochs": 3})
    trials = expand_trials(exp, 2)
    # 2 variants x 2 seeds, seed-major: every variant at seed 0 before any at seed 1
    assert [t.name for t in trials] == ["a-s0", "b-s0", "a-s1", "b-s1"]
    assert trials[3].overrides == {"train.epochs": 3, "variant": "joint", "train.gamma": 0.1}
    assert trials[3].seed == 1


@pytest.mark.parametrize("bad, words", [
    ({"colour": "red"}, "unknown key(s) ['colour']"),
    ({"variants": []}, "non-empty list"),
    ({"variants": [{"name": "a", "overides": {}}]}, "unknown key(s) ['overides']"),
    ({"variants": [{"name": "../escape"}]}, "'../escape' is not allowed"),
    ({"variants": [{"name": "a"}, {"name": "a"}]}, "duplicate variant name(s) ['a']"),
    ({"name": "x/y"}, "'x/y' is not allowed"),
    ({"seeds": 0}, "'seeds' must be a positive integer"),
    ({"overrides": {"seed": 3}}, "'seed' cannot be overridden"),
])
def test_bad_experiment_files_raise_config_error_naming_the_key(bad, words):
    with pytest.raises(ConfigError) as err:
        _exp(**bad)
    assert words in str(err.value)
    assert "mini" in str(err.value)  # the file is named


def test_experiment_name_must_match_its_file(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text("name: mini\nvariants: [{name: a}]\n")
    with pytest.raises(ConfigError, match="file is 'other'.yaml"):
        load_experiment(str(path))
    with pytest.raises(ConfigError, match="unknown experiment 'nope'"):
        load_experiment("nope")


def test_inside_rejects_names_that_escape_the_results_dir(tmp_path):
    assert inside(tmp_path, "table3") == (tmp_path / "table3").resolve()
    for name in ("..", "../x", "a/../../x", "/etc"):
        with pytest.raises(ConfigError, match="escape"):
            inside(tmp_path, name)


def test_shipped_spaces_are_valid_for_their_dataset():
    for name in ("thumos14", "anet12"):
        space = load_space(name)
        check_space(space, name, "quick")
        assert {"train.gamma", "localize.lam", "train.lr", "train.cycle", "model.hidden", "model.dropout"} <= {
            p.key for p in space.params}
        assert space.final_overrides == {"train.val_fraction": 0.0}


@pytest.mark.parametrize("params, words", [
    ({"train.gamma": {"distribution": "uniform", "low": 0.3, "high": 0.3}}, "empty range: low=0.3 must be below high=0.3"),
    ({"train.gamma": {"distribution": "normal", "low": 0, "high": 1}}, "bad distribution 'normal'"),
    ({"train.lr": {"distribution": "loguniform", "low": 0.0, "high": 1e-3}}, "loguniform needs low > 0"),
    ({"model.hidden": {"distribution": "categorical", "choices": []}}, "non-empty list (empty range)"),
    ({"train.cycle": {"distribution": "int", "low": 1, "high": 5, "q": 2}}, "unknown key(s) ['q']"),
    ({"train.lr": {"distribution": "uniform", "low": "1e-5", "high": 1e-3}}, "expected a finite number"),
    ({"train.gamma": {"distribution": "categorical", "choices": [0.1, float("nan")]}},
     "choices[1] is nan; expected a finite number"),
    ({"train.gamma": {"distribution": "categorical", "choices": [float("inf")]}}, "choices[0] is inf"),
    ({"train.gamma": {"distribution": "categorical", "choices": [0.1, [0.2]]}},
     "choices[1] is [0.2]; expected a number, string or boolean"),
    ({"train.gamma": {"distribution": "categorical", "choices": [None]}}, "choices[0] is None"),
])
def test_bad_space_raises_config_error_naming_the_parameter(params, words):
    with pytest.raises(ConfigError) as err:
        parse_space({"params": params}, "space.yaml")
    assert words in str(err.value)
    assert "space.yaml: params." in str(err.value)


def test_space_with_an_unknown_config_key_is_rejected_by_the_config():
    space = parse_space({"params": {"train.gama": {"distribution": "uniform", "low": 0, "high": 1}},
                         "fixed": {"train.val_fraction": 0.2}}, "typo.yaml")
    with pytest.raises(ConfigError, match="typo.yaml: .*unknown config key 'train.gama'"):
        check_space(space, "thumos14", "quick")


def test_space_without_a_validation_slice_is_rejected():
    space = parse_space({"params": {"train.gamma": {"distribution": "uniform", "low": 0, "high": 1}},
                         "fixed": {"train.val_fraction": 0.0}}, "noval.yaml")
    with pytest.raises(ConfigError, match="held-out slice of the training videos"):
        check_space(space, "thumos14", "quick")


def test_check_results_dir_refuses_unwritable_and_full(tmp_path):
    assert check_results_dir(tmp_path / "new") == (tmp_path / "new").resolve()
    with pytest.raises(ConfigError, match="cannot create the results directory"):
        check_results_dir("/proc/emmil-results")  # not creatable, even as root
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        if os.access(locked, os.W_OK):  # running as root: permissions do not apply
            pytest.skip("root ignores directory permissions")
        with pytest.raises(ConfigError, match="not writable"):
            check_results_dir(locked)
    finally:
        os.chmod(locked, 0o700)
    with pytest.raises(ConfigError, match="MiB free, need at least"):
        check_results_dir(tmp_path, min_free_bytes=2**62)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot create|not a directory"):
        check_results_dir(tmp_path / "file")


def test_mean_std_and_summary_table_numbers():
    # values 0.2, 0.3, 0.4: mean 0.3, sample std sqrt(((0.1)^2 + 0 + (0.1)^2) / 2) = 0.1
    mean, std, n = mean_std([0.2, 0.3, 0.4, float("nan"), None])
    assert (round(mean, 12), round(std, 12), n) == (0.3, 0.1, 3)
    assert mean_std([0.5]) == (0.5, 0.0, 1)
    assert math.isnan(mean_std([])[0])
    rows = [{"variant": "full", "test_avg_mAP": v, "test_mAP_0.50": 0.5} for v in (0.2, 0.3, 0.4)]
    rows.append({"variant": "joint", "error": "boom"})  # failed trial: counted in trials, not in n
    table = summary_table(rows, order=["joint", "full"])
    lines = table.splitlines()
    assert lines[2].startswith("joint")
    assert lines[2].split()[1] == "1" and lines[2].count("-") >= 2
    assert "30.00 +- 10.00 (3)" in lines[3]
    assert "50.00 +-  0.00 (3)" in lines[3]
    # one trial: its mean and (1), no '+- 0.00' posing as a measured spread (issue 14.10)
    one = summary_table([{"variant": "full", "test_avg_mAP": 0.25, "test_mAP_0.50": 0.5}], order=["full"])
    assert "25.00 (1)" in one and "+-" not in one.splitlines()[2]


def test_pick_best_reads_the_study_and_prefers_trials_that_ran_every_epoch(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    dist = {"x": optuna.distributions.IntDistribution(0, 9)}

    def add(x, value, state, trial_id=None):
        states = optuna.trial.TrialState
        study.add_trial(optuna.trial.create_trial(
            params={"x": x}, distributions=dist, value=value if state == "complete" else None,
            state={"complete": states.COMPLETE, "pruned": states.PRUNED, "fail": states.FAIL}[state],
            intermediate_values={1: value}, user_attrs={"trial_id": trial_id} if trial_id else {}))

    with pytest.raises(ConfigError, match="no search trial of study 's' reported val_avg_mAP"):
        pick_best(url, "s")  # an empty study
    add(1, 0.9, "pruned")  # stopped early by ASHA: its 0.9 is not a final value
    only_pruned = pick_best(url, "s")
    assert only_pruned["value"] == 0.9 and only_pruned["complete"] == 0 and only_pruned["pruned"] == 1
    add(2, 0.5, "complete")
    add(3, 0.6, "complete", "s/search/abc")
    add(4, 0.6, "complete")  # tie: the earlier wins
    add(5, 0.99, "fail")  # a crashed trial is never picked
    best = pick_best(url, "s")
    assert best["params"] == {"x": 3} and best["value"] == 0.6 and best["trial"] == "s/search/abc"
    assert (best["complete"], best["pruned"]) == (3, 1)


def test_check_space_resolves_every_categorical_choice_not_only_the_ends():
    # a middle choice (-1) is the only value the config rejects (train.gamma must lie in [0, 1])
    space = parse_space({"params": {"train.gamma": {"distribution": "categorical", "choices": [0.1, -1.0, 0.3]}},
                         "fixed": {"train.val_fraction": 0.2}}, "middle.yaml")
    with pytest.raises(ConfigError, match=r"middle\.yaml: .*train\.gamma"):
        check_space(space, "thumos14", "quick")
