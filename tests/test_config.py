import pytest

from emmil.config import config_from_dict, config_hash, parse_set_args, resolve_config
from emmil.errors import ConfigError


def test_paper_defaults_per_dataset():
    t = resolve_config("thumos14")
    assert (t.train.gamma, t.localize.lam, t.train.cycle, t.train.lr_boost, t.train.lr, t.train.epochs) == (
        0.15, 0.8, 10, 4.0, 1e-4, 65)
    a = resolve_config("anet12")
    assert (a.train.gamma, a.localize.lam, a.train.cycle, a.train.lr_boost) == (0.0, 0.3, 5, 1.0)


def test_overrides_are_parsed_from_strings_and_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  gamma: 0.2\nlocalize.lam: 0.5\nvariant: joint\n")
    cfg = resolve_config("thumos14", config_file=f, overrides=parse_set_args(["model.hidden=32", "train.exclude_ambiguous=true"]))
    assert (cfg.train.gamma, cfg.localize.lam, cfg.variant, cfg.model.hidden, cfg.train.exclude_ambiguous) == (
        0.2, 0.5, "joint", 32, True)
    # explicit variant/seed arguments win over the file
    assert resolve_config("thumos14", config_file=f, variant="full", seed=3).variant == "full"


@pytest.mark.parametrize("key,value", [
    ("train.gamma", "-0.1"), ("localize.lam", "1.5"), ("variant", "bogus"), ("train.schedule", "x"),
    ("train.nope", "1"), ("nosection.x", "1"), ("model.hidden", "abc"), ("model.gate", "topk"), ("train.gate_l2", "-1"),
])
def test_invalid_or_unknown_key_names_the_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve_config("thumos14", overrides={key: value})


def test_unknown_dataset_and_preset():
    with pytest.raises(ConfigError, match="dataset"):
        resolve_config("ucf101")
    with pytest.raises(ConfigError, match="preset"):
        resolve_config("thumos14", preset="huge")


def test_round_trip_flat_yaml_and_hash():
    cfg = resolve_config("anet12", preset="quick", variant="joint", seed=4)
    import yaml

    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert config_hash(again) == config_hash(cfg) and len(config_hash(cfg)) == 12
    flat = cfg.to_flat_dict()
    assert flat["train.gamma"] == 0.0 and flat["variant"] == "joint" and flat["model.hidden"] == 64
    assert config_hash(resolve_config("anet12", preset="quick", variant="joint", seed=5)) != config_hash(cfg)


def test_localize_section_matches_localize_params():
    from dataclasses import fields

    from emmil.config import LocalizeConfig
    from emmil.localize import LocalizeParams

    assert [f.name for f in fields(LocalizeConfig)] == [f.name for f in fields(LocalizeParams)] + ["select_on_val"]


# ---- issue 14.10: a run's own config.yaml as --config


def _saved(tmp_path, cfg):
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())  # what emmil.train / harness.ray_tune write beside every run
    return path


@pytest.mark.parametrize("dataset", ["thumos14", "anet12"])
def test_saved_quick_config_round_trips_without_preset_or_dataset(tmp_path, dataset):
    # A quick-preset run with overrides: the file alone rebuilds it, whatever --preset defaults to
    # (the old default "paper" contradicted the file's `preset: quick` and was refused).
    cfg = resolve_config(dataset, preset="quick", variant="attention-mil", seed=7,
                         overrides={"train.lr": "3e-5", "localize.thresholds": "0.1:0.9:0.1", "device": "cpu"})
    path = _saved(tmp_path, cfg)
    assert resolve_config(config_file=path) == cfg
    assert resolve_config(dataset, config_file=path) == cfg
    assert resolve_config(dataset, preset="quick", config_file=path) == cfg
    again = resolve_config(config_file=path)
    assert (again.preset, again.model.hidden, again.train.epochs, again.train.lr, again.seed) == ("quick", 64, 26, 3e-5, 7)


def test_explicit_preset_or_dataset_contradicting_the_file_is_refused_by_name(tmp_path):
    path = _saved(tmp_path, resolve_config("thumos14", preset="quick"))
    with pytest.raises(ConfigError, match=r"config\.yaml: config key 'preset' is 'quick' but the run asks for 'paper'"):
        resolve_config("thumos14", preset="paper", config_file=path)
    with pytest.raises(ConfigError, match=r"config\.yaml: config key 'dataset' is 'thumos14' but the run asks for 'anet12'"):
        resolve_config("anet12", config_file=path)


def test_dataset_must_come_from_somewhere(tmp_path):
    with pytest.raises(ConfigError, match=r"config key 'dataset': not given; pass --dataset"):
        resolve_config()
    partial = tmp_path / "partial.yaml"
    partial.write_text("train:\n  gamma: 0.2\n")  # no dataset, no preset: paper defaults under the file
    with pytest.raises(ConfigError, match=r"'dataset': not given"):
        resolve_config(config_file=partial)
    cfg = resolve_config("anet12", config_file=partial)
    assert (cfg.preset, cfg.train.gamma, cfg.localize.lam) == ("paper", 0.2, 0.3)


def test_range_errors_name_the_file_or_flag_that_set_the_value(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: config key 'train\.epochs' = 0: must be >= 1"):
        resolve_config("thumos14", config_file=f)
    with pytest.raises(ConfigError, match=r"^--set: config key 'train\.lr' = -1\.0: must be > 0"):
        resolve_config("thumos14", overrides={"train.lr": "-1"})


@pytest.mark.parametrize("text,message", [
    ("- 1\n- 2\n", r"a config file must be a mapping of keys to values, got \[1, 2\] \(type list\)"),
    ("42\n", r"got 42 \(type int\) at the top level"),
    ("1: x\n", r"config key 1 is not a string \(type int"),
    ("null: 3\n", r"config key None is not a string \(type NoneType"),
    ("true: 3\n", r"config key True is not a string \(type bool"),
    ("train:\n  1: x\n", r"section 'train': config key 1 is not a string"),
    ("[a]: b\n", r"not valid YAML \(while constructing a mapping; found unhashable key at line 1 column 1\)"),
    ("train: 3\n", r"config section 'train' must be a mapping of its keys to values, got 3"),
    ("train:\n  lr: 0.1\ntrain.lr: 0.2\n", r"config key 'train\.lr' is set twice"),
    ("train:\n  lr: 0.1\n  lr: 0.2\n", r"not valid YAML \(duplicate key 'lr' .* at line 3 column 3\)"),
    ("train: !!python/object/apply:os.system ['true']\n",
     r"not valid YAML \(tag '!!python/object/apply:os\.system' refused .* at line 1 column 8\)"),
    ("train:\n  lr: .nan\n", r"config key 'train\.lr': nan is not a finite number"),
])
def test_hostile_config_files_are_refused_naming_the_file(tmp_path, text, message):
    f = tmp_path / "hostile.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=r"hostile\.yaml: .*" + message) as info:
        resolve_config("thumos14", config_file=f)
    assert "\n" not in str(info.value)  # one line: the CLI prints `error: <message>`


@pytest.mark.parametrize("key", [1, None, ("train", "lr")])
def test_non_string_override_keys_are_a_config_error(key):
    # used to be TypeError ("argument of type 'int' is not iterable") from the API
    with pytest.raises(ConfigError, match=r"--set: config key .* is not a string"):
        resolve_config("thumos14", overrides={key: "1"})


@pytest.mark.parametrize("key,value", [
    ("train.lr", "nan"), ("train.lr", "inf"), ("train.lr", "-inf"), ("train.lr", "1e309"), ("train.cls_lr", "NaN"),
    ("localize.lam", float("nan")), ("train.gamma", float("inf")),
])
def test_float_keys_refuse_non_finite_values_by_name(key, value):
    with pytest.raises(ConfigError, match=rf"config key '{key}': .* is not a finite number"):
        resolve_config("thumos14", overrides={key: value})
