"""Adapters around the `emmil` core: Ray Tune (ray_tune.py), Optuna (optuna_search.py),
MLflow (tracking.py), and the `emmil` command line (cli/). One module per tool."""
