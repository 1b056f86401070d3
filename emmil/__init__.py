"""EM-MIL (Luo et al., ECCV 2020): the method, in pure PyTorch + numpy.

This package must never import ray, optuna or mlflow (tests/test_layout.py checks it);
the adapters for those tools live in `harness/`.
"""

__version__ = "0.1.0"
