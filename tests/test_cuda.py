"""CUDA path of the core (issue 7). Skipped without a CUDA GPU; bench/gpu.sh runs them (`pytest -m cuda`)."""

import math

import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu.sh runs these)"),
]


@pytest.fixture(scope="module")
def tiny():
    from emmil.data.synth import make_synthetic

    # 16 videos of semi-synthetic THUMOS14 at 32 dims per stream: a few MB, trains in seconds.
    return make_synthetic("thumos14", dim=32, seed=0, max_videos=16)


def _quick(epochs: int, **extra):
    from emmil.config import resolve_config

    return resolve_config("thumos14", preset="quick", seed=0,
                          overrides={"device": "cuda", "train.epochs": epochs, **extra})


def test_dataset_tensor_lives_on_the_gpu(tiny):
    from emmil.train import dataset_tensor

    feats = dataset_tensor(tiny, torch.device("cuda"))
    assert feats.device.type == "cuda"
    assert feats.dtype == torch.float32
    assert tuple(feats.shape) == tiny.features.shape
    # One host->device copy of the same values.
    assert torch.equal(feats[:5].cpu(), torch.from_numpy(tiny.features[:5]))


def test_fit_allocates_the_whole_dataset_on_the_gpu(tiny):
    from emmil.train import fit

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    it = fit(_quick(2), tiny)
    first = next(it)  # the generator is suspended after epoch 1: its device tensors are alive
    during = torch.cuda.memory_allocated()
    assert during - before >= tiny.features.nbytes  # the (sum T_i, D) array was copied to the GPU
    assert all(p.device.type == "cuda" for p in first.model.parameters())
    for _ in it:
        pass


def test_core_trains_and_evaluates_on_cuda(tiny):
    from emmil.train import evaluate_test, fit

    results = list(fit(_quick(3), tiny))
    assert [r.epoch for r in results] == [1, 2, 3]
    assert all(math.isfinite(v) for r in results for v in r.losses.values())
    model = results[-1].model
    assert next(model.parameters()).device.type == "cuda"
    outcome = evaluate_test(_quick(3), tiny, model)
    assert 0.0 <= outcome.metrics["test_avg_mAP"] <= 1.0


def test_cuda_and_cpu_agree_on_one_epoch(tiny):
    from emmil.train import fit

    # Same seed, same batches: the first epoch's losses agree up to float32 reduction-order noise.
    gpu = next(iter(fit(_quick(1, **{"model.dropout": 0.0}), tiny))).losses
    cpu = next(iter(fit(_quick(1, **{"model.dropout": 0.0, "device": "cpu"}), tiny))).losses
    for key in gpu:
        assert gpu[key] == pytest.approx(cpu[key], rel=1e-3, abs=1e-5), key
