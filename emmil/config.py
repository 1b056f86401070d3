"""Run configuration: frozen dataclasses whose defaults are the paper's values.

Sources: Luo et al., "Weakly-Supervised Action Localization with Expectation-Maximization
Multi-Instance Learning", ECCV 2020 (section 4.1 "Implementation details", Eq. 5, Eq. 9), and the
authors' released code for what the paper leaves open (head architecture, gate threshold).

`resolve_config(dataset, preset=, variant=, seed=, config_file=, overrides=)` builds a RunConfig:
  1. the dataset's paper defaults (THUMOS14 / ActivityNet1.2 differ in gamma, lambda, cycle, lr boost),
  2. the preset ("paper" = those defaults; "quick" = small widths and a shortened schedule of the same
     shape, for smoke runs on dim-64 semi-synthetic data),
  3. a YAML file (nested sections or dotted keys),
  4. `overrides` (dotted keys; values may be strings from `--set k=v` and are parsed),
  5. the explicit `variant` / `seed` arguments.
`dataset` and `preset` may be left None when the file names them (a run's own config.yaml does: it
round-trips to the config that wrote it); given both ways and different, they are refused by name
rather than one silently winning. Unknown keys, non-string keys and invalid values raise ConfigError
naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from emmil.data.safe_parse import load_yaml, short_repr
from emmil.errors import ConfigError

MAX_SEED = 2**32 - 1  # numpy.random.seed / torch generators: larger seeds overflow deep inside
_MAX_INT = 2**63 - 1  # every int field ends up in a C int64 (torch, numpy)

DATASETS = ("thumos14", "anet12")
# Methods (Table 3 and the attention-MIL baseline) and reference rows (issue 10): `supervised` is the
# ceiling of this architecture + localiser (ground-truth clip labels), `oracle-key` the EM-MIL M step
# with ground-truth key instances, `whole-video` the floor (one proposal per gated class).
METHOD_VARIANTS = ("full", "no-pseudo-label", "joint", "attention-mil")
REFERENCE_VARIANTS = ("supervised", "oracle-key", "whole-video")
VARIANTS = METHOD_VARIANTS + REFERENCE_VARIANTS
PRESETS = ("paper", "quick")
SCHEDULES = ("paper", "released")
SCORES = ("mean", "outer-inner")  # proposal scoring (localize.score)
GATES = ("linear-mean", "attention")  # video-level gating classifier (model.gate)
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ModelConfig:
    # Authors' release: per head Conv1d(1024 -> 256, k=3, pad=1) -> ReLU -> Linear -> sigmoid.
    # The stream width (1024 for I3D) comes from the dataset; `hidden` is the conv's output width.
    hidden: int = 256
    # NOT in the authors' release (its heads have no dropout): a documented choice, applied between
    # the conv and the linear layer of every head and in the gate. Measured on the held-out training
    # videos (semi-synthetic THUMOS14 v1, quick preset, one video per step, seed 0; val avg mAP after
    # the per-run lambda/gate choice): dropout 0 -> full 5.2 %, attention-mil 2.9 %, gate test cls mAP
    # 0.49; dropout 0.5 -> 5.7 %, 17.2 %, 0.74. 0 reproduces the release's heads.
    dropout: float = 0.5
    kernel_size: int = 3  # temporal receptive field of the conv (odd: "same" padding)
    # Video-level classifier for test-time class gating. The paper gates with a classifier trained
    # apart from EM-MIL (section 3.5: "a plain UntrimmedNet with soft attentions"; W-TALC's on
    # ActivityNet1.2), so the gate is not part of the method under test and is the same for every variant.
    # "linear-mean": a softmax-linear classifier on the video's mean feature, standardised with the
    #   training videos' statistics, fitted once to the minimum of its convex loss (L2 train.gate_l2)
    #   before any head trains (emmil.train.fit_linear_mean_gate).
    # "attention": UntrimmedNet-style soft-attention MIL over clips (Linear(D -> cls_hidden) -> ReLU,
    #   one attention, class scores), trained with Adam at train.cls_lr, one video per step, in the first
    #   train.gate_epochs epochs.
    # Why linear-mean here: on semi-synthetic THUMOS14 v2 at dim 1024 the attention gate reached a
    # held-out (val) classification mAP of 35 % (test 38 %) and bounded every row of the paper-preset
    # table (bench/oracle_gate.py). On the training videos, 5-fold CV (bench/gate_cv.py, its JSON in
    # bench/records/gate-cv/): the same linear model class fitted by Adam one video per step 51-74 %,
    # full-batch Adam 81-85 %, the convex fit 90 % (raw scale 73 %): the fit, not the data, was the bound.
    # The quick preset keeps "attention": it reaches 98 % on the dim-64 data.
    gate: str = "linear-mean"
    cls_hidden: int = 256  # "attention" gate: hidden width of its clip encoder


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 65  # paper 4.1: 30 epochs of 10-epoch E/M cycles + 35 epochs alternating each epoch
    lr: float = 1e-4  # paper 4.1: Adam, initial learning rate 0.0001 for both datasets
    lr_boost: float = 4.0  # paper 4.1: "raise the learning rate to 4 times larger" (THUMOS14); 1 = constant
    # "paper": cycles of `cycle` epochs for `cycle_epochs` epochs, then lr x lr_boost and alternate
    # every epoch. "released": the authors' code: lr boost already from the third cycle (epoch 21).
    schedule: str = "paper"
    cycle: int = 10  # paper 4.1: alternate E/M every 10 epochs (THUMOS14), 5 (ActivityNet1.2)
    cycle_epochs: int = 30  # paper 4.1: "in the first 30 epochs"
    gamma: float = 0.15  # Eq. 5 threshold: 0.15 THUMOS14, 0 ActivityNet1.2 (paper 4.1)
    # Videos per optimiser step (whole videos, no cropping). The paper states no batch size; the
    # authors' release builds on UntrimmedNet and trains with ONE video per step (its opts: batch_size
    # 1, ~200 Adam steps per THUMOS14 epoch). Packing 10 gave `full` ~560 q_phi steps over 65 epochs
    # instead of ~5,600 and left q_phi near its initialisation (E loss ~0.66 after the first E block).
    # Losses are per-video means averaged over the videos of a step, so a larger pack is the release's
    # loss averaged over videos, with fewer steps.
    batch_videos: int = 1
    weight_decay: float = 0.0  # the paper states none
    # Held-out slice of the TRAINING videos (seeded, class-stratified; never trained on). It is the only
    # data used to choose anything: validation metrics for search, and the localiser's lambda and gate
    # threshold per run (localize.select_on_val). 0 = train on every training video, fixed values.
    val_fraction: float = 0.1
    eval_every: int = 5  # validation every k epochs (and at the last epoch) when val_fraction > 0
    cls_lr: float = 1e-4  # "attention" gate: Adam lr (UntrimmedNet-style, trained on video labels)
    # "linear-mean" gate: L2 weight on W (loss = softmax cross-entropy mean over videos + gate_l2 ||W||^2),
    # chosen by 5-fold CV on the training videos of semi-synthetic THUMOS14 v2, dim 1024 (bench/gate_cv.py:
    # cls mAP 43.9 / 52.8 / 80.6 / 87.0 / 89.7 / 87.9 / 81.9 % at 0 / 1e-6 / 1e-5 / 3e-5 / 1e-4 / 3e-4 / 1e-3).
    gate_l2: float = 1e-4
    # The "attention" gate trains on its own schedule, in the first `gate_epochs` epochs, then stays frozen (the
    # release gates with a separately trained UntrimmedNet, 45 epochs; inside a 65-epoch EM loop at
    # batch 10 our gate ended barely above the class prior).
    gate_epochs: int = 45  # ActivityNet1.2: the same gate (the paper used W-TALC's classifier there)
    # Evaluation protocol: drop predictions overlapping THUMOS14 'Ambiguous' segments (W-TALC evaluator
    # option). False = the plain ActivityNet-evaluator protocol.
    exclude_ambiguous: bool = False


@dataclass(frozen=True)
class LocalizeConfig:
    """The fields of emmil.localize.LocalizeParams (the localiser owns their meaning), then
    `select_on_val`, which emmil.train reads (how the localiser's values are chosen, not one of them)."""

    lam: float = 0.8  # Eq. 9: L = lam*Q + (1-lam)*P; 0.8 THUMOS14, 0.3 ActivityNet1.2 (paper 3.5)
    rgb_weight: float = 0.5  # paper 4.1: RGB/flow scores fused by weighted averaging
    gamma: float = 0.15  # threshold of L "using the same scheme as training time in Eq. 5" (paper 3.5)
    gate: float = 0.15  # released code: keep classes whose video-level score > 0.15
    score: str = "outer-inner"  # proposal score (the release wrote 1 for all: a defect we do not copy)
    nms_iou: float = 0.0  # per-class NMS IoU threshold; 0 disables NMS
    # "" = the paper's single Eq. 5-form threshold; else levels on the min-max normalised L_c, a list
    # "0.1,0.25,0.5" or an inclusive range "0.1:0.9:0.1" (the field's, CO2-Net/DELU; pair with nms_iou 0.5)
    thresholds: str = ""
    min_clips: int = 1  # shortest proposal kept, in clips
    outer_margin: float = 0.25  # outer-inner contrast: margin as a fraction of the proposal length
    # Choose lam and gate per run on the held-out training videos (grid emmil.train.SELECTION_GRID,
    # the same for every variant), then localise the test split with the chosen values. With one lam
    # for every variant, attention-based variants were judged on a Q whose level is arbitrary. Needs
    # train.val_fraction > 0; False = the fixed values above.
    select_on_val: bool = True


@dataclass(frozen=True)
class RunConfig:
    dataset: str = "thumos14"
    variant: str = "full"
    seed: int = 0
    device: str = "auto"
    preset: str = "paper"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    localize: LocalizeConfig = field(default_factory=LocalizeConfig)

    def to_flat_dict(self) -> dict[str, Any]:
        """Dotted keys -> scalars (what MLflow logs as params)."""
        flat: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                for g in fields(value):
                    flat[f"{f.name}.{g.name}"] = getattr(value, g.name)
            else:
                flat[f.name] = value
        return flat

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS = {"model": ModelConfig, "train": TrainConfig, "localize": LocalizeConfig}
TOP_LEVEL = ("dataset", "variant", "seed", "device", "preset")

# Per-dataset paper values (section 4.1 and Eq. 9); everything else is shared.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "thumos14": {},
    "anet12": {
        "train.gamma": 0.0,  # paper 4.1: gamma = 0 for ActivityNet1.2
        "train.cycle": 5,  # paper 4.1: alternating cycle 5 epochs
        "train.lr_boost": 1.0,  # paper 4.1: "the learning rate is constant"
        "localize.lam": 0.3,  # paper 3.5: lambda = 0.3 on ActivityNet1.2
        "localize.gamma": 0.0,  # same threshold scheme as Eq. 5 with the dataset's gamma
    },
}

# "quick": same schedule shape (cycles, then per-epoch alternation with the lr boost) shortened
# 65 -> 26 epochs (cycle 10 -> 4, cycled phase 30 -> 12), small widths for dim-64 features.
PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    "paper": {},
    "quick": {
        "model.hidden": 64,
        "model.cls_hidden": 64,
        "model.gate": "attention",  # converges here: 98 % test classification mAP on the dim-64 data
        "train.epochs": 26,
        "train.cycle": 4,
        "train.cycle_epochs": 12,
        "train.lr": 1e-3,  # 10x the paper's lr: 2.5x fewer epochs and small widths
        # The gate (softmax over classes) must fit the video labels within 26 short epochs: measured
        # on semi-synthetic THUMOS14 v1, dim 64, batch 4, `whole-video` seed 0: cls_lr 1e-4 -> loss
        # 2.79 (ln 20 = 3.00), test classification mAP ~0.1; 3e-4 -> 0.28; 1e-3 -> loss 0.60, 0.62;
        # 1e-2 diverges to the uniform softmax. Variant-neutral: every variant trains the same gate.
        "train.cls_lr": 1e-3,
    },
}


def _parse_value(key: str, raw: Any, target_type: Any) -> Any:
    """Coerce `raw` (possibly a string from --set) to the field's type; ConfigError naming `key`."""
    kind = target_type if isinstance(target_type, type) else {"int": int, "float": float, "str": str,
                                                             "bool": bool}.get(str(target_type))
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.strip().lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(raw, str) and raw.strip().lower() in ("false", "0", "no", "off"):
                return False
            if isinstance(raw, int) and raw in (0, 1):
                return bool(raw)
            raise ValueError(raw)
        if kind is int:
            if isinstance(raw, bool):
                raise ValueError(raw)
            if isinstance(raw, float):
                if not raw.is_integer():
                    raise ValueError(raw)
                value = int(raw)
            elif isinstance(raw, str):
                text = raw.strip()
                if len(text.lstrip("+-")) > 19:  # int() of a huge string is slow and no field needs it
                    raise ConfigError(f"config key {key!r}: {short_repr(raw)} is too large (at most 2**63 - 1)")
                value = int(text)
            else:
                value = int(raw)
            if abs(value) > _MAX_INT:
                raise ConfigError(f"config key {key!r}: {short_repr(raw)} is too large (at most 2**63 - 1)")
            return value
        if kind is float:
            if isinstance(raw, bool):
                raise ValueError(raw)
            value = float(raw)
            if not math.isfinite(value):  # 'inf', 'nan', '1e309' (overflows to inf), YAML .inf
                raise ConfigError(f"config key {key!r}: {short_repr(raw)} is not a finite number")
            return value
        if kind is str:
            if not isinstance(raw, str):
                raise ValueError(raw)
            return raw.strip()
    except ConfigError:
        raise
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"config key {key!r}: cannot parse {short_repr(raw)} as "
                          f"{getattr(kind, '__name__', kind)}") from None
    raise ConfigError(f"config key {key!r}: unsupported type {target_type}")


def _field_types(cls) -> dict[str, Any]:
    return {f.name: f.type for f in fields(cls)}


def _flatten(mapping: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Nested {'train': {'gamma': 0.1}} or dotted {'train.gamma': 0.1} -> dotted keys. A key given
    both ways is refused (one of the two values would be dropped silently)."""
    flat: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        if key in flat:
            raise ConfigError(f"{source}: config key {key!r} is set twice (nested and dotted)")
        flat[key] = value

    for key, value in mapping.items():
        _check_key(key, source)
        if key in SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: config section {key!r} must be a mapping of its keys to values, "
                                  f"got {short_repr(value)}")
            for sub, v in value.items():
                _check_key(sub, f"{source}: section {key!r}")
                put(f"{key}.{sub}", v)
        else:
            put(key, value)
    return flat


def _check_key(key: Any, source: str) -> None:
    # YAML reads `1: x`, `null: 3`, `true: 1` as int/None/bool keys: a typo, never a config key
    if not isinstance(key, str):
        raise ConfigError(f"{source}: config key {short_repr(key)} is not a string "
                          f"(type {type(key).__name__}; keys are names like 'train.lr')")


def _apply(values: dict[str, Any], updates: Mapping[str, Any], source: str) -> None:
    """Check every key is known and parse its value; updates `values` (dotted key -> value) in place."""
    for key, raw in updates.items():
        _check_key(key, source)
        if key in TOP_LEVEL:
            typ = "int" if key == "seed" else "str"
        elif "." in key and key.split(".", 1)[0] in SECTIONS:
            section, name = key.split(".", 1)
            types = _field_types(SECTIONS[section])
            if name not in types:
                raise ConfigError(
                    f"{source}: unknown config key {short_repr(key)}; {section} has {sorted(types)}"
                )
            typ = types[name]
        else:
            raise ConfigError(
                f"{source}: unknown config key {short_repr(key)}; expected one of {list(TOP_LEVEL)} or "
                f"'<section>.<field>' with section in {list(SECTIONS)}"
            )
        try:
            values[key] = _parse_value(key, raw, typ)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None  # which file or flag the bad value came from


def validate(cfg: RunConfig) -> RunConfig:
    """Raise ConfigError naming the first invalid key; return cfg unchanged."""
    problem = first_invalid(cfg)
    if problem is not None:
        raise ConfigError(problem[1])
    return cfg


def first_invalid(cfg: RunConfig) -> tuple[str, str] | None:
    """(key, message) of the first invalid value of `cfg`, or None when every value is valid."""
    from emmil.localize import thresholds_ok  # the localiser owns the spec's syntax

    m, t, loc = cfg.model, cfg.train, cfg.localize
    checks = [
        ("dataset", cfg.dataset in DATASETS, f"unknown dataset {cfg.dataset!r}; expected one of {DATASETS}"),
        ("variant", cfg.variant in VARIANTS, f"unknown variant {cfg.variant!r}; expected one of {VARIANTS}"),
        ("preset", cfg.preset in PRESETS, f"unknown preset {cfg.preset!r}; expected one of {PRESETS}"),
        ("device", cfg.device in DEVICES, f"unknown device {cfg.device!r}; expected one of {DEVICES}"),
        ("seed", 0 <= cfg.seed <= MAX_SEED, f"must be in [0, {MAX_SEED}] (2**32 - 1, numpy's seed range)"),
        ("model.hidden", m.hidden >= 1, "must be >= 1"),
        ("model.cls_hidden", m.cls_hidden >= 1, "must be >= 1"),
        ("model.gate", m.gate in GATES, f"unknown gate {m.gate!r}; expected one of {GATES}"),
        ("model.dropout", 0.0 <= m.dropout < 1.0, "must be in [0, 1)"),
        ("model.kernel_size", m.kernel_size >= 1 and m.kernel_size % 2 == 1, "must be a positive odd integer"),
        ("train.epochs", t.epochs >= 1, "must be >= 1"),
        ("train.lr", t.lr > 0, "must be > 0"),
        ("train.cls_lr", t.cls_lr > 0, "must be > 0"),
        ("train.lr_boost", t.lr_boost > 0, "must be > 0"),
        ("train.schedule", t.schedule in SCHEDULES, f"unknown schedule {t.schedule!r}; expected one of {SCHEDULES}"),
        ("train.cycle", t.cycle >= 1, "must be >= 1"),
        ("train.cycle_epochs", t.cycle_epochs >= 0, "must be >= 0"),
        ("train.gamma", t.gamma >= 0, "must be >= 0 (Eq. 5 threshold offset)"),
        ("train.batch_videos", t.batch_videos >= 1, "must be >= 1"),
        ("train.weight_decay", t.weight_decay >= 0, "must be >= 0"),
        ("train.val_fraction", 0.0 <= t.val_fraction < 1.0, "must be in [0, 1)"),
        ("train.eval_every", t.eval_every >= 1, "must be >= 1"),
        ("train.gate_epochs", t.gate_epochs >= 0, "must be >= 0"),
        ("train.gate_l2", t.gate_l2 >= 0, "must be >= 0"),
        ("localize.lam", 0.0 <= loc.lam <= 1.0, "must be in [0, 1] (Eq. 9 weight)"),
        ("localize.rgb_weight", 0.0 <= loc.rgb_weight <= 1.0, "must be in [0, 1]"),
        ("localize.gamma", loc.gamma >= 0, "must be >= 0"),
        ("localize.gate", 0.0 <= loc.gate <= 1.0, "must be in [0, 1]"),
        ("localize.score", loc.score in SCORES, f"unknown proposal score {loc.score!r}; expected one of {SCORES}"),
        ("localize.nms_iou", 0.0 <= loc.nms_iou <= 1.0, "must be in [0, 1] (0 disables NMS)"),
        ("localize.thresholds", thresholds_ok(loc.thresholds),
         "must be '', a list '0.1,0.5' or a range 'A:B:S' of at most 100 values in [0, 1]"),
        ("localize.min_clips", loc.min_clips >= 1, "must be >= 1"),
        ("localize.outer_margin", loc.outer_margin >= 0, "must be >= 0"),
    ]
    for key, ok, message in checks:
        if not ok:
            value = cfg.to_flat_dict()[key]
            return key, f"config key {key!r} = {short_repr(value)}: {message}"
    return None


def _build(values: Mapping[str, Any]) -> RunConfig:
    sections = {name: {} for name in SECTIONS}
    top = {}
    for key, value in values.items():
        if key in TOP_LEVEL:
            top[key] = value
        else:
            section, name = key.split(".", 1)
            sections[section][name] = value
    return RunConfig(**top, **{name: SECTIONS[name](**kw) for name, kw in sections.items()})


def _read_config_file(path: Path) -> dict[str, Any]:
    """The file's keys, flattened to dotted keys (UTF-8, no aliases or tags, bounded depth)."""
    loaded = load_yaml(path, "config file", error=ConfigError)
    if loaded is None:  # an empty file: no overrides
        return {}
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"{path}: a config file must be a mapping of keys to values, got "
                          f"{short_repr(loaded)} (type {type(loaded).__name__}) at the top level")
    return _flatten(loaded, str(path))


def _choose(key: str, argument: str | None, from_file: Mapping[str, Any], path: Path | None,
            choices: tuple[str, ...], default: str | None) -> str:
    """`dataset` / `preset`: the argument, else the file's value, else `default`. Both given and
    different: refused (a file holding a full config would otherwise be layered on the wrong
    dataset's or preset's defaults, or silently override what was asked for)."""
    in_file = from_file.get(key)
    if argument is not None and key in from_file and in_file != argument:
        raise ConfigError(f"{path}: config key {key!r} is {short_repr(in_file)} but the run asks for "
                          f"{argument!r} (--{key}); drop --{key} to use the file's, or edit the file")
    value = argument if argument is not None else in_file if key in from_file else default
    if value is None:
        raise ConfigError(f"config key {key!r}: not given; pass --{key} or a config file that sets {key!r}")
    if value not in choices:
        where = f"{path}: " if argument is None and key in from_file else ""
        raise ConfigError(f"{where}config key {key!r}: unknown {key} {short_repr(value)}; expected one of {choices}")
    return value


def resolve_config(
    dataset: str | None = None,
    *,
    preset: str | None = None,
    variant: str | None = None,
    seed: int | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, object] = {},
) -> RunConfig:
    """The resolved, validated RunConfig (see the module docstring for the precedence order).

    dataset / preset None: the config file's, else (preset only) "paper"."""
    path = Path(config_file) if config_file is not None else None
    from_file = _read_config_file(path) if path is not None else {}
    dataset = _choose("dataset", dataset, from_file, path, DATASETS, None)
    preset = _choose("preset", preset, from_file, path, PRESETS, "paper")
    values: dict[str, Any] = {"dataset": dataset, "preset": preset}
    origin: dict[str, str] = {}  # key -> the file or flag that set it last, for the range errors below

    def layer(updates: Mapping[str, Any], source: str) -> None:
        _apply(values, updates, source)
        origin.update(dict.fromkeys(updates, source))

    layer(DATASET_DEFAULTS[dataset], "dataset defaults")
    layer(PRESET_OVERRIDES[preset], f"preset {preset!r}")
    layer(from_file, str(path))
    overrides = dict(overrides)
    for key in ("dataset", "preset"):
        if key in overrides and str(overrides[key]) != values[key]:
            raise ConfigError(f"override of config key {key!r} is not allowed; pass it as an argument")
    layer(overrides, "--set")
    if variant is not None:
        layer({"variant": variant}, "variant argument")
    if seed is not None:
        layer({"seed": seed}, "seed argument")
    cfg = _build(values)
    problem = first_invalid(cfg)
    if problem is not None:
        key, message = problem
        source = origin.get(key)
        raise ConfigError(f"{source}: {message}" if source in (str(path), "--set") else message)
    return cfg


def parse_set_args(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """['train.gamma=0.1', ...] -> {'train.gamma': '0.1'}; ConfigError for an item without '='."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {short_repr(item)}: expected key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from `to_dict()` / a saved config.yaml (unknown keys -> ConfigError)."""
    flat = _flatten(data, "config")
    values: dict[str, Any] = {}
    _apply(values, flat, "config")
    return validate(_build(values))


def config_hash(cfg: RunConfig) -> str:
    """12 hex chars identifying the resolved config (sha256 of its sorted flat dict)."""
    payload = json.dumps(cfg.to_flat_dict(), sort_keys=True, default=str, allow_nan=False).encode()  # validated: finite
    return hashlib.sha256(payload).hexdigest()[:12]
