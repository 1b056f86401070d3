"""Packed trials (issue 11): K trials of one variant trained as ONE vectorised model in one Ray trial.

`--pack K` groups an ablation's pending trials whose configs share `emmil.packed.pack_key` (same
variant and tensor shapes; seeds, lr, gamma, dropout, ... may differ) into packs of up to K members
and runs each pack as one Tune trial (`emmil_pack_trial`) that trains them with `emmil.packed.PackedFit`
and scores the test split once for all (`evaluate_test_packed`). Per member, everything a lone trial has:
its own MLflow child run (params, epoch metrics, test metrics, artifacts, model.pt by --keep-models,
tags emmil.pack = the pack's id and emmil.pack_member = its index), its own tracking buffer, and at the
end its own state file (<results>/<name>/trial-state/<trial>.pt, the lone trial's format), which is what
`--resume` and the summaries read. A packed member gives the same metrics as the same trial alone
(tests/test_packed.py, tests/harness/test_packed_harness.py).

Checkpoints: every epoch the pack writes ONE state file holding every member's training state, run id
and report (trial-state/<pack id>.pt, atomically replaced), then a Tune marker checkpoint; a retried
pack (worker killed) continues every member from it, in the same MLflow runs, logging no epoch twice.
A pack id names its members (a hash of their trial ids), so a resumed experiment whose unfinished
members form the same pack continues it; members finish together, so that is the usual case.
Lambda sharing (harness.shared_training) does not apply inside packs: members always train.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from ray import tune

from emmil.errors import ConfigError
from harness.packed_search import members_to_stop

PACK_AUTO = "auto"


def default_pack(gpus_per_trial: float) -> int:
    """`--pack auto`: 1 on CPU trials, 8 when trials get a GPU.

    On CPU a pack of K costs K x the compute of one member (no idle units to fill) and the harness's
    per-trial costs are paid once instead of K times; on a GPU one member uses a few percent of the
    device (DESIGN.md section 7), so K members run in about the time of one. BENCHMARKS.md (packing)
    has the measured figures behind both defaults."""
    return 8 if gpus_per_trial > 0 else 1


def parse_pack(value: str) -> int | str:
    """--pack K (>= 1) or 'auto'."""
    if value == PACK_AUTO:
        return PACK_AUTO
    try:
        k = int(value)
    except ValueError:
        raise ConfigError(f"--pack must be a positive integer or 'auto', got {value!r}") from None
    if not 1 <= k <= 64:
        raise ConfigError(f"--pack must be in [1, 64], got {k}")
    return k


def pack_id(name: str, member_ids: Sequence[str]) -> str:
    """`<experiment>/pack-<10 hex>`: the same members -> the same id (what a resume finds again)."""
    digest = hashlib.sha256("\n".join(member_ids).encode()).hexdigest()[:10]
    return f"{name}/pack-{digest}"


def make_packs(pending: Sequence[Mapping[str, Any]], dataset: str, preset: str, k: int, name: str) -> list[dict]:
    """Group trial specs (the dicts a lone trial gets as config["trial"]) into pack specs
    {"trial_id": pack id, "name", "members": [spec, ...]}: members share emmil.packed.pack_key, in the
    order given, at most k per pack; a group's last pack may be smaller."""
    from emmil.config import resolve_config
    from emmil.packed import pack_key

    groups: dict[tuple, list] = {}
    for spec in pending:
        cfg = resolve_config(dataset, preset=preset, seed=int(spec["seed"]), overrides=spec["overrides"])
        groups.setdefault(pack_key(cfg), []).append(spec)
    packs = []
    for specs in groups.values():
        for i in range(0, len(specs), k):
            members = list(specs[i : i + k])
            pid = pack_id(name, [m["trial_id"] for m in members])
            packs.append({"trial_id": pid, "name": pid.split("/", 1)[1], "members": members})
    return packs


def tune_pending(data, pending: Sequence[Mapping[str, Any]], run: Mapping[str, Any], *, pack: int, dataset: str,
                 preset: str, prefix: str, label: str, out=print, **tune_kwargs) -> list[dict[str, Any]]:
    """Run the trial specs `pending` on Tune (harness.ray_tune.tune_trials with `tune_kwargs`): one Tune
    trial each with pack 1, else packs of up to `pack` (make_packs; pack ids `<prefix>/pack-...`).
    Returns one summary row per trial either way."""
    from harness.ray_tune import result_rows, tune_trials

    if pack <= 1:
        grid = tune_trials(data, param_space={"trial": tune.grid_search(list(pending)), "run": dict(run)},
                           progress_total=len(pending), progress_label=label, **tune_kwargs)
        return result_rows(grid)
    packs = make_packs(pending, dataset, preset, pack, prefix)
    out(f"packing: {len(pending)} trials in {len(packs)} pack(s) of up to {pack}")
    grid = tune_trials(data, param_space={"trial": tune.grid_search(packs), "run": dict(run)},
                       progress_total=len(packs), progress_label="pack", trainable_fn=emmil_pack_trial, **tune_kwargs)
    return member_rows(grid)


def member_rows(grid) -> list[dict[str, Any]]:
    """One summary row per MEMBER of every pack in a ResultGrid (a pack's last report carries its
    members' final reports as a JSON string: strings cost Tune no per-key statistics). A pack that
    failed gives each of its members a row with the error."""
    from harness.optuna_search import search_params

    rows = []
    for result in grid:
        metrics = dict(result.metrics or {})
        members = json.loads(metrics["pack_members"]) if metrics.get("pack_members") else {}
        error = repr(result.error) if result.error else ""
        for spec in ((result.config or {}).get("trial") or {}).get("members", []):
            row = dict(members.get(spec["trial_id"], {}))
            row.update({"error": error if not row else "",
                        "search": spec.get("search") or search_params(result.config or {}),
                        "trial_key": spec["trial_id"], "variant": row.get("variant", spec.get("variant")),
                        "pack": metrics.get("trial_key", "")})
            rows.append(row)
    return rows


def emmil_pack_trial(config: dict, data=None) -> None:
    """Ray Tune function trainable of one pack (module doc). config = {"trial": pack spec, "run": as
    for harness.ray_tune.emmil_trial}."""
    from harness import ray_tune as rt

    for key, value in rt.TRIAL_MLFLOW_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    from emmil import train as core
    from emmil.config import config_hash, resolve_config
    from emmil.packed import PackedFit, evaluate_test_packed
    from harness.tracking import TrackingTarget, TrialRun, trial_uri

    spec, run = config["trial"], config["run"]
    members = spec["members"]
    ids = [m["trial_id"] for m in members]
    cfgs = [resolve_config(run["dataset"], preset=run["preset"], seed=int(m["seed"]), overrides=m["overrides"])
            for m in members]
    device = core.choose_device(cfgs[0].device)
    node = ray.get_runtime_context().get_node_id()
    remote = node != run.get("driver_node_id", node)
    pack_file = rt.trial_state_file(run["state_dir"], spec["trial_id"])
    blob = rt.read_trial_state(pack_file, rt.marker_epoch(tune.get_checkpoint()))
    saved = blob.get("members") or {}
    states = [saved.get(i, {}).get("state") for i in ids]
    done_epoch = int(blob.get("epoch", 0))

    gpu_ids = ",".join(str(g) for g in ray.get_gpu_ids())
    target = TrackingTarget(**{**run["tracking"], "uri": trial_uri(run["tracking"]["uri"])})
    trackers, logged = [], []
    for index, (member, cfg) in enumerate(zip(members, cfgs)):
        tags = {
            **run["tags"], "emmil.variant": member.get("variant", cfg.variant), "emmil.seed": cfg.seed,
            "emmil.eval_protocol": rt.eval_protocol(cfg.train.exclude_ambiguous), "emmil.data_source": data.source,
            "emmil.device": str(device), "emmil.gpu_ids": gpu_ids or "none", "emmil.config_hash": config_hash(cfg),
            "emmil.stage": run["stage"], "emmil.pack": spec["trial_id"], "emmil.pack_member": index,
            "emmil.pack_size": len(members), "emmil.trained_by": member["trial_id"],
        }
        buffer = Path(run["buffer_dir"]) / f"{rt._safe_file_name(member['trial_id'])}.jsonl"
        tracker = TrialRun(target, member["trial_id"], tags, buffer, run_id=saved.get(member["trial_id"], {}).get("run_id"))
        if states[index] is None:
            tracker.log_params(cfg.to_flat_dict())
        tracker.flush()
        logged.append(tracker.logged_through("loss"))  # a member restarted from scratch never logs an epoch twice
        trackers.append(tracker)

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    trial_dir = Path(tune.get_context().get_trial_dir())
    features = rt.shared_features(data, device)
    reports: dict[str, dict] = {i: saved.get(i, {}).get("report") for i in ids}
    stopped = {i for i in ids if saved.get(i, {}).get("stopped")}  # pruned in an earlier attempt: not trained
    total = cfgs[0].train.epochs
    pruning = run.get("pruning")  # a packed search's MemberPruning actor (harness.packed_search)

    def member_report(index: int, metrics: Mapping[str, Any], epoch: int, delivered: bool) -> dict[str, Any]:
        member, cfg, tracker = members[index], cfgs[index], trackers[index]
        report = rt.epoch_report({**metrics, "epoch": epoch, "total_epochs": total})
        report.update({"tracking_ok": float(delivered), "tracking_delayed_flushes": tracker.failed_flushes,
                       "mlflow_run_id": tracker.run_id or "", "trial_key": member["trial_id"],
                       "variant": member.get("variant", cfg.variant), "seed": cfg.seed,
                       "cuda_visible_devices": visible, "gpu_ids": gpu_ids, "device": str(device),
                       "trained_by": member["trial_id"], "shared_training": "pack",
                       "pack": spec["trial_id"], "pack_member": index})
        return report

    def deliver(tracker) -> bool:
        if tracker.flush_with_retries():
            return True
        if remote:
            rt.deliver_before_done(tracker, node)
            return True
        return False

    active = [j for j, i in enumerate(ids) if i not in stopped]
    if done_epoch < total and active:
        packed = PackedFit([cfgs[j] for j in active], data, device=device, features=features,
                           resumes=[states[j] for j in active] if any(states[j] is not None for j in active) else None)
        for results in packed:
            live = [(j, r) for j, r in zip(active, results) if r is not None]
            epoch = live[0][1].epoch
            rt._maybe_fail(run.get("fail_once"), spec["trial_id"], epoch)
            last = epoch >= total
            metrics = {j: rt._epoch_metrics(r) for j, r in live}
            for j, _ in live:
                if epoch > logged[j]:
                    trackers[j].log_metrics(metrics[j], step=epoch)
            # the searcher's objective per member, and which members its early-stopping rule stops now
            values = {ids[j]: metrics[j].get("val_avg_mAP") for j, _ in live}
            stop_now = set() if last else set(members_to_stop(pruning, epoch, values))
            outcomes = {}
            if last and run["eval_test"]:
                tested = evaluate_test_packed([cfgs[j] for j, _ in live], data, [r.model for _, r in live],
                                              device=device, features=features)
                outcomes = {j: o for (j, _), o in zip(live, tested)}
            newly_stopped = {}
            for j, result in live:
                member, cfg, tracker = members[j], cfgs[j], trackers[j]
                ends = last or ids[j] in stop_now
                if ends:
                    final = dict(metrics[j])
                    if outcomes.get(j) is not None:
                        final = {k: float(v) for k, v in outcomes[j].metrics.items()}
                        tracker.log_metrics(final, step=epoch)
                    keep = rt.keeps_model(run.get("keep_models", "all"), run["stage"])
                    folder = trial_dir / "artifacts" / rt._safe_file_name(member["trial_id"])
                    tracker.log_artifacts(rt._write_artifacts(folder, cfg, final, outcomes.get(j),
                                                              result.model if keep else None, data))
                    if last:
                        tracker.terminate("FINISHED")
                    else:  # stopped early: what the unpacked search's runs stopped by ASHA end as
                        tracker.set_tags({"emmil.stopped_early": "true", "emmil.stopped_at_epoch": epoch})
                        tracker.terminate("KILLED")
                    delivered = deliver(tracker)
                else:
                    delivered = tracker.maybe_flush(rt.FLUSH_EVERY_S)
                report = member_report(j, metrics[j], epoch, delivered)
                if ends and outcomes.get(j) is not None:
                    report.update(final)
                reports[ids[j]] = report
                if ids[j] in stop_now:
                    stopped.add(ids[j])
                    newly_stopped[ids[j]] = report
                    packed.stop(active.index(j))
            member_states = {ids[j]: r.state() for j, r in live}
            blob_members = dict(saved)
            for j, i in enumerate(ids):
                if i in member_states:
                    blob_members[i] = {"state": member_states[i], "run_id": trackers[j].run_id,
                                       "report": reports[i], "stopped": i in stopped}
            rt.write_trial_state(pack_file, {
                "epoch": epoch, "state": {"epoch": epoch},  # "state.epoch": what read_trial_state checks
                "members": blob_members})
            saved = blob_members
            for i, s in member_states.items():  # a member's own finished state file: what --resume reads
                if last or i in newly_stopped:
                    t = trackers[ids.index(i)]
                    rt.write_trial_state(rt.trial_state_file(run["state_dir"], i),
                                         {"state": s, "run_id": t.run_id, "report": reports[i]})
            ended = last or len(stopped) == len(ids)
            _report_pack(spec["trial_id"], epoch, total, reports if ended else None,
                         min(float(reports[i]["tracking_ok"]) for i in ids if reports[i] is not None),
                         values=values if pruning else None, stopped=newly_stopped)  # values: for the searcher
        return
    # restored after its last epoch (the driver died before Tune recorded the pack as finished), or
    # every member was stopped early
    for tracker in trackers:
        deliver(tracker)
    _report_pack(spec["trial_id"], max(done_epoch, 1), total, reports, 1.0, checkpoint=False)


def _report_pack(pid: str, epoch: int, total: int, finals: Mapping[str, dict] | None, tracking_ok: float,
                 checkpoint: bool = True, values: Mapping[str, Any] | None = None,
                 stopped: Mapping[str, dict] | None = None) -> None:
    """The pack's Tune report: progress keys, the members' objectives this epoch (`values`, for a packed
    search's searcher) and the final reports of the members stopped now (`stopped`); the last one adds
    every member's final report. Member data travels as JSON strings: strings cost Tune no per-key
    statistics."""
    from emmil.train import finite_or_null
    from harness.ray_tune import MARKER_FILE

    report: dict[str, Any] = {"epoch": epoch, "total_epochs": total, "trial_key": pid, "tracking_ok": tracking_ok}
    if values:
        report["pack_values"] = json.dumps({k: v if isinstance(v, float) and math.isfinite(v) else None
                                            for k, v in values.items()}, allow_nan=False)
    if stopped:
        report["pack_stopped"] = json.dumps({k: finite_or_null(dict(v)) for k, v in stopped.items()}, allow_nan=False)
    if finals is not None:
        report["pack_members"] = json.dumps({k: finite_or_null(dict(v)) for k, v in finals.items()}, allow_nan=False)
        for key in ("test_avg_mAP", "test_mAP_0.50"):  # the progress line's figures: the members' mean
            values = [f[key] for f in finals.values() if isinstance(f.get(key), float)]
            if values:
                report[key] = sum(values) / len(values)
    if not checkpoint:
        tune.report(report)
        return
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / MARKER_FILE).write_text(json.dumps({"epoch": epoch}, allow_nan=False))
        tune.report(report, checkpoint=tune.Checkpoint.from_directory(tmp))
