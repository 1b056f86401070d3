"""`emmil sweep`: Optuna TPE (seeded) through Ray Tune over a search-space file, pruned by ASHA on the
per-epoch validation mAP of a held-out slice of the TRAINING videos; then the best configuration is
retrained on the full training split over K seeds and evaluated on the test split.

Tracked in MLflow experiment emmil-sweep-<study>: one parent run; search trials tagged
emmil.stage=search (validation metrics only: the test split is never looked at while searching),
final trials tagged emmil.stage=final-test. The study is persisted in an RDB (--storage).
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

from emmil.errors import ConfigError
from harness.cli.ablate import TEST_METRICS, Launch, Outcome, add_shared_arguments, dataset_loader, launch_from_args
from harness.experiments import SearchSpace, check_results_dir, check_safe_name, load_space, summary_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, required=True, help="number of search trials")
    parser.add_argument("--space", required=True,
                        help="search-space YAML (a path, or a name in ablations/spaces/: thumos14, anet12)")
    parser.add_argument("--scheduler", default="asha", choices=("asha", "median", "none"),
                        help="early stopping on the per-epoch val_avg_mAP (default asha)")
    parser.add_argument("--study", default=None, help="Optuna study name (default: the space name, prefixed with the dataset if it lacks it)")
    parser.add_argument("--storage", default=None, help="Optuna RDB URL (default sqlite:///<results>/optuna.db)")
    parser.add_argument("--seed", type=int, default=0, help="TPE sampler seed")
    parser.add_argument("--final-seeds", type=int, default=3,
                        help="seeds of the final retrain of the best config, evaluated on test (0: skip)")
    add_shared_arguments(parser)


def _final_rows_label(rows: list[dict]) -> list[dict]:
    return [{**r, "variant": "best"} for r in rows]


def space_signature(space: SearchSpace) -> dict[str, Any]:
    """What the search space file says, as plain JSON (the resume check compares it)."""
    import dataclasses

    return {"params": [dataclasses.asdict(p) for p in space.params], "fixed": dict(space.fixed),
            "final_overrides": dict(space.final_overrides)}


def final_trial_ids(study: str, overrides: dict, seeds: int) -> list[str]:
    """The final retrain's trial ids carry a digest of its configuration: a resumed sweep whose best
    configuration changed (more search trials) retrains the new best under new ids, and the earlier
    final trials keep theirs."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return [f"{study}/final-test/{digest}/s{s}" for s in range(seeds)]


def run_sweep(space: SearchSpace, *, dataset: str, preset: str, trials: int, scheduler: str, study: str,
              storage: str | None, sampler_seed: int, final_seeds: int, launch: Launch,
              load_data: Callable[[], Any], command: str | None = None, out=print) -> Outcome:
    """Search, then retrain the best config on the full training split over `final_seeds` seeds.

    A resume (or a larger --trials / --final-seeds on a finished sweep) runs only what is missing: the
    study's COMPLETE and PRUNED trials count as done (those left RUNNING by a killed driver are marked
    FAIL and sampled again), final trials with a finished state file are kept. One driver per results
    directory (runner.driver_lock); Ctrl-C / SIGTERM stop it cleanly (harness.stop_signals)."""
    from harness import runner

    check_results_dir(launch.results)  # writable, with free space, before any work
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    if final_seeds < 0:
        raise ConfigError(f"--final-seeds must be >= 0, got {final_seeds}")
    check_safe_name(study, "--study")  # before the lock file: a refused name writes nothing
    command = command or runner.command_line()
    from harness import stop_signals

    # deferred from the start: the final bookkeeping below the Ray session must not be cut short either
    with runner.driver_lock(launch.results, command), runner.stop_on_full_disk(launch.results, command), \
            stop_signals.deferred():
        return _run_sweep(space, dataset=dataset, preset=preset, trials=trials, scheduler=scheduler, study=study,
                          storage=storage, sampler_seed=sampler_seed, final_seeds=final_seeds, launch=launch,
                          load_data=load_data, command=command, out=out)


def _run_sweep(space: SearchSpace, *, dataset: str, preset: str, trials: int, scheduler: str, study: str,
               storage: str | None, sampler_seed: int, final_seeds: int, launch: Launch,
               load_data: Callable[[], Any], command: str, out) -> Outcome:
    from emmil.config import config_hash, resolve_config
    from harness import optuna_search as osearch
    from harness import runner, stop_signals, tracking
    from harness.ray_tune import Resources, check_resources, put_dataset, ray_session, result_rows, tune_trials

    osearch.check_space(space, dataset, preset)
    base = resolve_config(dataset, preset=preset, overrides={**launch.overrides, **space.fixed})
    max_epochs = base.train.epochs
    storage_url = storage or osearch.default_storage(launch.results)
    from harness.preflight import check_optuna_storage

    check_optuna_storage(storage_url)  # before any run opens
    uri = launch.tracking_uri or tracking.default_tracking_uri(launch.results)
    place = runner.RunPlace(launch.results, f"sweep-{study}", uri, f"emmil-sweep-{study}")
    def has_validation_slice(data) -> None:
        from emmil.train import split_validation

        train, val = split_validation(data, base.train.val_fraction, base.seed)
        if not val:
            raise ConfigError(
                f"{space.path}: train.val_fraction={base.train.val_fraction} holds out no video of the "
                f"{len(train)} training videos of {data.path or data.name} (the slice is stratified by class); "
                "the search objective needs a held-out slice: raise train.val_fraction or use more videos"
            )

    previous = runner.check_place(place, resume=launch.resume)  # before anything starts
    warm = runner.prewarm_tracking(uri)  # overlaps data loading and ray.init
    take, meta = runner.load_once(load_data, has_validation_slice)
    if meta["name"] != dataset:
        raise ConfigError(f"--dataset {dataset!r} but the data at {meta['path']} is {meta['name']!r}")
    from harness.cli.ablate import data_signature

    signature = {"dataset": dataset, "data": data_signature(meta), "preset": preset,
                 "set": dict(sorted(launch.overrides.items())), "space": space_signature(space),
                 "scheduler": scheduler, "sampler_seed": sampler_seed, "storage": tracking.redact_uri(storage_url)}
    if previous is not None:
        runner.check_resume(previous, place, signature, {})
        def finished_report(trial_id: str):
            return runner.finished_trials(place, [trial_id], need_test=False).get(trial_id)

        kept, lost = osearch.settle_running_trials(storage_url, study, finished_report)
        if kept:
            out(f"resume: {kept} search trial(s) that had run every epoch when the driver stopped recorded COMPLETE "
                "in the study from their state files (not run again)")
        if lost:
            out(f"resume: {lost} search trial(s) left running by the interrupted driver marked FAIL in the study "
                "(their configurations are sampled again)")
    searched = osearch.finished_trials(storage_url, study) if previous is not None else 0
    to_search = max(0, trials - searched)
    common_tags = {"emmil.experiment": f"sweep-{study}", "emmil.dataset": dataset, "emmil.data_source": meta["source"],
                   "emmil.command": command, "emmil.git_commit": tracking.git_commit()}
    resources = Resources(launch.cpus_per_trial, launch.gpus_per_trial, launch.max_concurrent)
    run_common = {"dataset": dataset, "preset": preset, "tracking": None,
                  "buffer_dir": str(place.buffer_dir), "state_dir": str(place.state_dir),
                  "fail_once": launch.fail_once, "keep_models": launch.keep_models or "best"}
    tracking.uri_for_trials(uri)  # a secret reaches the trials by environment: before Ray starts
    t0 = time.time()
    from ray import tune

    final_rows: list[dict] = []
    stopped = None  # the signal that stopped a stage (harness.stop_signals)
    with ray_session(launch.address):
        check_resources(resources)  # before the parent run opens: nothing is left RUNNING
        warm.join()
        target, state = runner.open_parent(
            place, resume=launch.resume, kind="sweep", tags={**common_tags, "emmil.study": study},
            params={"study": study, "space": space.path, "dataset": dataset, "preset": preset, "trials": trials,
                    "scheduler": scheduler, "sampler": "TPE", "sampler_seed": sampler_seed, "final_seeds": final_seeds,
                    "optuna_storage": tracking.redact_uri(storage_url), "objective": osearch.OBJECTIVE,
                    **{f"set.{k}": v for k, v in launch.overrides.items()}},
            plan={"signature": signature, "plan": {}},
        )
        planned = trials + final_seeds  # search trials + final-stage trials: what the report checks
        tracking.set_run_tags(target.uri, target.parent_run_id, {"emmil.planned_trials": planned})
        run_common["tracking"] = target.to_dict()
        data_ref = put_dataset(take)  # once, for both stages; the driver keeps no copy
        # ---- search
        if previous is not None:
            out(f"resume: {searched} of {trials} search trials already in the study (kept), {to_search} to run")
        if to_search and not stop_signals.requested():
            runner.write_state(place, {**state, "stage": "search"})
            out(f"emmil sweep {study}: {to_search} trials of {space.path} on {dataset} ({meta['source']}), preset "
                f"{preset}, scheduler {scheduler}, objective {osearch.OBJECTIVE} (held-out training videos)")
            search_trial = {"trial_id": None, "name": "search", "variant": base.variant, "seed": 0,
                            "overrides": {**launch.overrides, **space.fixed}}
            search_run = {**run_common, "stage": "search", "eval_test": False, "id_prefix": f"{study}/search",
                          "tags": {**common_tags, "emmil.stage": "search"}}
            if launch.pack > 1:  # K Optuna trials per Ray trial, pruned per member (harness.packed_search)
                search_rows = _packed_search(space, data_ref, place, search_trial, search_run, resources, launch,
                                             storage_url=storage_url, study=study, sampler_seed=sampler_seed,
                                             trials=to_search, scheduler=scheduler, max_epochs=max_epochs, out=out)
            else:
                grid = tune_trials(
                    data_ref, name=runner.tune_dir_name(place, "search"), storage=place.root,
                    param_space={"trial": search_trial, "run": search_run},
                    resources=resources, max_failures=launch.max_failures, num_samples=to_search,
                    metric=osearch.OBJECTIVE, mode=osearch.MODE,
                    search_alg=osearch.make_searcher(space, storage_url, study, sampler_seed),
                    scheduler=osearch.make_scheduler(scheduler, max_epochs), progress_total=to_search,
                    progress_label="search trial",
                )
                search_rows = result_rows(grid)
            stopped = runner.stop_reason(place.results, stop_signals.requested())
            closed = runner.close_trial_runs(target, place.buffer_dir, search_rows, interrupted=stopped)
            out(runner.tracking_summary(search_rows, closed, place.buffer_dir).replace("tracking: ", "search tracking:", 1))
            # after a stop signal: a trial that had run every epoch is COMPLETE from its state file, the
            # others FAIL (not left RUNNING; the resumed search samples replacements)
            _, orphans = osearch.settle_running_trials(
                storage_url, study, lambda tid: runner.finished_trials(place, [tid], need_test=False).get(tid))
            if orphans:
                out(f"search: {orphans} Optuna trial(s) still running when the search returned marked FAIL"
                    + (f" ({stopped})" if stopped else ""))
        stopped = runner.stop_reason(place.results, stop_signals.requested())
        if stopped:
            return _interrupted(place, target, state, stopped, command, [], trials + final_seeds, t0, out)
        best = osearch.pick_best(storage_url, study)
        state = {**state, "stage": "search-done", "best_params": best["params"], "best_value": best["value"],
                 "best_trial": best["trial"], "search_trials": best["complete"] + best["pruned"],
                 "stopped_early": best["pruned"]}
        runner.write_state(place, state)
        best_params = state["best_params"]
        out(f"search: best {osearch.OBJECTIVE} = {state['best_value']:.4f} ({state['best_trial']}), "
            f"{state['search_trials']} trials, {state['stopped_early']} stopped early")
        out("  best config: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in sorted(best_params.items())))
        # ---- final retrain on the full training split, evaluated on test
        if final_seeds > 0:
            overrides = {**launch.overrides, **space.fixed, **best_params, **space.final_overrides}
            ids = final_trial_ids(study, overrides, final_seeds)
            plan = {tid: config_hash(resolve_config(dataset, preset=preset, seed=s, overrides=overrides))
                    for s, tid in enumerate(ids)}
            runner.check_resume({**state, "signature": signature}, place, signature, plan)
            state = {**state, "stage": "final", "plan": {**state.get("plan", {}), **plan}}
            runner.write_state(place, state)
            done = runner.finished_trials(place, ids, need_test=True)
            pending = [{"trial_id": tid, "name": f"best-s{s}", "variant": base.variant, "seed": s,
                        "overrides": overrides} for s, tid in enumerate(ids) if tid not in done]
            if done:
                out(f"final: {len(done)} of {final_seeds} seeds already retrained (kept), {len(pending)} to run")
            final_rows = list(done.values())
            if pending:  # seeds of one config: packed with --pack K (harness.packed_trials)
                from harness.packed_trials import tune_pending

                final_rows += tune_pending(
                    data_ref, pending, {**run_common, "stage": "final-test", "eval_test": True,
                                        "tags": {**common_tags, "emmil.stage": "final-test"}},
                    pack=launch.pack, dataset=dataset, preset=preset, prefix=place.name, label="final trial", out=out,
                    name=runner.tune_dir_name(place, "final-test"), storage=place.root, resources=resources,
                    max_failures=launch.max_failures)
            final_rows = _final_rows_label(final_rows)
            ok = [r for r in final_rows if not r.get("error") and "test_avg_mAP" in r]
            stopped = runner.stop_reason(place.results, stop_signals.requested()) if len(ok) < final_seeds else ""
            if stopped:
                return _interrupted(place, target, state, stopped, command, final_rows, trials + final_seeds, t0, out)
            closed = runner.close_trial_runs(target, place.buffer_dir, final_rows)
            out(runner.tracking_summary(final_rows, closed, place.buffer_dir).replace("tracking: ", "final tracking:", 1))
    ok = [r for r in final_rows if not r.get("error") and "test_avg_mAP" in r]
    wall = time.time() - t0
    status = "FINISHED" if len(ok) == final_seeds else "FAILED"
    parent_tags = {f"emmil.best.{k}": v for k, v in best_params.items()}
    parent_tags["emmil.best_trial"] = state["best_trial"]
    metrics = {"search_best_val_avg_mAP": state["best_value"], "wall_seconds": wall}
    for key in TEST_METRICS:
        vals = [r[key] for r in ok if key in r]
        if vals:
            metrics[f"final_{key}_mean"] = sum(vals) / len(vals)
    runner.write_state(place, {**state, "stage": "done" if status == "FINISHED" else "final-incomplete"})
    runner.finish_parent(target, place, status, parent_tags, metrics, out)
    summary = summary_table(final_rows, "variant", TEST_METRICS) if final_seeds else "(no final retrain: --final-seeds 0)"
    out("")
    out(f"sweep {study} on {dataset} [{meta['source']}], {wall:.0f} s")
    out(f"stage search:     best {osearch.OBJECTIVE} {state['best_value']:.4f} on held-out TRAINING videos")
    out(f"stage final-test: best config retrained on the full training split, {len(ok)}/{final_seeds} seeds, test split:")
    out(summary)
    out(runner.locations(place, target, {"Optuna study": f"{study} at {tracking.redact_uri(storage_url)}",
                                         "dashboard": f"optuna-dashboard '{tracking.redact_uri(storage_url)}'"}))
    if status != "FINISHED":
        out("the final retrain did not finish; run the same command with --resume to finish it")
    if launch.report:
        out(runner.build_report(place, target, command=command, optuna_storage=storage_url, study_name=study))
    return Outcome(0 if status == "FINISHED" else 1, final_rows, target.parent_run_id, target.uri, place.root, summary)


def _packed_search(space: SearchSpace, data_ref, place, search_trial: dict, search_run: dict, resources, launch: Launch,
                   *, storage_url: str, study: str, sampler_seed: int, trials: int, scheduler: str, max_epochs: int,
                   out) -> list[dict]:
    """The search stage with --pack K: ceil(trials / K) packs of Optuna trials asked K at a time, each
    member stopped early by the sweep's rule on its own (harness.packed_search); one row per member."""
    import math
    import uuid

    from harness import runner
    from harness.packed_search import PackedOptunaSearch, pack_shape_params, start_member_pruning
    from harness.packed_trials import emmil_pack_trial, member_rows
    from harness.ray_tune import tune_trials

    packs = math.ceil(trials / launch.pack)
    pruning_name = f"emmil-pruning-{uuid.uuid4().hex[:12]}"
    pruning = start_member_pruning(scheduler, max_epochs, pruning_name)  # this handle keeps the actor alive
    out(f"packing: {trials} search trials in {packs} pack(s) of up to {launch.pack} (Optuna asked {launch.pack} "
        f"at a time; --scheduler {scheduler} stops members, not packs)")
    shaped = pack_shape_params(space, search_run["dataset"], search_run["preset"], launch.overrides)
    if shaped:
        out(f"packing: {', '.join(shaped)} change tensor shapes or step counts: sampled once per pack, shared by "
            "its members")
    searcher = PackedOptunaSearch(space, storage_url, study, sampler_seed, pack=launch.pack, trials=trials,
                                  prefix=search_run["id_prefix"], member_base=search_trial, shape_params=shaped)
    grid = tune_trials(
        data_ref, name=runner.tune_dir_name(place, "search"), storage=place.root,
        param_space={"run": {**search_run, "pruning": pruning_name}}, resources=resources,
        max_failures=launch.max_failures, num_samples=packs, search_alg=searcher, progress_total=packs,
        progress_label="search pack", trainable_fn=emmil_pack_trial,
    )
    return member_rows(grid)


def _interrupted(place, target, state: dict, name: str, command: str, final_rows: list, planned: int,
                 t0: float, out) -> Outcome:
    """After Ctrl-C / SIGTERM or a full disk (`name`: runner.stop_reason) stopped a stage: close what is
    open as interrupted, say how to resume."""
    from harness import runner, stop_signals

    closed = runner.close_trial_runs(target, place.buffer_dir, final_rows, interrupted=name)
    runner.write_state(place, {**state, "stage": "interrupted"})
    runner.finish_parent(target, place, "KILLED", {"emmil.interrupted": name}, {"wall_seconds": time.time() - t0}, out)
    out(f"\ninterrupted by {name} after {time.time() - t0:.0f} s ({planned} trials planned); "
        f"{closed['interrupted']} more run(s) closed KILLED as interrupted; finished trials are kept. "
        f"Finish the sweep with:\n  {runner.resume_command(command)}")
    out(runner.tracking_summary(final_rows, closed, place.buffer_dir))
    out(runner.locations(place, target))
    signum = stop_signals.requested()
    if not signum:
        raise ConfigError(runner.disk_full_message(place.results, command))  # exit 2, after the bookkeeping
    return Outcome(stop_signals.exit_code(signum), final_rows, target.parent_run_id, target.uri, place.root, "")


def run(args: argparse.Namespace) -> int:
    space = load_space(args.space)
    dataset = args.dataset or space.dataset
    if dataset is None:
        raise ConfigError(f"{space.path}: no dataset in the space file; pass --dataset")
    preset = args.preset or "paper"
    study = args.study or (space.name if space.name.startswith(dataset) else f"{dataset}-{space.name}")
    launch = launch_from_args(args)
    from harness import stop_signals
    from harness.cli.ablate import resume_hint

    with stop_signals.handling(), resume_hint():
        outcome = run_sweep(space, dataset=dataset, preset=preset, trials=args.trials, scheduler=args.scheduler,
                            study=study, storage=args.storage, sampler_seed=args.seed, final_seeds=args.final_seeds,
                            launch=launch, load_data=dataset_loader(dataset, args.data_dir, args))
    return outcome.exit_code
