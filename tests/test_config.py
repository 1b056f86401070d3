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
    ("train.nope", "1"), ("nosection.x", "1"), ("model.hidden", "abc"),
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
