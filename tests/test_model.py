import pytest
import torch

from emmil.model import EMMIL, LinearMeanGate, make_packing, packed_conv1d, segment_softmax


@pytest.mark.parametrize("k", [1, 3, 5])
def test_packed_conv_equals_conv1d_per_video_and_gradients(k):
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 4, k, padding=k // 2).double()
    lengths = [1, 2, 5, 3, 1]
    xs = [torch.randn(t, 6, dtype=torch.double) for t in lengths]
    packing = make_packing(lengths)
    out = packed_conv1d(torch.cat(xs), conv.weight, conv.bias, packing)
    ref = torch.cat([conv(x.T.unsqueeze(0))[0].T for x in xs])
    assert torch.allclose(out, ref, atol=1e-12)
    x = torch.cat(xs).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, w, b: packed_conv1d(a, w, b, packing), (x, conv.weight, conv.bias))


def test_padding_never_leaks_between_videos():
    conv = torch.nn.Conv1d(2, 3, 3, padding=1)
    x = torch.zeros(6, 2)
    x[3:] = 1e6  # second video huge: first video's output must not see it
    out = packed_conv1d(x, conv.weight, conv.bias, make_packing([3, 3]))
    assert torch.equal(out[:3], conv.bias.detach().expand(3, 3))


def test_segment_softmax_sums_to_one_per_video():
    w = segment_softmax(torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]), make_packing([2, 3]))
    assert torch.allclose(w, torch.tensor([0.5, 0.5, 1 / 3, 1 / 3, 1 / 3]))


def test_model_shapes_and_parameter_groups():
    m = EMMIL(8, 4, 5, hidden=6, cls_hidden=7)
    packing = make_packing([3, 2])
    s = m.scores(torch.randn(5, 12), packing)
    assert s["q_rgb"].shape == (5,) and s["p_flow"].shape == (5, 5) and s["video"].shape == (2, 5)
    assert m.key["rgb"].conv.weight.shape == (6, 8, 3) and m.key["flow"].conv.weight.shape == (6, 4, 3)
    ids = lambda ps: {id(p) for p in ps}
    assert not (ids(m.phi_parameters()) & ids(m.theta_parameters()))
    assert len(ids(m.phi_parameters()) | ids(m.theta_parameters()) | ids(m.gate_parameters())) == len(list(m.parameters()))


def test_linear_mean_gate_standardises_each_videos_mean_feature():
    # Video 0: clips [1, 2], [3, 4] -> mean [2, 3]; video 1: [0, 0], [2, 2], [4, 4] -> mean [2, 2].
    # mu = [2, 2.5], sd = [1, 0.5] -> z0 = [0, 1], z1 = [0, -1]. W = [[1, 0], [0, 2]], b = [0.5, -0.5]:
    # logits0 = [0 + 0.5, 2 - 0.5] = [0.5, 1.5]; logits1 = [0.5, -2 - 0.5] = [0.5, -2.5].
    gate = LinearMeanGate(2, 2)
    with torch.no_grad():
        gate.mu.copy_(torch.tensor([2.0, 2.5]))
        gate.sd.copy_(torch.tensor([1.0, 0.5]))
        gate.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        gate.fc.bias.copy_(torch.tensor([0.5, -0.5]))
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0], [2.0, 2.0], [4.0, 4.0]])
    out = gate(x, make_packing([2, 3]))
    torch.testing.assert_close(out, torch.tensor([[0.5, 1.5], [0.5, -2.5]]))
    assert {n for n, _ in gate.named_buffers()} == {"mu", "sd"}  # saved with the model, not trained


def test_emmil_builds_the_configured_gate_and_rejects_an_unknown_one():
    assert isinstance(EMMIL(3, 3, 2, gate="linear-mean").gate, LinearMeanGate)
    assert hasattr(EMMIL(3, 3, 2, gate="attention").gate, "att")
    with pytest.raises(ValueError, match="gate = 'topk'"):
        EMMIL(3, 3, 2, gate="topk")
