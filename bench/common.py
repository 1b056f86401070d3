"""Helpers shared by the benchmark scripts in bench/ (issue 7).

- `machine_description()`: what the figures were measured on (CPU model, cores, memory, GPU, versions).
- `matmul_flops()`: the machine's own plain fp32 matmul rate, the yardstick every throughput figure is
  divided by (DESIGN.md section 7: "measure throughput as a fraction of the machine's own matmul rate,
  measured in the same run").
- `tree_memory()` / `PeakMemory`: unique (USS) and proportional (PSS) memory of a process tree, via
  psutil's memory_full_info (Linux /proc/PID/smaps_rollup). RSS double-counts pages shared between
  processes (a dataset in Ray's object store mapped by two workers appears in both RSS figures); the sum
  of PSS over a tree counts each shared page once, and USS is what a process alone holds.
- `emit_result()` / `parse_result()`: every benchmark prints ONE final JSON object line; run_all.py
  reads the last stdout line that parses as a JSON object.
- `strict_json()`: every JSON a benchmark writes or prints, strict (no NaN/Infinity tokens, which
  other tools' parsers reject): a figure that could not be measured (NaN, inf) becomes null.

Imports only the standard library, psutil and (lazily) torch, so `--help` stays fast.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import psutil

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "out"  # gitignored


def out_dir(sub: str = "") -> Path:
    """Where benchmark outputs go: $OUT (device runs) or bench/out/, created."""
    base = Path(os.environ["OUT"]) if os.environ.get("OUT") else DEFAULT_OUT
    path = base / sub if sub else base
    path.mkdir(parents=True, exist_ok=True)
    return path


def cpu_model() -> str:
    """`lscpu` "Model name" (falls back to /proc/cpuinfo, then platform.processor())."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_description() -> dict:
    """Machine facts printed beside every figure (CPU model, logical cores usable, memory, GPU)."""
    desc = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": cpu_model(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        # Other work on the machine while measuring (a shared 2-core box is noisy): 1-minute load average.
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "git_commit": git_commit(),
    }
    try:
        import torch

        desc["torch"] = torch.__version__
        desc["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            desc["gpu"] = torch.cuda.get_device_name(0)
            desc["gpu_count"] = torch.cuda.device_count()
            desc["cuda"] = torch.version.cuda
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return desc


def matmul_flops(*, n: int = 1024, device: str = "cpu", dtype: str = "float32", min_seconds: float = 0.5,
                 repeats: int = 3) -> float:
    """Best observed FLOP/s of an (n x n) @ (n x n) matmul: 2 n^3 FLOP per product.

    Each of `repeats` rounds runs products back to back for at least `min_seconds`; the fastest round
    wins (the machine's attainable plain-matmul rate). On CUDA the clock is read after a synchronize.
    fp32 on CUDA is measured with TF32 disabled unless the caller enabled it globally (state is left as
    found). Uses the current torch thread count: set it before calling to match the measured workload.
    """
    import torch

    dev = torch.device(device)
    dt = getattr(torch, dtype)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dev, dt)
    b = torch.randn(n, n, generator=gen).to(dev, dt)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    flop = 2.0 * n**3
    for _ in range(2):  # warm-up: allocator, kernels, thread pool
        torch.matmul(a, b)
    sync()
    best = 0.0
    for _ in range(repeats):
        count = 0
        start = time.perf_counter()
        while True:
            torch.matmul(a, b)
            count += 1
            if count % 4 == 0 or dev.type != "cuda":
                sync()
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds:
                    break
        best = max(best, flop * count / elapsed)
    return best


@dataclass(frozen=True)
class MemorySample:
    """Memory of a set of processes, bytes. pss sums to each shared page counted once."""

    uss: int  # sum of unique set sizes: pages only these processes hold privately
    pss: int  # sum of proportional set sizes: shared pages split between their users
    rss: int  # sum of resident set sizes: shared pages counted once per process (overcounts)
    processes: int


def _proc_memory(proc: psutil.Process) -> tuple[int, int, int] | None:
    try:
        info = proc.memory_full_info()
        return int(info.uss), int(getattr(info, "pss", info.uss)), int(info.rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, FileNotFoundError):
        return None


def tree_processes(root_pid: int, *, include_root: bool = True) -> list[psutil.Process]:
    """The process `root_pid` and all its descendants that are still alive."""
    try:
        root = psutil.Process(root_pid)
        procs = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return ([root] if include_root else []) + procs


def is_ray_worker(proc: psutil.Process) -> bool:
    """Ray worker processes rename themselves `ray::<task or actor>` (e.g. ray::ImplicitFunc.train)."""
    try:
        name = proc.name()
        cmd = " ".join(proc.cmdline()[:2])
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return name.startswith("ray::") or cmd.startswith("ray::") or "default_worker.py" in cmd


def tree_memory(root_pid: int, *, select: Callable[[psutil.Process], bool] | None = None) -> MemorySample:
    """Summed USS/PSS/RSS over `root_pid`'s tree (or the processes of it that `select` accepts)."""
    uss = pss = rss = n = 0
    for proc in tree_processes(root_pid):
        if select is not None and not select(proc):
            continue
        m = _proc_memory(proc)
        if m is None:
            continue
        uss, pss, rss, n = uss + m[0], pss + m[1], rss + m[2], n + 1
    return MemorySample(uss=uss, pss=pss, rss=rss, processes=n)


class PeakMemory:
    """Samples a process tree in a background thread; keeps the peak of each summed figure.

    `peak_tree` is over every process of the tree, `peak_workers` over Ray worker processes only
    (see is_ray_worker); peaks of USS, PSS and RSS are taken independently. Sampling reads
    smaps_rollup of each process (a few ms each), so keep `interval` >= 0.2 s on a 2-core machine.

        with PeakMemory(proc.pid) as peak: proc.wait()
        peak.peak_tree.pss
    """

    def __init__(self, root_pid: int, *, interval: float = 0.25):
        self.root_pid = root_pid
        self.interval = interval
        self.samples = 0
        self._peak = {"tree": [0, 0, 0, 0], "workers": [0, 0, 0, 0]}
        self.per_worker: dict[int, tuple[str, int, int, int]] = {}  # Ray worker pid -> (name, peak uss, pss, rss)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        tree = [0, 0, 0, 0]
        workers = [0, 0, 0, 0]
        for proc in tree_processes(self.root_pid):
            m = _proc_memory(proc)
            if m is None:
                continue
            for i, v in enumerate((*m, 1)):
                tree[i] += v
            if is_ray_worker(proc):
                for i, v in enumerate((*m, 1)):
                    workers[i] += v
                try:
                    name = proc.name()
                except psutil.Error:
                    name = "?"
                prev = self.per_worker.get(proc.pid, (name, 0, 0, 0))
                self.per_worker[proc.pid] = (name, *(max(a, b) for a, b in zip(prev[1:], m)))
        for key, cur in (("tree", tree), ("workers", workers)):
            self._peak[key] = [max(a, b) for a, b in zip(self._peak[key], cur)]
        self.samples += 1

    def top_workers(self, count: int) -> list[MemorySample]:
        """The `count` Ray workers with the highest peak USS (the trials' workers), one sample each."""
        ranked = sorted(self.per_worker.values(), key=lambda w: w[1], reverse=True)[:count]
        return [MemorySample(uss=u, pss=p, rss=r, processes=1) for _, u, p, r in ranked]

    @property
    def peak_tree(self) -> MemorySample:
        return MemorySample(*self._peak["tree"])

    @property
    def peak_workers(self) -> MemorySample:
        return MemorySample(*self._peak["workers"])

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


def memory_dict(sample: MemorySample) -> dict:
    """MemorySample in MiB, for printing."""
    return {k: (mib(v) if k != "processes" else v) for k, v in asdict(sample).items()}


@contextlib.contextmanager
def stopwatch() -> Iterator[dict]:
    """with stopwatch() as t: ...; then t["seconds"] is the wall time (perf_counter)."""
    t: dict = {}
    start = time.perf_counter()
    try:
        yield t
    finally:
        t["seconds"] = time.perf_counter() - start


def finite_or_null(value):
    """`value` with every non-finite float (at any depth of dicts/lists/tuples) replaced by None."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def strict_json(value, **options) -> str:
    """json.dumps of `value` with non-finite figures as null, and allow_nan=False as the guarantee."""
    return json.dumps(finite_or_null(value), allow_nan=False, **options)


RESULT_PREFIX = ""  # the final line is a bare JSON object: `{"benchmark": ..., ...}`


def emit_result(name: str, figures: dict, *, machine: dict | None = None) -> dict:
    """Print the benchmark's one final JSON line (run_all.py parses it) and return the record."""
    record = {"benchmark": name, **figures}
    if machine is not None:
        record["machine"] = machine
    sys.stdout.flush()
    print(strict_json(record, sort_keys=False, default=str), flush=True)
    return record


def parse_result(stdout: str) -> dict | None:
    """The last line of `stdout` that parses as a JSON object, or None."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if not (line.startswith("{") and line.endswith("}")):
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def bench_env(**extra: str) -> dict:
    """Environment for a benchmarked `emmil` subprocess (DESIGN.md section 10 settings)."""
    env = dict(os.environ)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.update(extra)
    return env


def emmil_exe() -> str:
    """The `emmil` console script of this interpreter's environment."""
    candidate = Path(sys.executable).with_name("emmil")
    return str(candidate) if candidate.exists() else "emmil"


# ---------------------------------------------------------------------------------------------
# Data and experiment files shared by the harness benchmarks


def synthetic_data(name: str = "thumos14", *, dim: int, max_videos: int | None = None, seed: int = 0,
                   root: Path | None = None) -> Path:
    """A semi-synthetic dataset on disk (W-TALC layout), written once and reused by later benchmarks.

    Cached under `root` (default bench/out/data/) in a folder named by its parameters; a folder
    without SYNTHETIC.json (an interrupted write) is rewritten.
    """
    from emmil.data.synth import DEFAULT_GENERATOR, write_synthetic

    root = Path(root) if root is not None else out_dir("data")
    # the generator version is in the name: a cached v1 folder is never reused as v2
    folder = root / f"{name}-{DEFAULT_GENERATOR}-d{dim}-n{max_videos or 'all'}-s{seed}"
    if not any(folder.rglob("SYNTHETIC.json")):
        written = write_synthetic(name, folder, dim=dim, seed=seed, max_videos=max_videos)
        return Path(written) if written is not None else folder
    return folder


def write_experiment(path: Path, *, base: str = "table3", overrides: dict | None = None,
                     variants: list[str] | None = None) -> Path:
    """A copy of the shipped experiment `base` as `path` (its name = the file stem), with extra
    `overrides` shared by every variant (e.g. {"train.epochs": 4}) and optionally only `variants`.

    `emmil ablate` accepts a YAML path in place of an experiment name (harness/experiments.py).
    """
    import yaml

    from harness.experiments import experiment_path

    data = yaml.safe_load(experiment_path(base).read_text())
    data["name"] = path.stem
    data["overrides"] = {**(data.get("overrides") or {}), **(overrides or {})}
    if variants is not None:
        chosen = [v for v in data["variants"] if v["name"] in variants]
        if not chosen:
            raise ValueError(f"{base}: none of the variants {variants} exist")
        data["variants"] = chosen
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def ablate_command(experiment: str | Path, *, data_dir: Path, results: Path, seeds: int, max_concurrent: int,
                   cpus_per_trial: float, gpus_per_trial: float = 0.0, preset: str = "quick",
                   dataset: str = "thumos14", no_report: bool = True) -> list[str]:
    """The `emmil ablate` command line of docs/CONTRACTS.md / the issue (without the end-of-run report:
    building tables and plots is post-processing, not per-trial harness cost)."""
    return [
        emmil_exe(), "ablate", str(experiment), "--dataset", dataset, "--data-dir", str(data_dir),
        "--preset", preset, "--seeds", str(seeds), "--max-concurrent", str(max_concurrent),
        "--results", str(results), "--cpus-per-trial", f"{cpus_per_trial:g}",
        "--gpus-per-trial", f"{gpus_per_trial:g}", *(["--no-report"] if no_report else []),
    ]


@dataclass(frozen=True)
class CommandRun:
    seconds: float  # wall time from spawn to exit
    returncode: int
    start_unix: float  # time.time() at spawn
    log: str  # path of the combined stdout/stderr log


def run_command(cmd: list[str], *, log_path: Path, timeout: float, env: dict | None = None,
                interval: float = 0.25) -> tuple[CommandRun, "PeakMemory | None"]:
    """Run `cmd` with output to `log_path`; with interval > 0, sample its process tree's memory meanwhile
    (the PeakMemory is returned; None with interval 0, for timed runs that must not share the CPU).

    Raises RuntimeError (with the log's tail) when the command fails or times out.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        start_unix = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or bench_env(),
                                cwd=REPO, start_new_session=True)
        sampler = PeakMemory(proc.pid, interval=interval) if interval > 0 else None
        try:
            if sampler is not None:
                with sampler:
                    rc = proc.wait(timeout=timeout)
            else:
                rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 15)
            proc.wait()
            rc = -9
        seconds = time.perf_counter() - start
    run = CommandRun(seconds=seconds, returncode=rc, start_unix=start_unix, log=str(log_path))
    if rc != 0:
        tail = Path(log_path).read_text()[-3000:]
        raise RuntimeError(f"command failed (exit {rc}, {seconds:.0f} s): {' '.join(cmd)}\n--- {log_path} tail:\n{tail}")
    return run, sampler


_MATMUL_PROBE = (
    "import sys; sys.path.insert(0, sys.argv[1]); import torch; torch.set_num_threads(1); "
    "from bench.common import matmul_flops; print(matmul_flops(n=512, min_seconds=float(sys.argv[2]), repeats=1))"
)


def machine_parallelism(*, processes: int = 2, seconds: float = 1.5) -> float:
    """How many cores' worth of throughput `processes` concurrent single-thread processes get right now:
    sum of their 1-thread fp32 matmul rates / the rate of one process alone (2.0 = two free cores).

    A control for the scaling benchmark on a shared machine: other jobs or SMT siblings show up as a
    figure below `processes`, measured minutes apart from the ablations it qualifies.
    """
    def launch() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", _MATMUL_PROBE, str(REPO), str(seconds)],
                                stdout=subprocess.PIPE, text=True)

    alone = float(launch().communicate()[0].strip().splitlines()[-1])
    procs = [launch() for _ in range(processes)]
    together = sum(float(p.communicate()[0].strip().splitlines()[-1]) for p in procs)
    return together / alone
