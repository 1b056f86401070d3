"""Declarative experiments (`ablations/*.yaml`) and search spaces (`ablations/spaces/*.yaml`).

An experiment is data, not code: a name, a description, optional overrides shared by every
variant, and a list of variants, each a name plus dotted config overrides (the same keys as
`emmil train --set`, e.g. `variant`, `train.gamma`, `localize.lam`). Expanding it with a seed count
gives the trials (variant x seed). A search space maps dotted config keys to Optuna distributions.

Every unknown key, empty range or unsafe name raises `emmil.errors.ConfigError` naming the file and
the key: a typo never silently falls back to a default.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from emmil.data.safe_parse import load_yaml, short_repr
from emmil.errors import ConfigError

ABLATIONS_DIR = Path(__file__).resolve().parents[1] / "ablations"
SPACES_DIR = ABLATIONS_DIR / "spaces"

# Names become directory names under the results dir and MLflow experiment names: letters,
# digits, '-', '_', '.', starting with a letter or digit, never '..', at most 64 characters.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

_EXPERIMENT_KEYS = {"name", "description", "dataset", "preset", "seeds", "overrides", "variants"}
_VARIANT_KEYS = {"name", "description", "overrides"}
_SPACE_KEYS = {"name", "description", "dataset", "fixed", "params", "final_overrides"}
# distribution -> required fields (besides `distribution`), optional fields
_DISTRIBUTIONS: dict[str, tuple[set[str], set[str]]] = {
    "uniform": ({"low", "high"}, set()),
    "loguniform": ({"low", "high"}, set()),
    "int": ({"low", "high"}, {"step"}),
    "categorical": ({"choices"}, set()),
}


def check_safe_name(name: object, where: str) -> str:
    """`name` if it is safe as one path component and an MLflow name, else ConfigError."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise ConfigError(
            f"{where}: name {short_repr(name)} is not allowed (letters, digits, '-', '_', '.'; no '/', no '..', "
            "at most 64 characters): it becomes a directory under the results dir"
        )
    return name


@dataclass(frozen=True)
class Variant:
    name: str  # row label in tables, part of trial names
    overrides: Mapping[str, Any]  # dotted config keys -> values; includes `variant` when not 'full'
    description: str = ""


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    variants: tuple[Variant, ...]
    overrides: Mapping[str, Any] = field(default_factory=dict)  # shared by every variant
    dataset: str | None = None  # default dataset when --dataset is not given
    preset: str | None = None  # default preset when --preset is not given
    seeds: int = 5  # default seed count
    path: str = ""


@dataclass(frozen=True)
class TrialSpec:
    """One training run of an experiment: a variant at a seed."""

    name: str  # "<variant>-s<seed>", unique in the experiment; also emmil.trial_id's stem
    variant: str  # the experiment's variant label
    seed: int
    overrides: Mapping[str, Any]  # experiment + variant overrides (seed excluded)


MAX_SEEDS = 1000  # seeds per variant: more is a typo (and a trial list that fills memory), not a plan


def _read_yaml_mapping(path: Path) -> dict:
    data = load_yaml(path, "YAML", error=ConfigError)  # UTF-8, no aliases (alias bombs), bounded depth
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _reject_unknown(data: Mapping, allowed: set[str], where: str) -> None:
    unknown = sorted(set(map(str, data)) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _overrides(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{where}: 'overrides' must be a mapping of dotted config keys to values")
    if "seed" in value:
        raise ConfigError(f"{where}: 'seed' cannot be overridden here; seeds come from --seeds")
    return dict(value)


def parse_experiment(data: Mapping, path: str) -> Experiment:
    """Validate a loaded experiment mapping (see module doc); `path` is used in messages."""
    _reject_unknown(data, _EXPERIMENT_KEYS, path)
    name = check_safe_name(data.get("name"), f"{path}: 'name'")
    stem = Path(path).stem
    if path.endswith((".yaml", ".yml")) and stem != name:
        raise ConfigError(f"{path}: 'name' is {short_repr(name)} but the file is {stem!r}.yaml; they must agree")
    raw_variants = data.get("variants")
    if not isinstance(raw_variants, list) or not raw_variants:
        raise ConfigError(f"{path}: 'variants' must be a non-empty list")
    variants = []
    for i, item in enumerate(raw_variants):
        where = f"{path}: variants[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a mapping with 'name' and 'overrides'")
        _reject_unknown(item, _VARIANT_KEYS, where)
        vname = check_safe_name(item.get("name"), f"{where}: 'name'")
        variants.append(Variant(vname, _overrides(item.get("overrides"), where), str(item.get("description", ""))))
    names = [v.name for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{path}: duplicate variant name(s) {dupes}")
    seeds = data.get("seeds", 5)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= MAX_SEEDS:
        raise ConfigError(f"{path}: 'seeds' must be a positive integer (at most {MAX_SEEDS}), got {short_repr(seeds)}")
    return Experiment(
        name=name,
        description=str(data.get("description", "")).strip(),
        variants=tuple(variants),
        overrides=_overrides(data.get("overrides"), path),
        dataset=data.get("dataset"),
        preset=data.get("preset"),
        seeds=seeds,
        path=path,
    )


def experiment_path(name_or_path: str, directory: Path = ABLATIONS_DIR) -> Path:
    """A shipped experiment by name (`table3`) or any YAML file by path."""
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        path = Path(name_or_path)
    else:
        check_safe_name(name_or_path, "experiment")
        path = directory / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(e.name for e in list_experiments(directory)) or "none"
        raise ConfigError(f"unknown experiment {name_or_path!r} (no file {path}); known: {known}")
    return path


def load_experiment(name_or_path: str, directory: Path = ABLATIONS_DIR) -> Experiment:
    path = experiment_path(name_or_path, directory)
    return parse_experiment(_read_yaml_mapping(path), str(path))


def list_experiments(directory: Path = ABLATIONS_DIR) -> list[Experiment]:
    """Every experiment file in `directory`, sorted by name (a broken file raises)."""
    return [parse_experiment(_read_yaml_mapping(p), str(p)) for p in sorted(directory.glob("*.yaml"))]


def expand_trials(experiment: Experiment, seeds: int, first_seed: int = 0) -> list[TrialSpec]:
    """Variants x seeds, seed-major: 2 variants x 2 seeds -> [a-s0, b-s0, a-s1, b-s1] (trials that
    reuse another's training last: `_trainers_first`).

    Seed-major so that a long ablation stopped part-way (a paper-preset Table 3 on a CPU takes hours)
    has every variant at its first seeds done, which is a comparable table, rather than all seeds of
    the first variants and nothing of the last ones.
    """
    if not 1 <= seeds <= MAX_SEEDS:
        raise ConfigError(f"--seeds must be in [1, {MAX_SEEDS}], got {short_repr(seeds)}")
    trials = []
    for seed in range(first_seed, first_seed + seeds):
        for variant in experiment.variants:
            merged = {**experiment.overrides, **variant.overrides}
            trials.append(TrialSpec(f"{variant.name}-s{seed}", variant.name, seed, merged))
    return _trainers_first(trials)


def _trainers_first(trials: list[TrialSpec]) -> list[TrialSpec]:
    """Seed-major order, but a trial that will reuse an earlier trial's training (same seed, overrides
    that differ only in inference-only keys: harness.shared_training) goes after every trial that
    trains. Tune starts trials in this order: `lambda` x 3 seeds runs its 3 trainings side by side
    first, instead of one training with the other slots waiting for it. Trials with identical
    overrides as the first are its replicates, each trains (shared_training's ALONE), and keep their place; an
    experiment without such trials (table3) keeps the plain seed-major order."""
    from harness.shared_training import training_group

    first: dict[tuple[int, str], str] = {}  # (seed, training group) -> overrides of its first trial
    trainers, reusers = [], []
    for t in trials:
        full = json.dumps(dict(t.overrides), sort_keys=True, default=str)
        (trainers if first.setdefault((t.seed, training_group(t.overrides)), full) == full else reusers).append(t)
    return trainers + reusers


# ---------------------------------------------------------------------------------------------
# Search spaces


@dataclass(frozen=True)
class Param:
    key: str  # dotted config key, e.g. "train.gamma"
    distribution: str  # uniform | loguniform | int | categorical
    low: float | None = None
    high: float | None = None
    step: int | None = None
    choices: tuple = ()


@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str
    params: tuple[Param, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)  # overrides for every search trial
    # overrides for the final retrain on the full training split (e.g. no held-out slice)
    final_overrides: Mapping[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    path: str = ""


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {short_repr(value)}")
    return float(value)


def parse_param(key: str, spec: object, where: str) -> Param:
    where = f"{where}: params.{key}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping with 'distribution'")
    dist = spec.get("distribution")
    if dist not in _DISTRIBUTIONS:
        raise ConfigError(f"{where}: bad distribution {short_repr(dist)}; expected one of {sorted(_DISTRIBUTIONS)}")
    required, optional = _DISTRIBUTIONS[dist]
    _reject_unknown(spec, required | optional | {"distribution"}, where)
    missing = sorted(required - set(spec))
    if missing:
        raise ConfigError(f"{where}: distribution {short_repr(dist)} needs {missing}")
    if dist == "categorical":
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: 'choices' must be a non-empty list (empty range)")
        for i, choice in enumerate(choices):  # Optuna stores scalars; NaN never equals itself (issue 13)
            if isinstance(choice, float) and not math.isfinite(choice):
                raise ConfigError(f"{where}: choices[{i}] is {choice!r}; expected a finite number")
            if not isinstance(choice, (str, int, float)):  # bool is an int
                raise ConfigError(f"{where}: choices[{i}] is {short_repr(choice)}; expected a number, string or "
                                  "boolean")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{where}: 'choices' has duplicates: {short_repr(choices)}")
        return Param(key, dist, choices=tuple(choices))
    low, high = _number(spec["low"], f"{where}.low"), _number(spec["high"], f"{where}.high")
    if not low < high:
        raise ConfigError(f"{where}: empty range: low={low:g} must be below high={high:g}")
    if dist == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {low:g}")
    if dist == "int":
        if low != int(low) or high != int(high):
            raise ConfigError(f"{where}: int distribution needs integer bounds, got {low:g}..{high:g}")
        step = spec.get("step", 1)
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ConfigError(f"{where}: 'step' must be a positive integer, got {short_repr(step)}")
        return Param(key, dist, int(low), int(high), step=step)
    return Param(key, dist, low, high)


def parse_space(data: Mapping, path: str) -> SearchSpace:
    _reject_unknown(data, _SPACE_KEYS, path)
    name = check_safe_name(data.get("name", Path(path).stem), f"{path}: 'name'")
    raw = data.get("params")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: 'params' must be a non-empty mapping of config keys to distributions")
    params = tuple(parse_param(str(k), v, path) for k, v in raw.items())
    fixed = _overrides(data.get("fixed"), f"{path}: fixed")
    clash = sorted(set(fixed) & set(raw))
    if clash:
        raise ConfigError(f"{path}: key(s) {clash} are both searched and fixed")
    return SearchSpace(
        name=name,
        description=str(data.get("description", "")).strip(),
        params=params,
        fixed=fixed,
        final_overrides=_overrides(data.get("final_overrides"), f"{path}: final_overrides"),
        dataset=data.get("dataset"),
        path=path,
    )


def load_space(name_or_path: str, directory: Path = SPACES_DIR) -> SearchSpace:
    """A shipped space by name (`thumos14`) or any YAML file by path."""
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        path = Path(name_or_path)
    else:
        path = directory / f"{check_safe_name(name_or_path, 'space')}.yaml"
    if not path.is_file():
        raise ConfigError(f"search space file {path} does not exist")
    return parse_space(_read_yaml_mapping(path), str(path))


def sample_point(space: SearchSpace) -> dict[str, Any]:
    """One valid value per key (the low end / first choice): used to validate keys against the config."""
    point: dict[str, Any] = {}
    for p in space.params:
        point[p.key] = p.choices[0] if p.distribution == "categorical" else (
            int(p.low) if p.distribution == "int" else p.low
        )
    return point


# ---------------------------------------------------------------------------------------------
# Results directory and summaries


MIN_FREE_BYTES = 200 * 2**20  # refuse to start with less than 200 MiB free under the results dir


def check_results_dir(path: str | Path, min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """Create `path` if needed and check it is a writable directory with some free space.

    Called BEFORE any work starts, so that a sweep never dies at its end on a read-only mount.
    """
    import shutil
    import uuid

    path = Path(path).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--results {path}: cannot create the results directory ({exc.strerror})") from None
    if not path.is_dir():
        raise ConfigError(f"--results {path}: not a directory")
    probe = path / f".write-test-{uuid.uuid4().hex}"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--results {path}: not writable ({exc.strerror})") from None
    free = shutil.disk_usage(path).free
    if free < min_free_bytes:
        raise ConfigError(
            f"--results {path}: only {free / 2**20:.0f} MiB free, need at least {min_free_bytes / 2**20:.0f} MiB"
        )
    return path


def inside(base: Path, name: str) -> Path:
    """base/name, refusing anything that would resolve outside `base` (names from YAML files)."""
    target = (base / name).resolve()
    if target == base.resolve() or base.resolve() not in target.parents:
        raise ConfigError(f"run name {short_repr(name)} would escape the results directory {base}")
    return target


def mean_std(values: list[float]) -> tuple[float, float, int]:
    """Mean and sample std (ddof=1; 0 for a single value) of the finite values, and their count."""
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, 0
    mean = sum(finite) / len(finite)
    if len(finite) == 1:
        return mean, 0.0, 1
    var = sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)
    return mean, math.sqrt(var), len(finite)


def summary_table(rows: list[Mapping[str, Any]], group: str = "variant",
                  metrics: tuple[str, ...] = ("test_avg_mAP", "test_mAP_0.50"), order: list[str] | None = None) -> str:
    """A fixed-width table: one line per group, `mean +- std (n)` per metric, in percent.

    rows: one dict per trial (its final metrics, fractions in [0,1]); a row without a metric (failed
    trial) does not count towards n.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row.get(group, "?")), []).append(row)
    names = [g for g in (order or []) if g in groups] + sorted(g for g in groups if g not in (order or []))
    width = max([len(group)] + [len(n) for n in names])
    header = f"{group:<{width}}  trials  " + "  ".join(f"{m:>20}" for m in metrics)
    lines = [header, "-" * len(header)]
    for name in names:
        cells = []
        for m in metrics:
            mean, std, n = mean_std([r.get(m) for r in groups[name]])
            if n == 0:
                cells.append(f"{'-':>20}")
            elif n == 1:  # one trial has no spread: print no '+- 0.00' that reads as a measured std
                cells.append(f"{100 * mean:9.2f} (1)".rjust(20))
            else:
                cells.append(f"{100 * mean:9.2f} +- {100 * std:5.2f} ({n})".rjust(20))
        lines.append(f"{name:<{width}}  {len(groups[name]):>6}  " + "  ".join(cells))
    lines.append("(percent; mean +- sample std over seeds, (n) = trials with the metric)")
    return "\n".join(lines)
