"""A long experiment that outlives one session: trial records committed one by one, the table built from them.

    .venv/bin/python bench/paper_references.py run   [--experiment references] [--seeds 3] [--workers 2]
                                                     [--stop-after MINUTES]
    .venv/bin/python bench/paper_references.py table [--records DIR]
    .venv/bin/python bench/paper_references.py run --quick     # CI smoke: dim 8, 12 videos, quick preset, 2 epochs

Why not `emmil ablate --resume`: issue 10 asks for Table 3 beside its reference rows at the paper preset
on dim-1024 features, 3 seeds: 21 trials of 15-35 min each on this 2-core CPU (BENCHMARKS.md), more than
one session, and each session starts from a fresh clone where an ablation's results folder (MLflow store,
Ray state, per-epoch training state of tens of MiB per trial) does not survive. This script runs the same
trials (harness.experiments.expand_trials: the experiment's variants x seeds, seed-major; each config from
emmil.config.resolve_config exactly as an `emmil ablate` trial builds it) through emmil.train.train_run,
one process per worker with one torch thread, and writes one small JSON record per FINISHED trial into
--records (committed to git): a later session runs the same command and trains only the trials without a
record. A trial cut off part-way leaves nothing and starts again from epoch 0.

A record holds the trial's config hash and the dataset's SYNTHETIC.json parameters; `table` (and `run`)
refuse records whose config differs from what this code resolves for the trial, or whose data differ from
the others', naming the file: the table never mixes configurations. Records also keep the git commit
they were trained at (the table lists them).

`table` prints the report's own tables (reports.tables: Table 1 style mAP by tIoU with fraction of the
ceiling and the gate's classification mAP, Table 3 style, paired differences against `full`) for the
records present, and writes them to <records>/TABLES.md. Numbers are from the semi-synthetic dataset the
records name, never real I3D features.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import git_commit, out_dir, strict_json, synthetic_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# references-paper-v2: the "attention" gate (before model.gate existed), read with commit ab61ece;
# references-paper-v2-linear-gate: the "linear-mean" gate, today's paper preset.
DEFAULT_RECORDS = ROOT / "bench" / "records" / "references-paper-v2-linear-gate"
RECORD_FORMAT = 1
# A record keeps train_run's scalar metrics (what an `emmil ablate` trial logs to MLflow at its end) plus
# these non-scalar entries (small); predictions and models stay in the run folder (MiB each).
RECORD_KEYS = ("trial", "variant", "seed", "dataset", "params", "git_commit", "metrics", "timing", "eval_protocol",
               "data_source", "device")
KEPT_KEYS = ("timing", "eval_protocol", "data_source", "device", "history")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("run", "table"))
    p.add_argument("--experiment", default="references", help="experiment in ablations/ (default references)")
    p.add_argument("--dataset", default="thumos14")
    p.add_argument("--preset", default="paper", choices=("paper", "quick"))
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="features in the W-TALC layout (default: semi-synthetic v2, dim 1024, written once "
                        "under bench/out/data)")
    p.add_argument("--dim", type=int, default=1024, help="feature width of the default data (default 1024)")
    p.add_argument("--records", type=Path, default=None, help=f"record folder (default {DEFAULT_RECORDS.relative_to(ROOT)})")
    p.add_argument("--runs", type=Path, default=None,
                   help="run folders of train_run (predictions, model.pt; not committed; default under bench/out)")
    p.add_argument("--workers", type=int, default=2, help="trials at a time, one torch thread each (default 2)")
    p.add_argument("--stop-after", type=float, default=None,
                   help="minutes after which no new trial starts (running ones finish)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every trial (part of each record's config hash)")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke: dim 8, 12 videos, quick preset, 1 seed, 2 epochs, records under bench/out")
    args = p.parse_args(argv)
    if args.quick:
        args.dim, args.preset, args.seeds = 8, "quick", 1
        args.overrides = list(args.overrides) + ["train.epochs=2", "train.gate_epochs=2"]
        if args.records is None:
            args.records = out_dir("paper-references-quick") / "records"
        if args.runs is None:
            args.runs = out_dir("paper-references-quick") / "runs"
    if args.records is None:
        args.records = DEFAULT_RECORDS
    if args.runs is None:
        args.runs = out_dir("paper-references-runs") / args.records.name  # one run folder per record folder
    if args.workers < 1:
        p.error("--workers must be >= 1")
    return args


def data_folder(args) -> Path:
    if args.data_dir is not None:
        return args.data_dir
    return synthetic_data(args.dataset, dim=args.dim, max_videos=12 if args.quick else None)


def data_identity(data_dir: Path) -> dict:
    """What the records' data must share: SYNTHETIC.json's generator, dim, seed and parameters (semi-synthetic
    data), else the sha1 of the folder's file names and sizes (user features)."""
    marks = sorted(Path(data_dir).rglob("SYNTHETIC.json"))
    if marks:
        meta = json.loads(marks[0].read_text())
        return {k: meta.get(k) for k in ("dataset", "generator", "dim", "seed", "max_videos", "params")}
    listing = sorted((str(f.relative_to(data_dir)), f.stat().st_size) for f in Path(data_dir).rglob("*") if f.is_file())
    return {"files_sha1": hashlib.sha1(json.dumps(listing).encode()).hexdigest()}


def planned_trials(experiment, dataset: str, preset: str, seeds: int, overrides: dict):
    """[(TrialSpec, RunConfig)] of `experiment` x `seeds`, seed-major, each config resolved as an `emmil
    ablate` trial resolves it (harness.packed_trials: the spec's overrides, then --set)."""
    from emmil.config import resolve_config
    from harness.experiments import expand_trials

    return [(spec, resolve_config(dataset, preset=preset, seed=spec.seed, overrides={**spec.overrides, **overrides}))
            for spec in expand_trials(experiment, seeds)]


def planned(args):
    from emmil.config import parse_set_args
    from harness.experiments import load_experiment

    experiment = load_experiment(args.experiment)
    return experiment, planned_trials(experiment, args.dataset, args.preset, args.seeds,
                                      parse_set_args(args.overrides))


def record_path(records: Path, trial: str) -> Path:
    return records / f"{trial}.json"


def read_record(path: Path, cfg, identity: dict) -> dict:
    """A record, checked against the config this code resolves for its trial and the data of the run."""
    from emmil.config import config_hash
    from emmil.errors import DataError

    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable record ({exc})") from None
    if not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT:
        raise DataError(f"{path}: not a record of format {RECORD_FORMAT}")
    missing = [k for k in RECORD_KEYS if k not in rec]
    if missing:
        raise DataError(f"{path}: record lacks {', '.join(missing)}")
    if rec.get("config_hash") != config_hash(cfg):
        raise DataError(f"{path}: trained with config {rec.get('config_hash')}, but this code resolves "
                        f"{config_hash(cfg)} for trial {rec.get('trial')}: the configuration changed since "
                        "(a default or the experiment file); move the records aside and train again")
    if rec.get("data") != identity:
        raise DataError(f"{path}: trained on other data than {identity.get('generator', '')} "
                        f"dim {identity.get('dim', '')} (its SYNTHETIC.json parameters differ)")
    return rec


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one core per trial, as `emmil ablate --cpus-per-trial 1`


_DATASETS: dict = {}


def train_one(dataset: str, data_dir: str, cfg_dict: dict, trial: str, variant: str, run_dir: str,
              identity: dict, commit: str) -> dict:
    """Train and test one trial in this worker (its dataset loaded once per worker); return its record."""
    from emmil.config import config_from_dict
    from emmil.data.loading import load_dataset

    if data_dir not in _DATASETS:
        _DATASETS[data_dir] = load_dataset(dataset, data_dir)
    return trial_record(config_from_dict(cfg_dict), _DATASETS[data_dir], run_dir, trial=trial, variant=variant,
                        identity=identity, commit=commit)


def trial_record(cfg, data, run_dir, *, trial: str, variant: str, identity: dict, commit: str) -> dict:
    """emmil.train.train_run of one trial's config on `data`, as a record (not yet written)."""
    from emmil.config import config_hash
    from emmil.train import train_run

    started = time.time()
    metrics = train_run(cfg, data, run_dir, progress=False, device="cpu")
    scalars = {k: v for k, v in metrics.items() if k not in KEPT_KEYS and not isinstance(v, (dict, list))}
    return {
        "format": RECORD_FORMAT, "trial": trial, "variant": variant, "seed": cfg.seed, "dataset": cfg.dataset,
        "preset": cfg.preset, "config_hash": config_hash(cfg), "params": {k: str(v) for k, v in cfg.to_flat_dict().items()},
        "data": identity, "git_commit": commit, "started": started, "ended": time.time(),
        "metrics": scalars, **{k: metrics[k] for k in KEPT_KEYS if k in metrics},
    }


def write_record(path: Path, rec: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(strict_json(rec, indent=1) + "\n")
    os.replace(tmp, path)  # whole or absent: a record is only ever a finished trial


def claim(runs: Path, trial: str) -> bool:
    """Take <runs>/<trial>.lock for this process, or False when a live process on this machine holds it
    (two `run`s on one record folder train disjoint trials). A lock whose process is gone is taken over."""
    runs.mkdir(parents=True, exist_ok=True)
    lock = runs / f"{trial}.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(lock.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                holder = -1  # unreadable or half-written: treated as stale
            if holder > 0 and _alive(holder):
                return False
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run(args) -> int:
    data_dir = data_folder(args)
    identity = data_identity(data_dir)
    _, plan = planned(args)
    todo = []
    for spec, cfg in plan:
        path = record_path(args.records, spec.name)
        if path.exists():
            read_record(path, cfg, identity)  # refuses a stale one before any training starts
        else:
            todo.append((spec, cfg))
    print(f"{len(plan) - len(todo)} of {len(plan)} trials have records in {args.records}; "
          f"{len(todo)} to train, {args.workers} at a time", flush=True)
    commit = git_commit()
    runs = args.runs
    t0 = time.time()
    ctx = multiprocessing.get_context("spawn")
    failed = 0
    with cf.ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_worker_init) as pool:
        pending: dict = {}
        queue = list(todo)

        def submit():
            while queue and len(pending) < args.workers:
                if args.stop_after is not None and time.time() - t0 > args.stop_after * 60:
                    print(f"--stop-after {args.stop_after} min: {len(queue)} trial(s) not started", flush=True)
                    queue.clear()
                    return
                spec, cfg = queue.pop(0)
                if not claim(runs, spec.name):
                    print(f"skip {spec.name}: another run on this machine is training it "
                          f"({runs / (spec.name + '.lock')})", flush=True)
                    continue
                fut = pool.submit(train_one, args.dataset, str(data_dir), cfg.to_dict(), spec.name, spec.variant,
                                  str(runs / spec.name), identity, commit)
                pending[fut] = (spec, time.time())
                print(f"[{time.strftime('%H:%M:%S')}] start {spec.name}", flush=True)

        submit()
        while pending:
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                spec, began = pending.pop(fut)
                try:
                    rec = fut.result()
                except Exception as exc:  # one trial's failure is reported, the others go on
                    failed += 1
                    print(f"[{time.strftime('%H:%M:%S')}] FAILED {spec.name}: {type(exc).__name__}: {exc}", flush=True)
                    (runs / f"{spec.name}.lock").unlink(missing_ok=True)
                    if isinstance(exc, BrokenProcessPool) and queue:  # a worker died (killed, out of memory):
                        print(f"the worker pool is broken: {len(queue)} trial(s) not started; run again to train "
                              "them (records written so far are kept)", flush=True)  # no new submit would work
                        queue.clear()
                    continue
                write_record(record_path(args.records, spec.name), rec)
                (runs / f"{spec.name}.lock").unlink(missing_ok=True)  # after the record: never a gap
                m = rec["metrics"]
                print(f"[{time.strftime('%H:%M:%S')}] done {spec.name} in {(time.time() - began) / 60:.1f} min: "
                      f"test avg mAP {100 * m.get('test_avg_mAP', float('nan')):.2f}, "
                      f"mAP@0.5 {100 * m.get('test_mAP_0.50', float('nan')):.2f}", flush=True)
            submit()
    table(args)
    return 1 if failed else 0


def records_frame(args):
    """The runs table (reports/runs.py's columns) of the records present, checked."""
    import pandas as pd

    from reports.runs import config_group

    identity = data_identity(data_folder(args))
    _, plan = planned(args)
    rows = []
    for spec, cfg in plan:
        path = record_path(args.records, spec.name)
        if not path.exists():
            continue
        rec = read_record(path, cfg, identity)
        rows.append({
            "run_id": spec.name, "experiment": args.experiment, "status": "FINISHED", "parent_run_id": "",
            "dataset": rec["dataset"], "data_source": rec["data_source"], "variant": spec.variant,
            "seed": int(rec["seed"]), "eval_protocol": rec["eval_protocol"], "stage": "ablation",
            "config_hash": rec["config_hash"], "git_commit": rec["git_commit"], "device": rec["device"],
            "config_group": config_group(rec["params"]), **rec["metrics"],
            **{f"param:{k}": v for k, v in rec["params"].items()},
            "train_minutes": rec["timing"]["wall_seconds"] / 60,
        })
    return pd.DataFrame(rows), len(plan)


def table(args) -> int:
    from reports import tables
    from reports.render import table_markdown

    frame, planned_count = records_frame(args)
    if frame.empty:
        print(f"no records in {args.records}")
        return 1
    published = tables.load_published()
    parts = [f"{len(frame)} of {planned_count} trials ({args.experiment}, {args.preset} preset, "
             f"{args.seeds} seeds) have records in {args.records.name}; trained at commits "
             f"{', '.join(sorted(set(frame['git_commit'])))}; minutes per trial "
             f"{frame['train_minutes'].min():.1f}-{frame['train_minutes'].max():.1f}.", ""]
    for key, block in tables.blocks(frame):
        for t in (tables.map_table(key, block, published), tables.ablation_table(key, block, published),
                  tables.paired_table(key, block)):
            parts += [table_markdown(t), ""]  # the bold title it opens with is the heading
    text = "\n".join(parts)
    print(text)
    args.records.mkdir(parents=True, exist_ok=True)
    (args.records / "TABLES.md").write_text(text)
    return 0


def main(argv=None) -> int:
    from emmil.errors import ConfigError, DataError

    args = parse_args(argv)
    try:
        return run(args) if args.action == "run" else table(args)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
