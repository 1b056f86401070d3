"""Shared fixtures of the harness tests: ONE Ray instance for the session (DESIGN.md section 10), one
template MLflow SQLite store copied per test, one tiny synthetic dataset."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Before Ray starts: every worker inherits these.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")

# Tiny trials: dim 8 features, a handful of videos, 3 epochs, narrow heads.
TINY = {"train.epochs": 3, "model.hidden": 8, "model.cls_hidden": 8, "train.batch_videos": 4}


@pytest.fixture(scope="session")
def ray_cluster():
    """A private local Ray with 2 CPUs and 4 LOGICAL GPUs (placement is testable without a GPU)."""
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False,
             object_store_memory=512 * 2**20, configure_logging=True, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_data():
    from emmil.data.synth import make_synthetic

    return make_synthetic("thumos14", dim=8, seed=0, max_videos=6)


@pytest.fixture
def results_dir(tmp_path, template_store) -> Path:
    """A results dir whose default store (mlflow.db) is a copy of the template."""
    out = tmp_path / "results"
    out.mkdir()
    shutil.copy(template_store, out / "mlflow.db")
    return out


def fresh_results(tmp_path_factory, template, name: str) -> Path:
    """A new results dir under a module-scoped temp folder, its mlflow.db a copy of the template (for
    tests that run several ablations, each in its own results dir)."""
    out = tmp_path_factory.mktemp(name) / "results"
    out.mkdir()
    shutil.copy(template, out / "mlflow.db")
    return out
