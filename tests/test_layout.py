"""The dependency rule of DESIGN.md section 2: the core never imports Ray, Optuna or MLflow."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import emmil

ROOT = Path(__file__).resolve().parents[1]


def test_importing_every_emmil_module_pulls_in_no_harness_tool():
    modules = [m.name for m in pkgutil.walk_packages(emmil.__path__, "emmil.")]
    assert "emmil.data.dataset" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('ray', 'optuna', 'mlflow'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"emmil imported: {out.stdout.strip()}"


def test_no_large_files_are_tracked():
    # A submission over the size limit does not land: generated data and runs stay out of git.
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    too_big = [f for f in files if (ROOT / f).is_file() and (ROOT / f).stat().st_size > 5 * 2**20]
    assert too_big == []
