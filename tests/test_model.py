import pytest
import torch

from emmil.model import EMMIL, make_packing, packed_conv1d, segment_softmax


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
