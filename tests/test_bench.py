"""The benchmark suite's own plumbing (issue 7): scripts parse, helpers measure what they claim.

The benchmarks themselves are run by bench/run_all.py and bench/gpu.sh, never as timed tests.
"""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402

SCRIPTS = ["run_all.py", "harness_overhead.py", "memory.py", "scaling.py", "gpu_bench.py", "paper_references.py",
           "gate_cv.py", "selection_sensitivity.py", "oracle_gate.py"]


def test_gpu_script_is_valid_bash():
    out = subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu.sh")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    help_text = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "--cpu-smoke" in help_text.stdout
    bad = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument --bogus" in bad.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_python_benchmarks_answer_help(script):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--help"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage:")


def test_run_all_lists_every_issue_7_benchmark():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--list"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert names == ["synth_speed", "eval_speed", "train_speed", "harness_overhead", "memory", "scaling"]


def test_parse_result_takes_the_last_json_object_line():
    text = 'progress 1\n{"benchmark": "a", "x": 1}\n[1, 2]\n{"benchmark": "b", "x": 2}\nbye\n{broken\n'
    # The last line that is a JSON object is the "b" line: the list and the broken line are not objects.
    assert common.parse_result(text) == {"benchmark": "b", "x": 2}
    assert common.parse_result("no json here\n") is None
    assert common.parse_result("") is None


def test_emit_result_prints_one_parseable_line(capsys):
    record = common.emit_result("demo", {"ratio": 0.5})
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line) == record == {"benchmark": "demo", "ratio": 0.5}


def test_matmul_flops_is_a_positive_rate():
    rate = common.matmul_flops(n=64, min_seconds=0.01, repeats=1)
    # 2 * 64^3 = 524288 FLOP per product; any real machine does at least 1e6 FLOP/s.
    assert 1e6 < rate < 1e16


# A parent writes every page of a 48 MiB SHARED anonymous mapping, forks, and the child reads every page:
# both map the same 48 MiB. RSS counts it once per process (2 x 48), PSS once in total (48/2 each),
# USS not at all (no page is private to either process).
_SHARED_PAGES = textwrap.dedent(
    """
    import mmap, os, sys, time
    n = 48 * 2**20
    m = mmap.mmap(-1, n, flags=mmap.MAP_SHARED)
    for i in range(0, n, 4096):
        m[i] = 1
    r, w = os.pipe()
    if os.fork() == 0:
        s = sum(m[i] for i in range(0, n, 4096))
        os.write(w, b"x")
        time.sleep(30)
        os._exit(0)
    os.read(r, 1)
    print("ready", flush=True)
    time.sleep(30)
    """
)


def test_tree_memory_counts_shared_pages_once_in_pss_and_twice_in_rss():
    proc = subprocess.Popen([sys.executable, "-c", _SHARED_PAGES], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        both = common.tree_memory(proc.pid)
        alone = common.tree_memory(proc.pid, select=lambda p: p.pid == proc.pid)
    finally:
        for child in common.tree_processes(proc.pid, include_root=False):
            child.kill()
        proc.kill()
        proc.wait()
    shared = 48 * 2**20
    assert both.processes == 2 and alone.processes == 1
    assert both.rss - both.pss > 0.9 * shared  # RSS: the 48 MiB twice; PSS: once
    assert both.pss - both.uss > 0.9 * shared  # the shared pages are in PSS, not in USS
    # Each process is charged half of the mapping (plus its share of the library pages it shares after fork).
    assert 0.45 * shared < alone.pss - alone.uss < 0.75 * shared


def test_peak_memory_sampler_keeps_the_maximum():
    proc = subprocess.Popen([sys.executable, "-c",
                             "import time; b = b\"x\" * (64 * 2**20); time.sleep(0.8); del b; time.sleep(0.8)"])
    with common.PeakMemory(proc.pid, interval=0.05) as peak:
        proc.wait()
    # The 64 MiB bytes object (filled with "x", so every page is touched: private pages) was alive for 0.8 s.
    assert peak.samples >= 5
    assert peak.peak_tree.uss > 64 * 2**20
    assert peak.peak_workers.processes == 0  # no Ray worker in this tree


def test_memory_growth_per_extra_trial():
    from bench.memory import growth_per_trial

    # Peaks 100 (1 trial), 150 (2), 250 (4): (250 - 100) / (4 - 1) = 50 per extra trial.
    assert growth_per_trial({1: 100, 2: 150, 4: 250}) == 50
    assert growth_per_trial({1: 100}) is None


def test_nvidia_smi_summary(tmp_path):
    from bench.gpu_bench import summarise_nvidia_smi

    log = tmp_path / "smi.csv"
    log.write_text("2026/01/01 00:00:00.000, 0, 0, 500\n"
                   "2026/01/01 00:00:00.500, 0, 50, 9000\n"
                   "2026/01/01 00:00:01.000, 0, 100, 12000\n"
                   "2026/01/01 00:00:01.500, 0, [N/A], [N/A]\n")
    # Three valid samples: mean (0 + 50 + 100) / 3 = 50, max 100, two of three busy, memory max 12000.
    assert summarise_nvidia_smi(log) == {"samples": 3, "util_mean_pct": 50.0, "util_max_pct": 100.0,
                                         "busy_fraction": 0.667, "memory_used_max_mib": 12000.0}


def test_gpu_bench_train_cpu_smoke(tmp_path):
    from emmil.data.synth import write_synthetic

    data = write_synthetic("thumos14", tmp_path / "data", dim=8, seed=0, max_videos=12)
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_bench.py"), "train", "--data-dir", str(data), "--device", "cpu",
         "--preset", "quick", "--epochs", "1", "--matmul-n", "128", "--step-repeats", "1", "--compile", "off",
         "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["benchmark"] == "gpu_train" and result["device"] == "cpu" and result["epochs"] == 1
    assert result["seconds_per_run"] > 0 and result["run_flop"] > 0
    # ratio = FLOP / seconds / matmul rate (the printed figures are rounded: 5% slack)
    expected = result["run_flop"] / result["seconds_per_run"] / result["matmul_flops_per_s"]["fp32"]
    assert result["ratio_vs_fp32_matmul"] == pytest.approx(expected, rel=0.05), (result, expected)
    assert result["step"]["fp32_ms"] > 0
    assert time.perf_counter() - start < 90


def test_packing_quick_mode(tmp_path):
    # bench/packing.py --part train --quick: fit, a pack of 2, fit again; throughput and memory figures.
    from emmil.data.synth import write_synthetic

    data = write_synthetic("thumos14", tmp_path / "data", dim=32, seed=0, max_videos=24)
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "packing.py"), "--part", "train", "--quick",
                          "--data-dir", str(data)], capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    result = common.parse_result(out.stdout)
    assert result["benchmark"] == "packing" and result["quick"] is True
    throughput = result["train"]["throughput"]
    runs = throughput["runs"]
    # fit, pack2, fit: a pack between two fit runs
    assert list(runs) == ["fit", "pack2"] and len(runs["fit"]) == 2 and runs["pack2"]["members"] == 2
    for r in [*runs["fit"], runs["pack2"]]:  # executed FLOP/s / the best matmul reading (3 decimals kept)
        assert r["ratio_vs_matmul"] == pytest.approx(r["executed_gflop_per_s"] / throughput["matmul_gflop_per_s"],
                                                     rel=0.02, abs=6e-4)
    around = (runs["fit"][0]["ratio_vs_matmul"] + runs["fit"][1]["ratio_vs_matmul"]) / 2
    assert throughput["ratio_over_fit"]["pack2"] == pytest.approx(runs["pack2"]["ratio_vs_matmul"] / around, rel=0.01)
    mem = result["train"]["memory"]["runs"]
    assert mem["pack2"]["peak_uss_per_member_mib"] == pytest.approx(mem["pack2"]["peak_uss_mib"] / 2, abs=0.1)
    assert all(r["peak_uss_mib"] >= r["loaded_uss_mib"] > 0 for r in mem.values())


def test_packing_harness_quick_mode():
    # bench/packing.py --part harness --quick: Table 3 x 2 seeds bare, then `emmil ablate --pack 1` and
    # `--pack 2`; the ratios are computed from the walls it reports, and every trial has its run
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "packing.py"), "--part", "harness", "--quick"],
                         capture_output=True, text=True, cwd=ROOT, timeout=420)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-2000:])
    h = common.parse_result(out.stdout)["harness"]
    assert h["trials"] == 8 and h["seeds"] == 2 and h["child_runs_pack1"] == h["child_runs_pack2"] == 8
    for k in (1, 2):
        assert h[f"overhead_ratio_pack{k}"] == pytest.approx(h[f"wall_seconds_pack{k}"] / (h["bare_sum_seconds"] / 2),
                                                            rel=0.01)
    assert h["pack_speedup"] == pytest.approx(h["wall_seconds_pack1"] / h["wall_seconds_pack2"], rel=0.01)


def test_gpu_collect_gathers_what_the_steps_left(tmp_path):
    # what gpu.sh leaves: step statuses, harness walls, progress lines (a timed-out search finished 3 of
    # 8 packs), a utilisation summary; no train JSON (that step failed)
    (tmp_path / "steps.tsv").write_text("pytest_cuda\t0\t20\ntrain\t1\t5\nablate\t0\t100\nablate_packed\t0\t40\n"
                                        "search_packed\t124\t80\n")
    (tmp_path / "walls.tsv").write_text("ablate\t100\nablate_packed\t40\nsearch_packed\t80\n")
    (tmp_path / "pytest_cuda.log").write_text("...\n6 passed in 9.1s\n")
    (tmp_path / "ablate.log").write_text("[1/20] trial table3/full-s0 done  trial 5.0s\n"
                                         "[2/20] trial table3/full-s1 done  trial 5.1s\n")
    (tmp_path / "ablate_packed.log").write_text("".join(f"[{i}/4] pack table3/pack-{i} done\n" for i in range(1, 5)))
    (tmp_path / "search_packed.log").write_text("[1/8] search pack s/search/pack-a done\n"
                                                "[2/8] search pack s/search/pack-b stopped early\n"
                                                "[3/8] search pack s/search/pack-c done\n  search pack x: failed\n")
    (tmp_path / "gpu_util_search.json").write_text(json.dumps(
        {"samples": 10, "util_mean_pct": 41.5, "util_max_pct": 97.0, "memory_used_max_mib": 5120.0}))
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_bench.py"), "collect", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "gpu_results.json").read_text())
    assert res["steps"]["search_packed"] == {"exit": 124, "seconds": 80} and res["smoke"] is False
    assert (res["ablate"]["finished"], res["ablate"]["total"]) == (2, 20)
    assert (res["ablate_packed"]["finished"], res["ablate_packed"]["total"]) == (4, 4)
    assert res["ablate_packed"]["wall_ratio_unpacked_over_packed"] == 2.5  # 100 s / 40 s
    assert (res["search_packed"]["finished"], res["search_packed"]["total"]) == (3, 8)
    assert res["search_packed"]["gpu_util"]["util_mean_pct"] == 41.5 and "gpu_train" not in res
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 5 and lines[0] == "pytest_cuda: exit 0 after 20 s; 6 passed in 9.1s"
    assert lines[3] == "ablate_packed: exit 0 after 40 s; 4/4 packs finished; unpacked/packed wall 2.5"
    assert lines[4].startswith("search_packed: exit 124 after 80 s; 3/8 search packs finished; GPU util mean 41.5 %")


def test_paper_references_records_outlive_a_run(tmp_path):
    # bench/paper_references.py --quick: the references experiment (7 rows x 1 seed) as one record per
    # finished trial; a second run trains nothing; a record whose config is not what the code resolves
    # for its trial is refused by name, so a table never mixes configurations.
    from emmil.data.synth import write_synthetic

    data = write_synthetic("thumos14", tmp_path / "data", dim=8, seed=0, max_videos=12)
    records = tmp_path / "records"
    cmd = [sys.executable, str(ROOT / "bench" / "paper_references.py"), "run", "--quick", "--data-dir", str(data),
           "--records", str(records), "--runs", str(tmp_path / "runs")]
    # another live process (this one) holds joint-s0's lock: the run trains the other six
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "joint-s0.lock").write_text(f"{os.getpid()}\n")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-2000:])
    assert "skip joint-s0: another run" in out.stdout
    variants = ["attention-mil", "full", "joint", "no-pseudo-label", "oracle-key", "supervised", "whole-video"]
    assert sorted(p.stem for p in records.glob("*.json")) == sorted(f"{v}-s0" for v in variants if v != "joint")
    # a lock whose process is gone is taken over
    (tmp_path / "runs" / "joint-s0.lock").write_text("999999999\n")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0 and "6 of 7 trials have records" in out.stdout and "start joint-s0" in out.stdout
    assert sorted(p.stem for p in records.glob("*.json")) == sorted(f"{v}-s0" for v in variants)
    assert not list((tmp_path / "runs").glob("*.lock"))
    rec = json.loads((records / "full-s0.json").read_text())
    assert rec["data"]["generator"] == "v2" and rec["data"]["dim"] == 8 and rec["params"]["train.epochs"] == "2"
    assert 0.0 <= rec["metrics"]["test_avg_mAP"] <= 1.0 and len(rec["history"]) == 2
    tables = (records / "TABLES.md").read_text()
    assert "7 of 7 trials" in tables and "ceiling: supervised" in tables and "floor: whole-video" in tables
    assert "fraction of ceiling" in tables and "gate cls mAP" in tables

    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0 and "7 of 7 trials have records" in again.stdout and "start " not in again.stdout

    joint = json.loads((records / "joint-s0.json").read_text())
    joint["config_hash"] = "0" * 12
    (records / "joint-s0.json").write_text(json.dumps(joint))
    bad = subprocess.run([*cmd[:2], "table", *cmd[3:]], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and "joint-s0.json" in bad.stderr and "configuration changed" in bad.stderr


def test_oracle_gate_reproduces_the_run_then_gates_by_the_labels(tmp_path):
    # bench/oracle_gate.py: with the run's own gate it gives the run's reported test mAP to the bit; with
    # the ground-truth labels as the gate only true classes are localised.
    from bench.oracle_gate import oracle_gate_metrics
    from emmil.config import resolve_config
    from emmil.data.synth import make_synthetic
    from emmil.train import dataset_tensor, train_run

    data = make_synthetic("thumos14", dim=8, seed=0, max_videos=12)
    cfg = resolve_config("thumos14", preset="quick", variant="full", overrides={"train.epochs": 2, "train.gate_epochs": 2})
    metrics = train_run(cfg, data, tmp_path / "run", progress=False, device="cpu")
    out = oracle_gate_metrics(tmp_path / "run", data, dataset_tensor(data, "cpu"))
    assert out["gate"]["test_avg_mAP"] == metrics["test_avg_mAP"] == out["reported_test_avg_mAP"]
    assert out["gate"]["test_mAP_0.50"] == metrics["test_mAP_0.50"]
    # the localiser values the run used on test (chosen on held-out videos, else the config's)
    assert out["lam"] == metrics.get("selected_lam", cfg.localize.lam)
    assert out["gate_threshold"] == metrics.get("selected_gate", cfg.localize.gate)
    assert 0.0 <= out["oracle"]["test_avg_mAP"] <= 1.0 and out["oracle"] != out["gate"]


def test_gate_cv_quick_reads_only_training_videos(tmp_path, monkeypatch):
    # bench/gate_cv.py --quick: one row per fit, mAPs in [0, 1], and no test video ever reaches a fit
    # (features_of is watched); a bad --l2 is exit 2.
    import bench.gate_cv as gate_cv
    from emmil.data.dataset import Dataset

    seen = []
    real = Dataset.features_of
    monkeypatch.setattr(Dataset, "features_of", lambda self, v: seen.append(v.subset) or real(self, v))
    out = tmp_path / "cv.json"
    assert gate_cv.main(["--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["fit"].split()[0] for r in result["rows"]] == ["convex", "convex-raw", "adam-video", "adam-video",
                                                              "adam-full", "adam-full"]
    assert all(0.0 <= r["cv_cls_mAP"] <= 1.0 for r in result["rows"])
    assert seen and set(seen) == {"validation"}  # THUMOS14's training split; 'test' never read
    assert gate_cv.main(["--quick", "--l2", "x"]) == 2


def test_selection_sensitivity_reproduces_the_runs_choice_and_refuses_another_run(tmp_path, monkeypatch, capsys):
    # bench/selection_sensitivity.py --quick trains one run, re-scores it at every grid point, and the
    # held-out best point must be the run's own choice with the run's reported test mAP (checked inside:
    # exit 0 means it reproduced). A metrics.json that the model does not give is refused (exit 2).
    import bench.selection_sensitivity as sensitivity
    from emmil.train import SELECTION_GRID

    monkeypatch.setenv("OUT", str(tmp_path))
    out = tmp_path / "sens.json"
    assert sensitivity.main(["--quick", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["runs"][0]
    metrics = json.loads((Path(row["run"]) / "metrics.json").read_text())
    assert (row["chosen"]["lam"], row["chosen"]["gate"]) == (metrics["selected_lam"], metrics["selected_gate"])
    assert row["chosen"]["test_avg_mAP"] == metrics["test_avg_mAP"]
    assert len(row["grid"]) == len(SELECTION_GRID["lam"]) * len(SELECTION_GRID["gate"])  # the configured values are grid points
    # the held-out value of the chosen point is the one the run recorded when it chose
    assert row["chosen"]["val_avg_mAP"] == metrics["val_selected_avg_mAP"] == max(g["val_avg_mAP"] for g in row["grid"])
    assert sorted(map(float, row["test_avg_mAP_by_lam_at_chosen_gate"])) == list(SELECTION_GRID["lam"])

    metrics["test_avg_mAP"] += 0.01
    (Path(row["run"]) / "metrics.json").write_text(json.dumps(metrics))
    capsys.readouterr()
    assert sensitivity.main(["--quick"]) == 2
    assert "does not reproduce the run" in capsys.readouterr().err
