"""Optuna adapter: a search space file -> Ray Tune domains, the seeded TPE searcher on an RDB study,
the early-stopping scheduler, and picking the configuration to retrain.

The study lives in an RDB (default sqlite:///<results>/optuna.db; any SQLAlchemy URL), so a sweep can
be resumed and inspected:  optuna-dashboard sqlite:///<results>/optuna.db
Only the driver writes to the study (Ray Tune's OptunaSearch runs in the driver), so SQLite is fine.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from emmil.errors import ConfigError
from harness.experiments import Param, SearchSpace, sample_point

OBJECTIVE = "val_avg_mAP"  # validation mAP on the held-out slice of the TRAINING videos
MODE = "max"
SCHEDULERS = ("asha", "median", "none")


def default_storage(results) -> str:
    from pathlib import Path

    return f"sqlite:///{Path(results).resolve()}/optuna.db"


def tune_domain(p: Param):
    """One Ray Tune domain per parameter (bounds inclusive for int)."""
    from ray import tune

    if p.distribution == "uniform":
        return tune.uniform(p.low, p.high)
    if p.distribution == "loguniform":
        return tune.loguniform(p.low, p.high)
    if p.distribution == "int":
        # tune.qrandint's upper bound is inclusive; randint's is exclusive.
        return tune.qrandint(int(p.low), int(p.high), p.step or 1) if (p.step or 1) > 1 else tune.randint(int(p.low), int(p.high) + 1)
    if p.distribution == "categorical":
        return tune.choice(list(p.choices))
    raise ConfigError(f"params.{p.key}: bad distribution {p.distribution!r}")


def tune_space(space: SearchSpace) -> dict[str, Any]:
    """{dotted config key: Tune domain}: goes under config["search"] of the trials."""
    return {p.key: tune_domain(p) for p in space.params}


def check_space(space: SearchSpace, dataset: str, preset: str) -> None:
    """Resolve the config at both ends of every range: an unknown key or a value the config rejects
    raises ConfigError naming the space file."""
    from emmil.config import resolve_config

    if space.dataset is not None and space.dataset != dataset:
        raise ConfigError(f"{space.path}: this space is for dataset {space.dataset!r}, not {dataset!r}")
    low = sample_point(space)
    high = {p.key: (p.choices[-1] if p.distribution == "categorical" else
                    int(p.high) if p.distribution == "int" else p.high) for p in space.params}
    for point in (low, high):
        try:
            cfg = resolve_config(dataset, preset=preset, overrides={**space.fixed, **point})
            resolve_config(dataset, preset=preset, overrides={**space.fixed, **point, **space.final_overrides})
        except ConfigError as exc:
            raise ConfigError(f"{space.path}: {exc}") from None
    if cfg.train.val_fraction <= 0:
        raise ConfigError(
            f"{space.path}: the search objective {OBJECTIVE} needs a held-out slice of the training videos: "
            "set fixed: {train.val_fraction: 0.2} (the test split is never searched on)"
        )


def _resumable_searcher_class():
    """OptunaSearch that tolerates results for a trial the study already stores as finished.

    Found by tests/faults (driver SIGKILLed mid-sweep, then --resume): Tune's experiment state is
    saved periodically, so a trial that finished (and was told to Optuna) after the last save is
    restored as running and replayed from its last known checkpoint; OptunaSearch.on_trial_result
    then raised UpdateFinishedTrialError and the resumed sweep died. The study keeps the value it
    stored; the replayed results are ignored (the MLflow run dedupes replayed epochs itself).
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from ray.tune.search.optuna import OptunaSearch

    class ResumableOptunaSearch(OptunaSearch):
        def on_trial_result(self, trial_id, result):
            try:
                super().on_trial_result(trial_id, result)
            except UpdateFinishedTrialError:
                self._completed_trials.add(trial_id)

    return ResumableOptunaSearch


def make_searcher(storage_url: str, study_name: str, seed: int):
    """Ray Tune's OptunaSearch with a seeded TPE sampler on an RDB study (reopened if it exists)."""
    import optuna

    storage = optuna.storages.RDBStorage(storage_url)  # a URL string fails OptunaSearch's assertion
    return _resumable_searcher_class()(metric=OBJECTIVE, mode=MODE, storage=storage, study_name=study_name,
                                       seed=seed)


def fail_orphaned_trials(storage_url: str, study_name: str) -> int:
    """Mark FAIL the study's trials still RUNNING once the search has returned; returns how many.

    Such a trial was started by a driver SIGKILLed before Tune's experiment state listed it: the
    resumed search never knows it and samples a replacement, so without this the study keeps a
    phantom running trial forever (found by tests/faults, issue 6). TPE ignores failed trials.
    """
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage_url)
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in running:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return len(running)


def make_scheduler(kind: str, max_epochs: int):
    """ASHA (default) or median stopping on the per-epoch objective; None for 'none'."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, MedianStoppingRule

    if kind not in SCHEDULERS:
        raise ConfigError(f"--scheduler {kind!r}: expected one of {SCHEDULERS}")
    grace = max(1, max_epochs // 4)
    # time = the trial's own epoch, not Tune's training_iteration: a restored trial continues from its
    # state file, which can be epochs ahead of the checkpoint Tune counts iterations from
    if kind == "asha":
        return AsyncHyperBandScheduler(time_attr="epoch", max_t=max_epochs, grace_period=grace,
                                       reduction_factor=2)
    if kind == "median":
        return MedianStoppingRule(time_attr="epoch", grace_period=grace, min_samples_required=3)
    return None


def pick_best(rows: list[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The search trial to retrain: the best final objective among trials that ran every epoch; if
    none did, the best last-reported objective. Ties: the earlier trial. rows carry `search` params.
    """
    def value(r):
        v = r.get(OBJECTIVE)
        return v if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf

    scored = [r for r in rows if value(r) > -math.inf and not r.get("error")]
    if not scored:
        raise ConfigError(f"no search trial reported {OBJECTIVE}; nothing to retrain (see the trial errors above)")
    complete = [r for r in scored if r.get("epoch") == r.get("total_epochs")]
    pool = complete or scored
    best = max(pool, key=value)  # max keeps the first of equal values
    return best


def load_study(storage_url: str, study_name: str):
    import optuna

    return optuna.load_study(study_name=study_name, storage=storage_url)
