"""The long-sweep benchmark (issue 13) at CI size: 20 search trials, study and MLflow agree trial for
trial, none lost or duplicated. The RSS / fd slopes are benchmark figures (BENCHMARKS.md), not asserted."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.long_sweep import slope  # noqa: E402


def test_slope_is_the_least_squares_slope():
    # y = 2x + 1 exactly -> 2; a flat series with noise symmetric about x's mean -> 0; one point -> 0
    assert slope([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(2.0)
    assert slope([0, 1, 2], [5, 6, 5]) == pytest.approx(0.0)
    assert slope([4], [9]) == 0.0


@pytest.mark.slow
def test_twenty_trial_sweep_loses_nothing_and_agrees_with_mlflow():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "long_sweep.py"), "--trials", "20", "--quick"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert record["benchmark"] == "long_sweep" and record["trials"] == 20
    assert record["study_ended"] == 20 and record["mlflow_runs"] == 20
    assert record["lost"] == 0 and record["duplicated"] == 0 and record["agree"] is True
    assert record["samples"] > 0 and "semi-synthetic" in record["data"]
