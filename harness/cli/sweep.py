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
from harness.cli.ablate import (
    TEST_METRICS, Launch, Outcome, add_shared_arguments, dataset_loader, launch_from_args, prepare_fresh_tune_dir,
)
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


def run_sweep(space: SearchSpace, *, dataset: str, preset: str, trials: int, scheduler: str, study: str,
              storage: str | None, sampler_seed: int, final_seeds: int, launch: Launch,
              load_data: Callable[[], Any], command: str | None = None, out=print) -> Outcome:
    """Search, then retrain the best config on the full training split over `final_seeds` seeds."""
    from emmil.config import resolve_config
    from harness import optuna_search as osearch
    from harness import runner, tracking
    from harness.ray_tune import Resources, put_dataset, ray_session, result_rows, tune_trials

    check_results_dir(launch.results)  # writable, with free space, before any work
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    if final_seeds < 0:
        raise ConfigError(f"--final-seeds must be >= 0, got {final_seeds}")
    check_safe_name(study, "--study")
    osearch.check_space(space, dataset, preset)
    base = resolve_config(dataset, preset=preset, overrides={**launch.overrides, **space.fixed})
    max_epochs = base.train.epochs
    storage_url = storage or osearch.default_storage(launch.results)
    uri = launch.tracking_uri or tracking.default_tracking_uri(launch.results)
    place = runner.RunPlace(launch.results, f"sweep-{study}", uri, f"emmil-sweep-{study}")
    command = command or runner.command_line()
    def has_validation_slice(data) -> None:
        from emmil.train import split_validation

        train, val = split_validation(data, base.train.val_fraction, base.seed)
        if not val:
            raise ConfigError(
                f"{space.path}: train.val_fraction={base.train.val_fraction} holds out no video of the "
                f"{len(train)} training videos of {data.path or data.name} (the slice is stratified by class); "
                "the search objective needs a held-out slice: raise train.val_fraction or use more videos"
            )

    runner.check_place(place, resume=launch.resume)  # before anything starts
    warm = runner.prewarm_tracking(uri)  # overlaps data loading and ray.init
    take, meta = runner.load_once(load_data, has_validation_slice)
    if meta["name"] != dataset:
        raise ConfigError(f"--dataset {dataset!r} but the data at {meta['path']} is {meta['name']!r}")
    common_tags = {"emmil.experiment": f"sweep-{study}", "emmil.dataset": dataset, "emmil.data_source": meta["source"],
                   "emmil.command": command, "emmil.git_commit": tracking.git_commit()}
    resources = Resources(launch.cpus_per_trial, launch.gpus_per_trial, launch.max_concurrent)
    run_common = {"dataset": dataset, "preset": preset, "tracking": None,
                  "buffer_dir": str(place.buffer_dir), "state_dir": str(place.state_dir),
                  "fail_once": launch.fail_once}
    t0 = time.time()
    from ray import tune

    final_rows: list[dict] = []
    with ray_session(launch.address):
        warm.join()
        target, state = runner.open_parent(
            place, resume=launch.resume, kind="sweep", tags={**common_tags, "emmil.study": study},
            params={"study": study, "space": space.path, "dataset": dataset, "preset": preset, "trials": trials,
                    "scheduler": scheduler, "sampler": "TPE", "sampler_seed": sampler_seed, "final_seeds": final_seeds,
                    "optuna_storage": tracking.redact_uri(storage_url), "objective": osearch.OBJECTIVE,
                    **{f"set.{k}": v for k, v in launch.overrides.items()}},
        )
        run_common["tracking"] = target.to_dict()
        data_ref = put_dataset(take)  # once, for both stages; the driver keeps no copy
        # ---- search
        if state.get("stage") in (None, "started", "search"):
            runner.write_state(place, {**state, "stage": "search"})
            out(f"emmil sweep {study}: {trials} trials of {space.path} on {dataset} ({meta['source']}), preset "
                f"{preset}, scheduler {scheduler}, objective {osearch.OBJECTIVE} (held-out training videos)")
            prepare_fresh_tune_dir(place.root, "search", launch.resume)
            grid = tune_trials(
                data_ref, name="search", storage=place.root,
                param_space={
                    "trial": {"trial_id": None, "name": "search", "variant": base.variant, "seed": 0,
                              "overrides": {**launch.overrides, **space.fixed}},
                    "run": {**run_common, "stage": "search", "eval_test": False, "id_prefix": f"{study}/search",
                            "tags": {**common_tags, "emmil.stage": "search"}},
                    "search": osearch.tune_space(space),
                },
                resources=resources, resume=launch.resume, max_failures=launch.max_failures, num_samples=trials,
                metric=osearch.OBJECTIVE, mode=osearch.MODE,
                search_alg=osearch.make_searcher(storage_url, study, sampler_seed),
                scheduler=osearch.make_scheduler(scheduler, max_epochs), progress_total=trials,
                progress_label="search trial",
            )
            search_rows = result_rows(grid)
            closed = runner.close_trial_runs(target, place.buffer_dir, search_rows)
            out(runner.tracking_summary(search_rows, closed, place.buffer_dir).replace("tracking: ", "search tracking:", 1))
            orphans = osearch.fail_orphaned_trials(storage_url, study)
            if orphans:
                out(f"search: {orphans} Optuna trial(s) started before the driver was killed were lost with it; "
                    "marked FAIL in the study (their configurations were sampled again)")
            best = osearch.pick_best(search_rows)
            state = {**state, "stage": "search-done", "best_params": best["search"],
                     "best_value": best.get(osearch.OBJECTIVE), "best_trial": best.get("trial_key", ""),
                     "search_trials": len(search_rows),
                     "stopped_early": sum(1 for r in search_rows if r.get("epoch") != r.get("total_epochs"))}
            runner.write_state(place, state)
        best_params = state["best_params"]
        out(f"search: best {osearch.OBJECTIVE} = {state['best_value']:.4f} ({state['best_trial']}), "
            f"{state['search_trials']} trials, {state['stopped_early']} stopped early")
        out("  best config: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in sorted(best_params.items())))
        # ---- final retrain on the full training split, evaluated on test
        if final_seeds > 0:
            overrides = {**launch.overrides, **space.fixed, **best_params, **space.final_overrides}
            resolve_config(dataset, preset=preset, overrides=overrides)
            runner.write_state(place, {**state, "stage": "final"})
            trial_space = [{"trial_id": f"{study}/final-test/s{s}", "name": f"best-s{s}", "variant": base.variant,
                            "seed": s, "overrides": overrides} for s in range(final_seeds)]
            prepare_fresh_tune_dir(place.root, "final-test", launch.resume)
            grid = tune_trials(
                data_ref, name="final-test", storage=place.root,
                param_space={"trial": tune.grid_search(trial_space),
                             "run": {**run_common, "stage": "final-test", "eval_test": True,
                                     "tags": {**common_tags, "emmil.stage": "final-test"}}},
                resources=resources, resume=launch.resume and state.get("stage") == "final",
                max_failures=launch.max_failures, progress_total=final_seeds, progress_label="final trial",
            )
            final_rows = _final_rows_label(result_rows(grid))
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
    tracking.finish_run(target.uri, target.parent_run_id, status, parent_tags, metrics)
    runner.write_state(place, {**state, "stage": "done" if status == "FINISHED" else "final-incomplete"})
    summary = summary_table(final_rows, "variant", TEST_METRICS) if final_seeds else "(no final retrain: --final-seeds 0)"
    out("")
    out(f"sweep {study} on {dataset} [{meta['source']}], {wall:.0f} s")
    out(f"stage search:     best {osearch.OBJECTIVE} {state['best_value']:.4f} on held-out TRAINING videos")
    out(f"stage final-test: best config retrained on the full training split, {len(ok)}/{final_seeds} seeds, test split:")
    out(summary)
    out(runner.locations(place, target, {"Optuna study": f"{study} at {tracking.redact_uri(storage_url)}",
                                         "dashboard": f"optuna-dashboard '{tracking.redact_uri(storage_url)}'"}))
    if launch.report:
        out(runner.build_report(place, target, command=command, optuna_storage=storage_url, study_name=study))
    return Outcome(0 if status == "FINISHED" else 1, final_rows, target.parent_run_id, uri, place.root, summary)


def run(args: argparse.Namespace) -> int:
    space = load_space(args.space)
    dataset = args.dataset or space.dataset
    if dataset is None:
        raise ConfigError(f"{space.path}: no dataset in the space file; pass --dataset")
    preset = args.preset or "paper"
    study = args.study or (space.name if space.name.startswith(dataset) else f"{dataset}-{space.name}")
    launch = launch_from_args(args)
    outcome = run_sweep(space, dataset=dataset, preset=preset, trials=args.trials, scheduler=args.scheduler,
                        study=study, storage=args.storage, sampler_seed=args.seed, final_seeds=args.final_seeds,
                        launch=launch, load_data=dataset_loader(dataset, args.data_dir, args.layout))
    return outcome.exit_code
