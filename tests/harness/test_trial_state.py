"""The per-trial state file that a retried or resumed trial continues from (harness.ray_tune)."""

import pytest
import torch

from emmil.errors import ConfigError
from harness.ray_tune import read_trial_state, write_trial_state


def _blob(epoch):
    return {"state": {"epoch": epoch, "model": {"w": torch.ones(2) * epoch}}, "run_id": "r1", "report": {"epoch": epoch}}


def test_state_file_is_replaced_whole_and_may_be_newer_than_tunes_checkpoint(tmp_path):
    path = tmp_path / "trial-state" / "x_a-s0.pt"
    assert read_trial_state(path, 0) == {}  # a fresh trial
    write_trial_state(path, _blob(2))
    write_trial_state(path, _blob(3))
    assert list(path.parent.iterdir()) == [path]  # no temporary file left beside it
    blob = read_trial_state(path, 2)  # Tune restores epoch 2; the file already holds epoch 3
    assert blob["state"]["epoch"] == 3 and blob["run_id"] == "r1"
    assert torch.equal(blob["state"]["model"]["w"], torch.tensor([3.0, 3.0]))


def test_lost_stale_or_corrupt_state_file_is_a_clear_error(tmp_path):
    path = tmp_path / "s.pt"
    with pytest.raises(ConfigError, match="missing, but Tune restored this trial at epoch 4"):
        read_trial_state(path, 4)
    write_trial_state(path, _blob(2))
    with pytest.raises(ConfigError, match="holds epoch 2, older than the epoch 4"):
        read_trial_state(path, 4)
    path.write_bytes(path.read_bytes()[:50])  # truncated
    with pytest.raises(ConfigError, match="s.pt: unreadable trial state"):
        read_trial_state(path, 0)
