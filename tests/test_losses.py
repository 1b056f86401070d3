import math

import torch

from emmil.losses import attention_mil_loss, attention_mil_video_probs, pseudo_label_bce, video_classifier_loss
from emmil.model import make_packing


def test_eq4_eq6_bce_on_logits():
    # logits 0 -> prob 0.5: BCE = ln 2 whatever the target; logit ln(3) -> p=0.75, target 1 -> -ln 0.75
    assert math.isclose(pseudo_label_bce(torch.zeros(4), torch.tensor([0.0, 1, 1, 0])).item(), math.log(2), rel_tol=1e-6)
    l = torch.tensor([math.log(3.0), math.log(3.0)])
    # mean of -ln(0.75) (target 1) and -ln(0.25) (target 0)
    expected = (-math.log(0.75) - math.log(0.25)) / 2
    assert math.isclose(pseudo_label_bce(l, torch.tensor([1.0, 0.0])).item(), expected, rel_tol=1e-6)


def test_attention_mil_pooling_per_video():
    # video 0: key logits 0, ln 3 -> attention 1/4, 3/4; class probs sigmoid(0)=0.5, sigmoid(ln 3)=0.75
    #   -> video prob 0.25*0.5 + 0.75*0.75 = 0.6875.  video 1 (1 clip): attention 1, prob 0.5.
    key = torch.tensor([0.0, math.log(3.0), 5.0])
    cls = torch.tensor([[0.0], [math.log(3.0)], [0.0]])
    packing = make_packing([2, 1])
    probs = attention_mil_video_probs(key, cls, packing)
    assert torch.allclose(probs, torch.tensor([[0.6875], [0.5]]))
    y = torch.tensor([[1.0], [0.0]])
    expected = (-math.log(0.6875) - math.log(0.5)) / 2  # negative video 1 is pooled the same way
    assert math.isclose(attention_mil_loss(key, cls, y, packing).item(), expected, rel_tol=1e-6)


def test_attention_gets_gradient_from_all_classes():
    key = torch.zeros(3, requires_grad=True)
    cls = torch.tensor([[2.0, -1.0], [0.0, 0.0], [-2.0, 1.0]])
    y = torch.tensor([[0.0, 1.0]])  # class 0 absent but still shapes the attention
    attention_mil_loss(key, cls, y, make_packing([3])).backward()
    only_pos = key.detach().clone().requires_grad_()
    attention_mil_loss(only_pos, cls[:, 1:], y[:, 1:], make_packing([3])).backward()
    assert not torch.allclose(key.grad, only_pos.grad / 2)


def test_video_classifier_loss():
    assert math.isclose(video_classifier_loss(torch.zeros(2, 3), torch.ones(2, 3)).item(), math.log(2), rel_tol=1e-6)
