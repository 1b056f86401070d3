"""Optuna adapter: a search space file -> Optuna distributions, the seeded TPE searcher on an RDB study,
the early-stopping scheduler, and picking the configuration to retrain from the study.

The study lives in an RDB (default sqlite:///<results>/optuna.db; any SQLAlchemy URL), so a sweep can
be resumed and inspected:  optuna-dashboard sqlite:///<results>/optuna.db
Only the driver writes to the study (Ray Tune's OptunaSearch runs in the driver), so SQLite is fine.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from emmil.errors import ConfigError
from harness.experiments import Param, SearchSpace, sample_point

OBJECTIVE = "val_avg_mAP"  # validation mAP on the held-out slice of the TRAINING videos
MODE = "max"
SCHEDULERS = ("asha", "median", "none")


def default_storage(results) -> str:
    from pathlib import Path

    from harness.tracking import sqlite_uri

    return sqlite_uri(Path(results) / "optuna.db")


def optuna_distribution(p: Param):
    """The Optuna distribution of one parameter (int bounds inclusive, as in the space file)."""
    import optuna

    if p.distribution in ("uniform", "loguniform"):
        return optuna.distributions.FloatDistribution(p.low, p.high, log=p.distribution == "loguniform")
    if p.distribution == "int":
        return optuna.distributions.IntDistribution(int(p.low), int(p.high), step=p.step or 1)
    if p.distribution == "categorical":
        return optuna.distributions.CategoricalDistribution(list(p.choices))
    raise ConfigError(f"params.{p.key}: bad distribution {p.distribution!r}")


def optuna_space(space: SearchSpace) -> dict[str, Any]:
    """{dotted config key: Optuna distribution}, given to the searcher itself: the study's parameter
    names are then the config keys (`study.best_params` works as `--set` values), and Tune places the
    suggested values at the top level of the trial config under the same dotted keys."""
    return {p.key: optuna_distribution(p) for p in space.params}


def search_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The searched values of a trial config: its top-level dotted keys (see `optuna_space`)."""
    return {k: v for k, v in config.items() if "." in k}


def space_points(space: SearchSpace) -> list[dict[str, Any]]:
    """The points a space is checked at: every parameter at its low end, every one at its high end,
    and the low point with each middle choice of a categorical (a middle one can be the only invalid
    value)."""
    low = sample_point(space)
    high = {p.key: (p.choices[-1] if p.distribution == "categorical" else
                    int(p.high) if p.distribution == "int" else p.high) for p in space.params}
    return [low, high] + [{**low, p.key: c} for p in space.params if p.distribution == "categorical"
                          for c in p.choices[1:-1]]


def check_space(space: SearchSpace, dataset: str, preset: str) -> None:
    """Resolve the config at both ends of every range and at every categorical choice: an unknown key or
    a value the config rejects raises ConfigError naming the space file."""
    from emmil.config import resolve_config

    if space.dataset is not None and space.dataset != dataset:
        raise ConfigError(f"{space.path}: this space is for dataset {space.dataset!r}, not {dataset!r}")
    for point in space_points(space):
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


def _searcher_class():
    """OptunaSearch that records in the study what Tune knows about each trial when it ends:
    - a trial stopped early by the scheduler is PRUNED, not COMPLETE (Ray's OptunaSearch reports its
      last value as final, so early values fed TPE and the importances as if a trial had run every epoch);
    - the trial's MLflow run id and harness trial id as user attributes (`mlflow_run_id`, `trial_id`).
    """
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class EmmilOptunaSearch(OptunaSearch):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._keyed: set[str] = set()  # Tune trial ids whose Optuna trial already carries `trial_id`

        def on_trial_result(self, trial_id, result):
            super().on_trial_result(trial_id, result)
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None and result.get("trial_key") and trial_id not in self._keyed:
                # at the first report, not only at the end: a driver killed between a trial's last epoch
                # and Tune's completion callback leaves the trial RUNNING in the study, and the resume
                # finds its state file by this attribute (settle_running_trials)
                ot_trial.set_user_attr("trial_id", str(result["trial_key"]))
                self._keyed.add(trial_id)

        def on_trial_complete(self, trial_id, result=None, error=False):
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is None or trial_id in self._completed_trials:
                return super().on_trial_complete(trial_id, result, error)
            if result:
                for key, attr in (("mlflow_run_id", "mlflow_run_id"), ("trial_key", "trial_id")):
                    if result.get(key):
                        ot_trial.set_user_attr(attr, str(result[key]))
            stopped_early = bool(result) and not error and result.get("epoch", 0) < result.get("total_epochs", 0)
            if not stopped_early:
                return super().on_trial_complete(trial_id, result, error)
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)  # Optuna keeps its reported values
            self._completed_trials.add(trial_id)

    return EmmilOptunaSearch


def make_searcher(space: SearchSpace, storage_url: str, study_name: str, seed: int):
    """Ray Tune's OptunaSearch with a seeded TPE sampler on an RDB study (reopened if it exists: TPE
    then learns from the trials stored there)."""
    import optuna

    storage = optuna.storages.RDBStorage(storage_url)  # a URL string fails OptunaSearch's assertion
    return _searcher_class()(space=optuna_space(space), metric=OBJECTIVE, mode=MODE, storage=storage,
                             study_name=study_name, seed=seed)


def finished_trials(storage_url: str, study_name: str) -> int:
    """Search trials the study holds as COMPLETE or PRUNED (what a resumed search does not run again);
    0 when the study does not exist yet."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage_url)
    except KeyError:
        return 0
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=done))


def settle_running_trials(storage_url: str, study_name: str,
                          finished_report: Callable[[str], Mapping[str, Any] | None] | None = None) -> tuple[int, int]:
    """Settle the study's trials still RUNNING when no search runs; returns (completed, failed).

    Such a trial belonged to a driver that was killed. If `finished_report(trial_id)` gives the final
    report from the trial's state file (it ran every epoch and its MLflow run is FINISHED, only Tune's
    completion callback was lost), it is told COMPLETE with that report's objective: the work is kept
    and study and MLflow agree. Otherwise it is marked FAIL: the resumed search never knows it and
    samples a replacement, and without this the study would keep a phantom running trial forever
    (found by tests/faults, issue 6). TPE ignores failed trials.
    """
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage_url)
    except KeyError:  # a driver killed before the study was created
        return 0, 0
    completed = failed = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        key = t.user_attrs.get("trial_id")
        report = finished_report(key) if finished_report is not None and key else None
        value = (report or {}).get(OBJECTIVE)
        if isinstance(value, (int, float)) and math.isfinite(value):
            study.tell(t.number, float(value))
            completed += 1
        else:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            failed += 1
    return completed, failed


def make_scheduler(kind: str, max_epochs: int):
    """ASHA (default) or median stopping on the per-epoch objective; None for 'none'."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, MedianStoppingRule

    settings = scheduler_settings(kind, max_epochs)
    # time = the trial's own epoch, not Tune's training_iteration: a restored trial continues from its
    # state file, which can be epochs ahead of the checkpoint Tune counts iterations from
    if kind == "asha":
        return AsyncHyperBandScheduler(time_attr="epoch", max_t=max_epochs, grace_period=settings["grace"],
                                       reduction_factor=settings["reduction_factor"])
    if kind == "median":
        return MedianStoppingRule(time_attr="epoch", grace_period=settings["grace"],
                                  min_samples_required=settings["min_samples"])
    return None


def scheduler_settings(kind: str, max_epochs: int) -> dict[str, Any]:
    """The early-stopping rule's settings, for Ray's schedulers (make_scheduler) and for pack members
    (harness.packed_search.MemberPruning) alike: no stop before a quarter of the epochs, halving rungs."""
    if kind not in SCHEDULERS:
        raise ConfigError(f"--scheduler {kind!r}: expected one of {SCHEDULERS}")
    return {"grace": max(1, max_epochs // 4), "reduction_factor": 2, "min_samples": 3}


def pick_best(storage_url: str, study_name: str) -> dict[str, Any]:
    """The search trial to retrain, read from the study (every launch of a resumed search is in it):
    the best objective among COMPLETE trials (they ran every epoch); if there is none, the best last
    reported value of a PRUNED one. Ties: the earlier trial. {"params", "value", "trial", "complete"}."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage_url)
    states = optuna.trial.TrialState

    def value(t) -> float:
        v = t.value if t.state == states.COMPLETE else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        return v if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf

    complete = [t for t in study.trials if t.state == states.COMPLETE and value(t) > -math.inf]
    pruned = [t for t in study.trials if t.state == states.PRUNED and value(t) > -math.inf]
    pool = complete or pruned
    if not pool:
        raise ConfigError(f"no search trial of study {study_name!r} reported {OBJECTIVE}; nothing to retrain "
                          "(see the trial errors above)")
    best = max(pool, key=value)  # max keeps the first of equal values
    return {"params": dict(best.params), "value": value(best),
            "trial": best.user_attrs.get("trial_id", f"optuna trial {best.number}"),
            "complete": len(complete), "pruned": len(pruned)}


def load_study(storage_url: str, study_name: str):
    import optuna

    return optuna.load_study(study_name=study_name, storage=storage_url)
