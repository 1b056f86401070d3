"""Fixtures shared by several test folders."""

import os
from pathlib import Path

# One torch thread in the test process and in every process it starts (CLI subprocesses, Ray workers
# inherit the variable): the tests train tiny models, where one thread is faster than two, and a
# 2-core CI machine shared with Ray, MLflow servers and subprocesses slows two spinning OpenMP
# threads down several-fold (test_full_quick_localises_far_better_than_random: 116 s in a loaded
# suite with two threads, 12 s with one). Set OMP_NUM_THREADS to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def template_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema created once (4-8 s) for the whole session; tests copy it."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path
