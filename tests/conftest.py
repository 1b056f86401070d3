"""Fixtures shared by several test folders."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def template_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema created once (4-8 s) for the whole session; tests copy it."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path
