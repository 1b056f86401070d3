"""Packed Optuna search (issue 11): `emmil sweep --pack K` trains K Optuna trials as one pack.

Each Tune trial of the search is a pack (harness.packed_trials.emmil_pack_trial) of up to K members,
each member ONE Optuna trial: `PackedOptunaSearch.suggest` asks the study for K suggestions at once
(Optuna's ask/tell interface, TPE with the constant liar so that the K trials asked before any of them
reports are spread out instead of drawn from one posterior) and tells each member's outcome as the pack
reports it: the per-epoch objective of every member as the trial's intermediate values, COMPLETE with
the member's last objective when it ran every epoch, PRUNED when it was stopped early, FAIL when its
pack failed. Each member keeps its own MLflow run, state file and `trial_id` user attribute, exactly
like a lone search trial, so `pick_best`, `--resume` and the dashboards read packed searches unchanged.

Early stopping acts on members, not packs: Tune's scheduler sees one trial per pack and could only stop
all K. `MemberPruning` applies the rule of the scheduler the sweep names (--scheduler asha / median /
none, with harness.optuna_search.scheduler_settings, the values the unpacked search gives Ray's
schedulers) to the members' objectives; it lives in one Ray actor per search (`start_member_pruning`),
which every pack asks after each epoch which of its members to stop. A stopped member's run ends KILLED
with the tag emmil.stopped_early=true (what the unpacked search's runs stopped by ASHA get), its
Optuna trial PRUNED; the pack goes on with the others.

Differences from the unpacked search, by construction: members of one pack share tensor shapes and
step counts, so the searched parameters that change them (`pack_shape_params`: model.hidden,
train.cycle, ... in ablations/spaces/thumos14.yaml) are sampled once per pack, by its first member's
suggestion, and enqueued for the other members (Optuna's enqueue_trial with those values; TPE samples
the rest of each member); the median rule cannot pause a member for lack of samples (Ray's
MedianStoppingRule may pause a trial then), it lets it continue.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

from ray.tune.search import Searcher

from emmil.errors import ConfigError
from harness.experiments import SearchSpace


def pack_shape_params(space: SearchSpace, dataset: str, preset: str, overrides: Mapping[str, Any]) -> list[str]:
    """The searched parameters whose values change the pack key (emmil.packed.pack_key: variant,
    tensor shapes, step counts) of the search's config, found by resolving the config at every point
    harness.optuna_search.space_points checks, one parameter moved at a time. The members of one pack
    share these (PackedOptunaSearch)."""
    from emmil.config import resolve_config
    from emmil.packed import pack_key
    from harness.optuna_search import space_points

    base_overrides = {**overrides, **space.fixed}
    points = space_points(space)
    low = points[0]

    def key(point):
        return pack_key(resolve_config(dataset, preset=preset, overrides={**base_overrides, **point}))

    reference = key(low)
    shaped = []
    for p in space.params:
        values = {point[p.key] for point in points if point[p.key] != low[p.key]}
        if any(key({**low, p.key: v}) != reference for v in values):
            shaped.append(p.key)
    return shaped


class MemberPruning:
    """The early-stopping rule of one search applied to pack members: `decide(member, epoch, value)`
    says whether to stop the member after that epoch (True = stop).

    kind "asha": Ray's AsyncHyperBandScheduler with one bracket (the unpacked search's scheduler):
    rungs at grace x rf^k epochs; a member's first result at or past a rung it has not reached before
    is recorded there, and stops it when below the (1 - 1/rf) percentile (numpy's linear interpolation)
    of the values recorded at that rung before it. kind "median": Ray's MedianStoppingRule (hard stop):
    from epoch `grace` on, a member stops when its best value so far is below the median of the other
    members' mean values over epochs grace..epoch, taken over the members whose last result is at or past
    this epoch, when at least `min_samples` of them have finite means. kind "none": never stops.
    A result without a value (an epoch not validated) decides nothing; a member's last epoch
    (`max_epochs`) only records its value (as the schedulers' on_trial_complete does). The same
    (member, epoch) asked again (a pack retried after a crash) gets the answer it got the first time.
    """

    def __init__(self, kind: str, max_epochs: int, grace: int, reduction_factor: float = 2,
                 min_samples: int = 3):
        from harness.optuna_search import SCHEDULERS

        if kind not in SCHEDULERS:
            raise ConfigError(f"--scheduler {kind!r}: expected one of {SCHEDULERS}")
        self.kind, self.max_epochs, self.grace = kind, int(max_epochs), int(grace)
        self.rf, self.min_samples = float(reduction_factor), int(min_samples)
        n_rungs = int(math.log(self.max_epochs / self.grace) / math.log(self.rf) + 1) if kind == "asha" else 0
        self._rungs = [(self.grace * self.rf ** k, {}) for k in reversed(range(n_rungs))]  # highest first
        self._results: dict[str, list[tuple[int, float]]] = {}  # member -> [(epoch, value)] in arrival order
        self._decided: dict[tuple[str, int], bool] = {}

    def decide(self, member: str, epoch: int, value: float | None) -> bool:
        if value is None or not isinstance(value, (int, float)):
            return False
        key = (str(member), int(epoch))
        if key not in self._decided:
            self._decided[key] = self._decide(*key, float(value))
        return self._decided[key]

    def decide_many(self, epoch: int, values: Mapping[str, float | None]) -> list[str]:
        """The members of `values` (in its order) to stop after `epoch`."""
        return [m for m, v in values.items() if self.decide(m, epoch, v)]

    def _decide(self, member: str, epoch: int, value: float) -> bool:
        last = epoch >= self.max_epochs
        if self.kind == "asha":
            for milestone, recorded in self._rungs:
                if epoch < milestone or member in recorded:
                    continue
                cutoff = _percentile(list(recorded.values()), (1 - 1 / self.rf) * 100) if recorded else None
                recorded[member] = value
                return not last and cutoff is not None and value < cutoff
            return False
        if self.kind == "median":
            self._results.setdefault(member, []).append((epoch, value))
            if last or epoch < self.grace:
                return False
            means = []
            for other, results in self._results.items():
                if other == member or results[-1][0] < epoch:
                    continue
                scoped = [v for t, v in results if self.grace <= t <= epoch]
                if scoped and math.isfinite(sum(scoped) / len(scoped)):
                    means.append(sum(scoped) / len(scoped))
            if len(means) < self.min_samples:
                return False
            return max(v for _, v in self._results[member]) < _median(means)
        return False


def _percentile(values: Sequence[float], q: float) -> float:
    """numpy.nanpercentile's default (linear) interpolation, NaNs dropped (NaN if none is left)."""
    vals = sorted(v for v in values if not math.isnan(v))
    if not vals:
        return math.nan
    pos = (len(vals) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)


def _median(values: Sequence[float]) -> float:
    return _percentile(values, 50)


def start_member_pruning(kind: str, max_epochs: int, name: str):
    """The search's MemberPruning as a named Ray actor (0 CPUs, owned by the driver: it ends with the
    search); packs find it by `name` (run["pruning"]). Returns the actor handle (keep it alive)."""
    import ray

    from harness.optuna_search import scheduler_settings

    settings = scheduler_settings(kind, max_epochs)
    actor = ray.remote(num_cpus=0)(MemberPruning).options(name=name).remote(kind, max_epochs, **settings)
    ray.get(actor.decide_many.remote(0, {}))  # started (and its errors raised) before any pack asks it
    return actor


def members_to_stop(name: str | None, epoch: int, values: Mapping[str, float | None]) -> list[str]:
    """Ask the search's pruning actor (pack side); [] when the run has no pruning (an ablation pack)."""
    if not name:
        return []
    import ray

    return ray.get(ray.get_actor(name).decide_many.remote(epoch, dict(values)))


class PackedOptunaSearch(Searcher):
    """Tune searcher: each suggestion is a pack spec of up to `pack` Optuna trials (module doc).

    `trials`: the search trials to ask in all (the last pack takes what is left); `member_base`: the
    search trial spec every member starts from ({"variant", "overrides"}); members are named
    `<prefix>/t<Optuna trial number>` and their pack `<prefix>/pack-<hash>` (packed_trials.pack_id)."""

    def __init__(self, space: SearchSpace, storage_url: str, study_name: str, seed: int, *, pack: int,
                 trials: int, prefix: str, member_base: Mapping[str, Any], shape_params: Sequence[str] = ()):
        import optuna

        from harness.optuna_search import optuna_space

        super().__init__()  # no metric for Tune to check in a pack's reports: the members' are in pack_values
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        self.study = optuna.create_study(study_name=study_name, storage=optuna.storages.RDBStorage(storage_url),
                                         sampler=sampler, direction="maximize", load_if_exists=True)
        self.distributions = optuna_space(space)
        self.pack, self.left, self.prefix, self.base = int(pack), int(trials), prefix, dict(member_base)
        self.shape_params = tuple(shape_params)
        self._open: dict[str, Any] = {}  # member id -> its RUNNING optuna Trial
        self._packs: dict[str, list[str]] = {}  # Tune trial id -> its members' ids
        self._reported: set[tuple[str, int]] = set()

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the objective is fixed (OBJECTIVE); the pack reports it per member

    def suggest(self, trial_id: str):
        from harness.packed_trials import pack_id

        n = min(self.pack, self.left)
        if n <= 0:
            return self.FINISHED
        members, shared = [], {}
        for _ in range(n):
            if shared:  # the pack's shapes are its first suggestion's; TPE samples the rest of each member
                self.study.enqueue_trial(shared, skip_if_exists=False)
            trial = self.study.ask(fixed_distributions=self.distributions)
            shared = shared or {k: trial.params[k] for k in self.shape_params}
            member = f"{self.prefix}/t{trial.number}"
            trial.set_user_attr("trial_id", member)  # what settle_running_trials finds the state file by
            self._open[member] = trial
            members.append({"trial_id": member, "name": f"t{trial.number}", "variant": self.base["variant"],
                            "seed": 0, "overrides": {**self.base["overrides"], **trial.params},
                            "search": dict(trial.params)})
        self.left -= n
        ids = [m["trial_id"] for m in members]
        self._packs[trial_id] = ids
        pid = pack_id(self.prefix, ids)
        return {"trial": {"trial_id": pid, "name": pid.rsplit("/", 1)[1], "members": members}}

    def on_trial_result(self, trial_id: str, result: Mapping[str, Any]) -> None:
        epoch = int(result.get("epoch", 0))
        for member, value in json.loads(result.get("pack_values") or "{}").items():
            if member in self._open and (member, epoch) not in self._reported and _finite(value):
                self._open[member].report(float(value), epoch)
                self._reported.add((member, epoch))
        for member, report in json.loads(result.get("pack_stopped") or "{}").items():
            self._tell(member, report)

    def on_trial_complete(self, trial_id: str, result: Mapping[str, Any] | None = None, error: bool = False) -> None:
        finals = json.loads((result or {}).get("pack_members") or "{}") if not error else {}
        for member in self._packs.pop(trial_id, []):
            self._tell(member, finals.get(member))

    def _tell(self, member: str, report: Mapping[str, Any] | None) -> None:
        """COMPLETE (every epoch, a finite objective), PRUNED (stopped early with a reported value), FAIL."""
        from optuna.trial import TrialState

        from harness.optuna_search import OBJECTIVE

        trial = self._open.pop(member, None)
        if trial is None:
            return
        report = dict(report or {})
        if report.get("mlflow_run_id"):
            trial.set_user_attr("mlflow_run_id", str(report["mlflow_run_id"]))
        ran_all = report.get("epoch") is not None and report.get("epoch") == report.get("total_epochs")
        if ran_all and _finite(report.get(OBJECTIVE)):
            self.study.tell(trial, float(report[OBJECTIVE]))
        elif report and not ran_all and any(m == member for m, _ in self._reported):
            self.study.tell(trial, state=TrialState.PRUNED)  # Optuna keeps its intermediate values
        else:
            self.study.tell(trial, state=TrialState.FAIL)

    def save(self, checkpoint_path: str) -> None:
        """What Tune snapshots: the bookkeeping only (the study is in its RDB, and a search's Tune
        experiment is never restored: a resumed sweep starts a fresh one, harness.runner)."""
        with open(checkpoint_path, "w") as f:
            json.dump({"left": self.left, "open": sorted(self._open), "packs": self._packs}, f)

    def restore(self, checkpoint_path: str) -> None:
        raise ConfigError("a packed search is resumed from its Optuna study (emmil sweep --resume), never from "
                          f"Tune's snapshot {checkpoint_path}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
