"""Read finished runs out of MLflow into one pandas table (docs/CONTRACTS.md "Tracking schema").

Reads the tracking store only (never a live Ray cluster). One row per trial (child) run with
  identity:  run_id, experiment, status, parent_run_id, start_time, artifact_uri, source (the --experiment /
             --run-id it was selected by: its experiment's short name, or <experiment>@<parent id8> for
             several --run-id of one experiment)
  tags:      dataset, data_source, variant, seed (int), eval_protocol, stage, config_hash,
             git_commit, command, device, trial_id   (the `emmil.` prefix dropped)
  config:    config_group: hash of the params except seed/device -> seeds of one config share it
  metrics:   every logged metric under its own key (latest value), e.g. test_mAP_0.50
  params:    "param:<dotted key>"
Runs that cannot go into a table (not FINISHED, no test metrics) are kept in `RunSet.excluded`
with the reason, so the report can list them: nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd

from emmil.errors import ConfigError, DataError

TAG_PREFIX = "emmil."
# Tags a trial run must carry to be placed in a table (the row's dataset/variant/seed/protocol).
REQUIRED_TRIAL_TAGS = ("dataset", "data_source", "variant", "seed", "eval_protocol", "stage")
OPTIONAL_TRIAL_TAGS = ("config_hash", "git_commit", "command", "device", "trial_id")
# Params that differ between the seeds of one configuration (left out of config_group).
PER_RUN_PARAMS = ("seed", "device")
FINAL_METRIC = "test_avg_mAP"  # logged once, at the end: a run with it has test results


@dataclass(frozen=True, eq=False)
class RunSet:
    tracking_uri: str
    experiments: tuple[str, ...]  # experiment names read
    runs: pd.DataFrame  # finished trial runs with test metrics, one row each
    trials: pd.DataFrame  # every trial run (any status): the raw per-run table (runs.csv)
    excluded: pd.DataFrame  # trial runs left out of the tables: run_id, status, variant, seed, reason
    parents: pd.DataFrame  # parent runs: run_id, experiment, status, kind, ..., planned_trials (tag text)
    parent_tags: dict = field(default_factory=dict)  # parent run_id -> {tag: value} (all tags)
    # source label (the `source` column of runs/trials) -> what it is ("parent run <id> (experiment ..., preset
    # quick)", "experiment emmil-table3"); one entry per --run-id / --experiment of `emmil report`
    sources: dict = field(default_factory=dict)


_PASSWORD = re.compile(r"(//[^/@:]*:)[^/@]*@")  # scheme://user:PASSWORD@host
_QUERY_PASSWORD = re.compile(r"((?:password|passwd|pwd|token)=)[^&]*", re.IGNORECASE)


def redact(uri: str) -> str:
    """A URI with any password (user:PASSWORD@host, ?password=...) replaced by '***', for printing."""
    return _QUERY_PASSWORD.sub(r"\1***", _PASSWORD.sub(r"\1***@", uri))


def config_group(params: dict[str, str]) -> str:
    """8-hex hash of a run's params without the per-run ones: equal for seeds of one config."""
    kept = {k: v for k, v in sorted(params.items()) if k not in PER_RUN_PARAMS}
    return hashlib.sha1(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:8]


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _search_all(client, experiment_ids: list[str], filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _resolve_experiments(client, experiment: str | None, tracking_uri: str) -> list:
    if experiment is not None:
        for name in (experiment, f"emmil-{experiment}", f"emmil-sweep-{experiment}"):
            exp = client.get_experiment_by_name(name)
            if exp is not None:
                return [exp]
    all_emmil = [e for e in client.search_experiments() if e.name.startswith("emmil-")]
    if experiment is not None:
        raise ConfigError(
            f"--experiment {experiment!r}: no MLflow experiment {experiment!r}, 'emmil-{experiment}' or "
            f"'emmil-sweep-{experiment}' at {redact(tracking_uri)}; found {sorted(e.name for e in all_emmil)}"
        )
    if not all_emmil:
        raise ConfigError(f"no 'emmil-*' MLflow experiment at tracking URI {redact(tracking_uri)}")
    return all_emmil


def _trial_row(run, experiment_name: str) -> dict:
    tags = run.data.tags
    row = {
        "run_id": run.info.run_id,
        "experiment": experiment_name,
        "status": run.info.status,
        "parent_run_id": tags.get("mlflow.parentRunId", ""),
        "start_time": run.info.start_time,
        "artifact_uri": run.info.artifact_uri,
        # a search trial ASHA stopped early is closed KILLED with this tag: it ended as planned
        "stopped_early": tags.get("emmil.stopped_early") == "true",
    }
    for name in REQUIRED_TRIAL_TAGS + OPTIONAL_TRIAL_TAGS:
        row[name] = tags.get(TAG_PREFIX + name, "")
    row["config_group"] = config_group(run.data.params)
    row.update(run.data.metrics)
    row.update({f"param:{k}": v for k, v in run.data.params.items()})
    return row


def _exclusion_reason(row: dict) -> str | None:
    if row["status"] != "FINISHED":
        return f"status {row['status']}"
    if row.get(FINAL_METRIC) is None or pd.isna(row.get(FINAL_METRIC)):
        return f"no {FINAL_METRIC} logged (no test results)"
    return None


def _check_tags(row: dict) -> None:
    missing = [t for t in REQUIRED_TRIAL_TAGS if not row[t]]
    if missing:
        raise DataError(
            f"run {row['run_id']} (experiment {row['experiment']}): FINISHED trial run lacks tag(s) "
            f"{', '.join(TAG_PREFIX + t for t in missing)} required by the tracking schema"
        )
    try:
        row["seed"] = int(row["seed"])
    except ValueError:
        raise DataError(f"run {row['run_id']}: tag emmil.seed={row['seed']!r} is not an integer") from None


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


@dataclass(frozen=True)
class _Selection:
    """The runs one --experiment / --run-id (or neither: every emmil-* experiment) selects."""

    experiments: list  # MLflow Experiment objects read
    trials: list  # trial runs (MLflow Run objects)
    parents: list  # parent runs


def _select(client, tracking_uri: str, experiment: str | None, parent_run_id: str | None) -> _Selection:
    from mlflow.exceptions import MlflowException

    if parent_run_id is not None:
        try:
            parent = client.get_run(parent_run_id)
        except MlflowException:
            raise ConfigError(f"--run-id {parent_run_id}: no such run at tracking URI {redact(tracking_uri)}") from None
        if parent.data.tags.get("emmil.role") != "parent":
            raise ConfigError(
                f"--run-id {parent_run_id}: not a parent run (tag emmil.role="
                f"{parent.data.tags.get('emmil.role')!r}); give the ablation/sweep parent run"
            )
        experiments = [client.get_experiment(parent.info.experiment_id)]
        children_filter = f"tags.mlflow.parentRunId = '{parent_run_id}'"
        parent_runs = [parent]
        where = f"parent run {parent_run_id}"
    else:
        experiments = _resolve_experiments(client, experiment, tracking_uri)
        children_filter = "tags.`emmil.role` = 'trial'"
        parent_runs = _search_all(client, [e.experiment_id for e in experiments], "tags.`emmil.role` = 'parent'")
        where = f"experiment(s) {sorted(e.name for e in experiments)}"
    trials = [r for r in _search_all(client, [e.experiment_id for e in experiments], children_filter)
              if r.data.tags.get("emmil.role") == "trial"]  # a nested non-trial run (data prep) is not a row
    if not trials:
        raise DataError(f"no trial runs (tag emmil.role=trial) under {where} at {redact(tracking_uri)}")
    return _Selection(experiments, trials, parent_runs)


def short_name(experiment_name: str) -> str:
    """emmil-table3 -> table3: how a row's source is printed."""
    return experiment_name.removeprefix("emmil-")


def _source_labels(selections: list[_Selection], by_run_id: bool) -> list[dict[str, str]]:
    """Per selection: {trial run id: source label}. The label is the run's experiment (short name);
    for several --run-id in one experiment, `<experiment>@<parent id, 8 hex>` so they stay apart."""
    names = [short_name(s.experiments[0].name) for s in selections] if by_run_id else []
    out = []
    for i, sel in enumerate(selections):
        exp_names = {e.experiment_id: short_name(e.name) for e in sel.experiments}
        if by_run_id:
            label = names[i] if names.count(names[i]) == 1 else f"{names[i]}@{sel.parents[0].info.run_id[:8]}"
            out.append({r.info.run_id: label for r in sel.trials})
        else:
            out.append({r.info.run_id: exp_names[r.info.experiment_id] for r in sel.trials})
    return out


def load_runs(tracking_uri: str, *, experiment: str | Sequence[str] | None = None,
              parent_run_id: str | Sequence[str] | None = None) -> RunSet:
    """All trial runs of one or several experiments, of one or several parent runs, or (neither) of every
    emmil-* experiment. Each row's `source` says which selection it came from (see _source_labels):
    with several, tables.blocks keeps each source's rows, baselines and pairs apart."""
    experiments, parent_ids = _as_list(experiment), _as_list(parent_run_id)
    if experiments and parent_ids:
        raise ConfigError("give --experiment or --run-id, not both")
    for flag, values in (("--experiment", experiments), ("--run-id", parent_ids)):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise ConfigError(f"{flag} {twice[0]} given twice")
    client = _client(tracking_uri)
    if parent_ids:
        selections = [_select(client, tracking_uri, None, p) for p in parent_ids]
    elif experiments:
        selections = [_select(client, tracking_uri, e, None) for e in experiments]
        ids = [s.experiments[0].experiment_id for s in selections]
        for i, e in enumerate(experiments):
            if ids.index(ids[i]) != i:
                raise ConfigError(f"--experiment {e} and --experiment {experiments[ids.index(ids[i])]} are the same "
                                  f"MLflow experiment {selections[i].experiments[0].name}")
    else:
        selections = [_select(client, tracking_uri, None, None)]
    labels = _source_labels(selections, by_run_id=bool(parent_ids))
    names = {e.experiment_id: e.name for s in selections for e in s.experiments}

    kept, excluded, trials = [], [], []
    for sel, source_of in zip(selections, labels):
        for run in sel.trials:
            row = _trial_row(run, names[run.info.experiment_id])
            row["source"] = source_of[run.info.run_id]
            trials.append(row)
            reason = _exclusion_reason(row)
            if reason is None:
                _check_tags(row)
                kept.append(row)
            elif row["stage"] != "search":  # search trials are listed in the report's Sweep section instead
                excluded.append({k: row[k] for k in ("run_id", "experiment", "status", "variant", "seed", "stage")}
                                | {"reason": reason})
    parent_runs = [p for s in selections for p in s.parents]
    sources = {}
    for sel, source_of in zip(selections, labels):
        if parent_ids:
            p = sel.parents[0]
            preset = p.data.params.get("preset")
            sources[next(iter(source_of.values()))] = (
                f"parent run {p.info.run_id} (experiment {names[p.info.experiment_id]}"
                + (f", preset {preset}" if preset else "") + ")")
        else:
            sources.update({short_name(e.name): f"experiment {e.name}" for e in sel.experiments
                            if short_name(e.name) in source_of.values()})

    # planned_trials: the trials the ablation/sweep plans (tag emmil.planned_trials; absent on older runs)
    parent_columns = ["run_id", "experiment", "status", "kind", "dataset", "data_source", "command", "git_commit",
                      "planned_trials"]
    parents = pd.DataFrame(
        [
            {
                "run_id": p.info.run_id,
                "experiment": names.get(p.info.experiment_id, p.info.experiment_id),
                "status": p.info.status,
                **{t: p.data.tags.get(TAG_PREFIX + t, "") for t in parent_columns[3:]},
            }
            for p in parent_runs
        ],
        columns=parent_columns,
    )
    runs = pd.DataFrame(kept)
    if not runs.empty:
        runs = runs.sort_values(["dataset", "data_source", "eval_protocol", "source", "stage", "variant",
                                 "config_group", "seed"], kind="stable").reset_index(drop=True)
    return RunSet(
        tracking_uri=tracking_uri,
        experiments=tuple(sorted(set(names.values()))),
        runs=runs,
        trials=pd.DataFrame(trials),
        excluded=pd.DataFrame(excluded, columns=["run_id", "experiment", "status", "variant", "seed", "stage",
                                                 "reason"]),
        parents=parents,
        parent_tags={p.info.run_id: dict(p.data.tags) for p in parent_runs},
        sources=sources,
    )


def metric_histories(tracking_uri: str, run_ids, key: str) -> dict[str, list[tuple[int, float]]]:
    """run_id -> [(step, value)] of one per-epoch metric (MlflowClient.get_metric_history), step-sorted."""
    client = _client(tracking_uri)
    out = {}
    for run_id in run_ids:
        history = client.get_metric_history(run_id, key)
        out[run_id] = sorted((int(m.step), float(m.value)) for m in history)
    return out


def load_json_artifact(tracking_uri: str, run_id: str, path: str, tmp_dir: str) -> dict | None:
    """A run's JSON artifact, or None when the run has no such artifact (the caller reports it)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in CLI output
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    names = {f.path for f in client.list_artifacts(run_id)}
    if path not in names:
        return None
    try:
        local = download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp_dir, tracking_uri=tracking_uri)
    except (MlflowException, OSError) as exc:
        raise DataError(f"run {run_id}: cannot download artifact {path}: {exc}") from None
    try:
        with open(local) as f:
            return json.load(f)
    except (ValueError, OSError) as exc:
        raise DataError(f"run {run_id}: artifact {path} is not valid JSON: {exc}") from None
