"""Fault-injection suite (issue 6): shared fixtures and the `FAULTS:` lines in pytest's terminal summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from faultlib import RECORDS, kill_leftovers, rmtree, short_tmp


@pytest.fixture(scope="session")
def fault_data(tmp_path_factory) -> Path:
    """A semi-synthetic THUMOS14 folder, dim 8 per stream, 16 train + 16 test videos (W-TALC layout):
    enough for a held-out validation slice (2 videos at train.val_fraction=0.3) for sweeps."""
    from emmil.data.synth import write_synthetic

    return write_synthetic("thumos14", tmp_path_factory.mktemp("faultdata") / "data", dim=8, seed=0, max_videos=16)


@pytest.fixture
def ray_tmp():
    """A private, short Ray temp root for one test; whatever still runs under it is killed by pid."""
    path = short_tmp("rf")
    yield path
    kill_leftovers(str(path))
    rmtree(path)


def pytest_terminal_summary(terminalreporter):
    if RECORDS:
        terminalreporter.section("fault injection")
        for line in RECORDS:
            terminalreporter.write_line(line)
