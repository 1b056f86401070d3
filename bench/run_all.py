"""Run every benchmark of issue 7 end to end and collect their figures into bench/out/results.json.

Each benchmark is a script in bench/ that prints ONE final JSON line (bench/common.py emit_result);
this runs them one after another as subprocesses (so one's imports and memory never affect the next),
with a time limit each, and writes:
  bench/out/results.json   {"machine": {...}, "command": ..., "results": {name: figures | {"error": ...}}}
  bench/out/<name>.log     each script's full output
A failing benchmark is recorded with its error and the rest still run; the exit code is 1 if any failed.

Default sizes fit the whole suite in about 10 minutes on a 2-core CPU (semi-synthetic THUMOS14; the
harness benchmarks use the quick preset at dim 64, memory uses dim 256): see BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, bench_env, machine_description, out_dir, parse_result, strict_json  # noqa: E402

# name -> (script, arguments, time limit in seconds). Sizes chosen for ~10 minutes on 2 cores.
SUITE: dict[str, tuple[str, list[str], int]] = {
    "synth_speed": ("bench/synth_speed.py", [], 120),
    # --skip-official: the pandas official-structure reference alone takes minutes; the loop reference stays.
    "eval_speed": ("bench/eval_speed.py", ["--skip-official", "--repeat", "3"], 120),
    "train_speed": ("bench/train_speed.py", [], 240),
    "harness_overhead": ("bench/harness_overhead.py", ["--seeds", "1", "--max-concurrent", "2", "--epochs", "8"], 300),
    "memory": ("bench/memory.py", ["--dim", "256", "--epochs", "1", "--concurrency", "1", "2"], 300),
    "scaling": ("bench/scaling.py", ["--seeds", "3", "--max-videos", "60", "--epochs", "10"], 400),
}


def _floats(pattern: str, text: str) -> list[float] | None:
    m = re.search(pattern, text, re.MULTILINE)
    return [float(g) for g in m.groups()] if m else None


def _text_synth(text: str) -> dict:
    out = {}
    if (v := _floats(r"^total\s+([\d.]+) s", text)):
        out["total_seconds"] = v[0]
    if (v := _floats(r"^feature array\s+([\d.]+) GB", text)):
        out["array_gb"] = v[0]
    if (v := _floats(r"^peak RSS / array\s+([\d.]+)", text)):
        out["peak_rss_over_array"] = v[0]
    return out


def _text_eval(text: str) -> dict:
    out = {}
    for case in ("thumos14", "anet12"):
        m = re.search(rf"^{case}\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)",
                      text, re.MULTILINE)
        if m:
            keys = ("videos", "gt", "preds", "thresholds", "official_s", "loop_reference_s", "vectorised_s",
                    "ratio_vs_official", "ratio_vs_loop", "max_abs_dAP")
            out[case] = {k: (None if v == "nan" else float(v)) for k, v in zip(keys, m.groups())}
    return out


def _text_train(text: str) -> dict:
    out = {}
    m = re.search(r"^overall: executed ([\d.]+) GFLOP/s = ([\d.]+) x matmul", text, re.MULTILINE)
    if m:
        out["executed_gflops"], out["ratio_vs_matmul"] = float(m.group(1)), float(m.group(2))
    return out


# Scripts that print text rather than a final JSON line: figures pulled from their output (best effort;
# the full output is in bench/out/<name>.log and its last lines are kept in results.json).
TEXT_PARSERS = {"synth_speed": _text_synth, "eval_speed": _text_eval, "train_speed": _text_train}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=list(SUITE), help="run only these benchmarks")
    p.add_argument("--skip", nargs="+", choices=list(SUITE), default=[], help="skip these benchmarks")
    p.add_argument("--output", type=Path, default=None, help="results file (default bench/out/results.json)")
    p.add_argument("--list", action="store_true", help="print the suite and exit")
    return p.parse_args(argv)


def run_one(name: str, script: str, extra: list[str], limit: int, log_dir: Path) -> dict:
    """Run one benchmark script; its last JSON line, or {"error": ...}."""
    cmd = [sys.executable, script, *extra]
    log_path = log_dir / f"{name}.log"
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=bench_env(), capture_output=True, text=True, timeout=limit)
        output, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        output, rc = output + f"\n[run_all] timed out after {limit} s", None
    seconds = round(time.perf_counter() - start, 1)
    log_path.write_text(f"$ {' '.join(cmd)}\n{output}")
    tail = output.strip().splitlines()[-12:]
    if rc != 0:
        return {"error": f"exit {rc}" if rc is not None else f"timeout {limit} s", "tail": tail,
                "command": " ".join(cmd[1:]), "seconds": seconds}
    result = parse_result(proc.stdout)
    if result is None:  # a text-only script: its figures from the text, plus its last lines
        result = {"benchmark": name, **TEXT_PARSERS.get(name, lambda _: {})(proc.stdout), "output_tail": tail}
    result.pop("machine", None)  # recorded once at the top
    return {**result, "command": " ".join(cmd[1:]), "seconds": seconds}


def main(argv=None) -> int:
    args = parse_args(argv)
    names = [n for n in (args.only or list(SUITE)) if n not in args.skip]
    if args.list:
        for n in names:
            script, extra, limit = SUITE[n]
            print(f"{n:18s} python {script} {' '.join(extra)}   (limit {limit} s)")
        return 0
    log_dir = out_dir()
    output = args.output or log_dir / "results.json"
    report = {"machine": machine_description(), "command": "python bench/run_all.py " + " ".join(argv or sys.argv[1:]),
              "dataset": "semi-synthetic THUMOS14 (never real I3D features)", "results": {}}
    start = time.perf_counter()
    failed = []
    for name in names:
        script, extra, limit = SUITE[name]
        if not (REPO / script).exists():
            report["results"][name] = {"error": f"{script} does not exist yet"}
            failed.append(name)
            continue
        print(f"[run_all] {name}: python {script} {' '.join(extra)}", flush=True)
        res = run_one(name, script, extra, limit, log_dir)
        report["results"][name] = res
        if "error" in res:
            failed.append(name)
        print(f"[run_all] {name}: {strict_json(res, default=str)[:400]}", flush=True)
        # partial results survive a kill; strict: a child's line may carry NaN (json.loads reads it)
        output.write_text(strict_json(report, indent=2, default=str))
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    output.write_text(strict_json(report, indent=2, default=str))
    print(f"[run_all] {len(names) - len(failed)}/{len(names)} ok in {report['total_seconds']} s -> {output}")
    if failed:
        print(f"[run_all] failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
