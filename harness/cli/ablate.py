"""`emmil ablate [EXPERIMENT]`: run an experiment of ablations/ (variants x seeds) on Ray Tune, tracked
in MLflow (one parent run, one child run per trial), resumable with --resume. See docs/harness.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from emmil.errors import ConfigError
from harness import stop_signals
from harness.experiments import Experiment, check_results_dir, expand_trials, list_experiments, load_experiment, summary_table

TEST_METRICS = ("test_avg_mAP", "test_mAP_0.50", "test_cls_mAP")  # cls mAP: the gate (a wrong class cannot be localised)


def add_shared_arguments(parser: argparse.ArgumentParser) -> None:
    """Options common to `ablate` and `sweep`."""
    parser.add_argument("--dataset", choices=("thumos14", "anet12"), help="dataset name (default: the file's)")
    parser.add_argument("--data-dir", help="folder with the features (W-TALC or per-video layout)")
    parser.add_argument("--preset", choices=("quick", "paper"), help="config preset (default: the file's, else paper)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied to every trial, e.g. --set train.epochs=3 (repeatable)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--gpus-per-trial", type=float, default=0.0,
                        help="fractional GPUs per trial (0.25 packs 4 trials per GPU); 0 on a CPU machine")
    parser.add_argument("--max-concurrent", type=int, default=None, help="at most N trials at once")
    parser.add_argument("--max-failures", type=int, default=2, help="retries of a crashed trial from its checkpoint")
    parser.add_argument("--results", default="results", help="results directory (default ./results)")
    parser.add_argument("--address", default=None,
                        help="join this Ray cluster (else $RAY_ADDRESS, else a private local instance)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///<results>/mlflow.db)")
    parser.add_argument("--keep-models", choices=("all", "best", "none"), default=None,
                        help="which trials write model.pt (logged as an MLflow artifact): all, best (the chosen "
                             "configuration: every ablation trial, a sweep's final retrain) or none "
                             "(default: all for ablate, best for sweep)")
    parser.add_argument("--pack", default="auto", metavar="K",
                        help="train up to K trials of one variant and shape (e.g. seeds) as one vectorised model "
                             "per Ray trial, each still its own MLflow run (harness.packed_trials; sweep: the "
                             "final retrain's seeds); auto (default): 1 on CPU trials, 8 with --gpus-per-trial > 0")
    parser.add_argument("--resume", action="store_true", help="finish an interrupted run in --results")
    parser.add_argument("--no-report", action="store_true", help="do not build <results>/<name>/report at the end")
    from harness.cli.data_options import add_data_arguments

    add_data_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", nargs="?", default="table3",
                        help="experiment name in ablations/ or a YAML file (default table3)")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per variant (default: the file's)")
    add_shared_arguments(parser)


@dataclass(frozen=True)
class Launch:
    """Where and how trials run (shared by ablate and sweep)."""

    results: Path
    tracking_uri: str | None = None
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    max_failures: int = 2
    resume: bool = False
    report: bool = True
    keep_models: str | None = None  # --keep-models; None: the command's default
    overrides: Mapping[str, Any] = field(default_factory=dict)  # --set, every trial
    fail_once: Mapping[str, Any] | None = None  # test hook: {"epoch": k, "marker_dir": path}
    pack: int = 1  # --pack: members per Ray trial (harness.packed_trials); 1: one trial per run


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    rows: list
    parent_run_id: str
    tracking_uri: str
    root: Path
    summary: str


def launch_from_args(args: argparse.Namespace) -> Launch:
    from emmil.config import parse_set_args

    if args.cpus_per_trial <= 0:
        raise ConfigError(f"--cpus-per-trial must be > 0, got {args.cpus_per_trial}")
    if args.gpus_per_trial < 0:
        raise ConfigError(f"--gpus-per-trial must be >= 0, got {args.gpus_per_trial}")
    if args.max_failures < 0:  # Tune reads -1 as "retry forever": a deterministic crash would never end
        raise ConfigError(f"--max-failures must be >= 0, got {args.max_failures}")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    from harness.preflight import check_ray_address, check_tracking_uri

    # --tracking-uri, else $MLFLOW_TRACKING_URI (MLflow's own variable, as `emmil report` reads it), else
    # the results dir's SQLite store; the environment keeps a password out of the process table
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    check_tracking_uri(tracking_uri)  # seconds, not minutes of retries (issue 6)
    check_ray_address(args.address)
    return Launch(
        results=check_results_dir(args.results),  # before any work starts
        tracking_uri=tracking_uri, address=args.address, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent, max_failures=args.max_failures,
        resume=args.resume, report=not args.no_report, overrides=parse_set_args(args.overrides),
        keep_models=args.keep_models, pack=_pack_from_args(args),
    )


def _pack_from_args(args: argparse.Namespace) -> int:
    from harness.packed_trials import PACK_AUTO, default_pack, parse_pack

    value = parse_pack(str(args.pack))
    return default_pack(args.gpus_per_trial) if value == PACK_AUTO else int(value)


def dataset_loader(name: str, data_dir: str | None, args: argparse.Namespace) -> Callable[[], Any]:
    """Loads the data with the command's data options (harness.cli.data_options)."""
    if not data_dir:
        raise ConfigError("--data-dir is required (a folder with the features; `emmil data synth` writes one)")
    from emmil.data.loading import load_dataset
    from harness.cli.data_options import data_kwargs

    kwargs = data_kwargs(args)
    return lambda: load_dataset(name, data_dir, args.layout, **kwargs)


def data_signature(meta: Mapping[str, Any]) -> str:
    """The data a run trained on, for the resume check: a different folder or a changed one is another run."""
    return (f"{meta['name']} at {meta['path']} ({meta['videos']} videos, {meta['feature_bytes']} feature bytes, "
            f"{meta['source']})")


def run_ablation(experiment: Experiment, *, dataset: str, preset: str, seeds: int, launch: Launch,
                 load_data: Callable[[], Any], command: str | None = None, out=print) -> Outcome:
    """Run (or resume) `experiment` x `seeds` on Ray Tune; returns the per-trial rows and where they are.

    A resume runs only the trials without a finished state file, in a fresh Tune experiment (never a
    restored one: harness.runner's module doc); more seeds than before extend the plan. One driver per
    results directory (runner.driver_lock). After Ctrl-C / SIGTERM (harness.stop_signals) the trials
    stop, their runs are closed as interrupted and the exit code is 128 + the signal number."""
    from harness import runner

    check_results_dir(launch.results)  # writable, with free space, before any work
    command = command or runner.command_line()
    with runner.driver_lock(launch.results, command), runner.stop_on_full_disk(launch.results, command):
        return _run_ablation(experiment, dataset=dataset, preset=preset, seeds=seeds, launch=launch,
                             load_data=load_data, command=command, out=out)


def _run_ablation(experiment: Experiment, *, dataset: str, preset: str, seeds: int, launch: Launch,
                  load_data: Callable[[], Any], command: str, out) -> Outcome:
    from emmil.config import config_hash, resolve_config
    from harness import runner, stop_signals, tracking
    from harness.ray_tune import Resources, check_resources, put_dataset, ray_session

    trials = expand_trials(experiment, seeds)
    plan: dict[str, str] = {}
    for t in trials:  # every trial's config is valid before anything starts
        try:
            cfg = resolve_config(dataset, preset=preset, seed=t.seed, overrides={**t.overrides, **launch.overrides})
        except ConfigError as exc:
            raise ConfigError(f"{experiment.path or experiment.name}: variant {t.variant!r}: {exc}") from None
        plan[f"{experiment.name}/{t.name}"] = config_hash(cfg)
    uri = launch.tracking_uri or tracking.default_tracking_uri(launch.results)
    place = runner.RunPlace(launch.results, experiment.name, uri, f"emmil-{experiment.name}")
    previous = runner.check_place(place, resume=launch.resume)  # before anything starts
    warm = runner.prewarm_tracking(uri)  # overlaps data loading and ray.init
    take, meta = runner.load_once(load_data)
    if meta["name"] != dataset:
        raise ConfigError(f"--dataset {dataset!r} but the data at {meta['path']} is {meta['name']!r}")
    signature = {"dataset": dataset, "data": data_signature(meta), "preset": preset,
                 "set": dict(sorted(launch.overrides.items()))}
    done: dict[str, dict] = {}
    if previous is not None:
        runner.check_resume(previous, place, signature, plan)
        done = runner.finished_trials(place, plan, need_test=True)
    common_tags = {"emmil.experiment": experiment.name, "emmil.dataset": dataset, "emmil.data_source": meta["source"],
                   "emmil.command": command, "emmil.git_commit": tracking.git_commit()}
    out(f"emmil ablate {experiment.name}: {len(experiment.variants)} variants x {seeds} seeds = {len(trials)} trials "
        f"on {dataset} ({meta['source']}), preset {preset}")
    if previous is not None:
        out(f"resume: {len(done)} of {len(trials)} trials already finished (kept, not run again), "
            f"{len(trials) - len(done)} to run")
    run_common = {
        "dataset": dataset, "preset": preset, "stage": "ablation", "eval_test": True,
        "tracking": None, "buffer_dir": str(place.buffer_dir), "state_dir": str(place.state_dir),
        "fail_once": launch.fail_once, "keep_models": launch.keep_models or "all",
        "tags": {**common_tags, "emmil.stage": "ablation"},
    }
    pending = [
        {"trial_id": f"{experiment.name}/{t.name}", "name": t.name, "variant": t.variant, "seed": t.seed,
         "overrides": {**t.overrides, **launch.overrides}}
        for t in trials if f"{experiment.name}/{t.name}" not in done
    ]
    resources = Resources(launch.cpus_per_trial, launch.gpus_per_trial, launch.max_concurrent)
    tracking.uri_for_trials(uri)  # a secret reaches the trials by environment: before Ray starts
    t0 = time.time()
    rows = list(done.values())
    # from here on a first Ctrl-C / SIGTERM is recorded, not raised: the runs opened below get closed
    with stop_signals.deferred(), ray_session(launch.address) if pending else contextlib.nullcontext():
        if pending:
            check_resources(resources)  # before the parent run opens: nothing is left RUNNING
        warm.join()
        target, state = runner.open_parent(
            place, resume=launch.resume, kind="ablation", tags=common_tags,
            params={"experiment": experiment.name, "dataset": dataset, "preset": preset, "seeds": seeds,
                    "variants": ",".join(v.name for v in experiment.variants),
                    **{f"set.{k}": v for k, v in launch.overrides.items()}},
            plan={"signature": signature, "plan": plan},
        )
        state = {**state, "plan": {**state.get("plan", {}), **plan}}  # more seeds: the plan grows
        runner.write_state(place, state)
        tracking.set_run_tags(target.uri, target.parent_run_id, {"emmil.planned_trials": len(trials)})  # reports
        if pending and not stop_signals.requested():
            from harness.packed_trials import tune_pending

            run_common["tracking"] = target.to_dict()
            rows += tune_pending(put_dataset(take), pending, run_common, pack=launch.pack, dataset=dataset,
                                 preset=preset, prefix=experiment.name, label="trial", out=out,
                                 name=runner.tune_dir_name(place, "ablation"), storage=place.root,
                                 resources=resources, max_failures=launch.max_failures)
        return _finish_ablation(experiment, dataset, trials, rows, t0, place, target, state, meta, launch, command, out)


def _finish_ablation(experiment: Experiment, dataset: str, trials: list, rows: list, t0: float, place, target,
                     state: dict, meta: Mapping[str, Any], launch: Launch, command: str, out) -> Outcome:
    """Close the trial runs and the parent, print the summary, build the report (still deferred:
    a signal here does not cut the bookkeeping short)."""
    from harness import runner, stop_signals, tracking

    ok = [r for r in rows if not r.get("error") and "test_avg_mAP" in r]
    signum = stop_signals.requested()
    # why unfinished trials stopped: Ctrl-C / SIGTERM, a full disk (the trials' retries are not burnt), or ""
    stopped = runner.stop_reason(place.results, signum) if len(ok) < len(trials) else ""
    closed = runner.close_trial_runs(target, place.buffer_dir, rows, interrupted=stopped)
    wall = time.time() - t0
    order = [v.name for v in experiment.variants]
    summary = summary_table(rows, "variant", TEST_METRICS, order)
    parent_metrics = {"wall_seconds": wall, "trials_ok": len(ok), "trials_failed": len(rows) - len(ok)}
    for name in order:
        vals = [r["test_avg_mAP"] for r in ok if r.get("variant") == name]
        if vals:
            parent_metrics[f"{name}.test_avg_mAP.mean"] = sum(vals) / len(vals)
    status = "FINISHED" if len(ok) == len(trials) else "KILLED" if stopped else "FAILED"
    end_tags = {"emmil.tracking_closed": ",".join(f"{k}={v}" for k, v in closed.items())}
    if stopped:
        end_tags["emmil.interrupted"] = stopped
    stage = {"FINISHED": "done", "KILLED": "interrupted"}.get(status, "incomplete")
    runner.write_state(place, {**state, "stage": stage})  # first: `emmil tracking flush` reads the outcome here
    runner.finish_parent(target, place, status, end_tags, parent_metrics, out)
    out("")
    out(f"{experiment.name} on {dataset} [{meta['source']}], stage ablation, {len(ok)}/{len(trials)} trials ok, "
        f"{wall:.0f} s")
    out(summary)
    out(runner.tracking_summary(rows, closed, place.buffer_dir))
    out(runner.locations(place, target))
    if stopped and not signum:
        raise ConfigError(runner.disk_full_message(place.results, command))  # exit 2, after the bookkeeping
    if stopped:
        out(f"interrupted by {stopped}: {len(ok)} of {len(trials)} trials finished (kept), "
            f"{closed['interrupted']} run(s) closed KILLED as interrupted; finish the run with:\n"
            f"  {runner.resume_command(command)}")
        out("report:            not built (interrupted: the --resume builds it)")
        return Outcome(stop_signals.exit_code(signum), rows, target.parent_run_id, target.uri, place.root, summary)
    if status != "FINISHED":
        out(f"{len(trials) - len(ok)} trial(s) did not finish; run the same command with --resume to finish them "
            "(finished trials are kept)")
    if launch.report:
        out(runner.build_report(place, target, command=command))
    return Outcome(0 if status == "FINISHED" else 1, rows, target.parent_run_id, target.uri, place.root, summary)


def run(args: argparse.Namespace) -> int:
    if args.list:
        print("\n\n".join(describe_experiment(exp) for exp in list_experiments()))
        return 0
    experiment = load_experiment(args.experiment)
    dataset = args.dataset or experiment.dataset
    if dataset is None:
        raise ConfigError(f"{experiment.path}: no dataset in the file; pass --dataset")
    preset = args.preset or experiment.preset or "paper"
    seeds = args.seeds if args.seeds is not None else experiment.seeds
    launch = launch_from_args(args)
    with stop_signals.handling(), resume_hint():
        outcome = run_ablation(experiment, dataset=dataset, preset=preset, seeds=seeds, launch=launch,
                               load_data=dataset_loader(dataset, args.data_dir, args))
    return outcome.exit_code


def describe_experiment(exp: Experiment, width: int = 100) -> str:
    """`ablate --list`: the name, the whole description (its first line alone cut sentences off
    mid-way, issue 14.10), the variants and the file's defaults, wrapped under the name."""
    import textwrap

    indent = " " * 17
    lines = [exp.name]
    for paragraph in (exp.description or "").strip().split("\n\n"):
        lines += textwrap.wrap(" ".join(paragraph.split()), width, break_on_hyphens=False,
                               initial_indent=indent, subsequent_indent=indent)
    lines += textwrap.wrap("variants: " + ", ".join(v.name for v in exp.variants), width, break_on_hyphens=False,
                           initial_indent=indent, subsequent_indent=indent + "  ")
    lines.append(f"{indent}defaults: dataset {exp.dataset or '(pass --dataset)'}, {exp.seeds} seeds, "
                 f"preset {exp.preset or 'paper'}")
    return "\n".join(lines)


@contextlib.contextmanager
def resume_hint():
    """After a Ctrl-C / SIGTERM that could not wait (before a run opened, or a second signal): say how
    to finish the run (the finished trials are kept); the CLI then exits 128 + the signal number."""
    try:
        yield
    except KeyboardInterrupt:
        from harness.runner import command_line, resume_command

        print(f"interrupted: finished trials are kept; finish the run with:\n  {resume_command(command_line())}",
              file=sys.stderr)
        raise
