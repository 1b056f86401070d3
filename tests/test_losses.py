import math

import torch

from emmil.losses import attention_mil_loss, attention_mil_video_probs, pseudo_label_bce, video_classifier_loss
from emmil.model import make_packing


def test_eq4_eq6_bce_on_logits():
    # logits 0 -> prob 0.5: BCE = ln 2 whatever the target; logit ln(3) -> p=0.75, target 1 -> -ln 0.75
    one = make_packing([4])
    assert math.isclose(pseudo_label_bce(torch.zeros(4), torch.tensor([0.0, 1, 1, 0]), one).item(), math.log(2),
                        rel_tol=1e-6)
    l = torch.tensor([math.log(3.0), math.log(3.0)])
    # mean of -ln(0.75) (target 1) and -ln(0.25) (target 0)
    expected = (-math.log(0.75) - math.log(0.25)) / 2
    assert math.isclose(pseudo_label_bce(l, torch.tensor([1.0, 0.0]), make_packing([2])).item(), expected, rel_tol=1e-6)


def test_bce_weighs_every_video_alike():
    # Video A: 3 clips, logits ln 3 (p 0.75), targets 1 -> per-clip -ln 0.75 = 0.2877, video mean 0.2877.
    # Video B: 1 clip, logit ln 3, target 0 -> -ln 0.25 = 1.3863.
    # Per video, then over videos: (0.2877 + 1.3863) / 2 = 0.8370 (a mean over the 4 clips would give
    # (3 * 0.2877 + 1.3863) / 4 = 0.5623: the long video would count 3x).
    l = torch.full((4,), math.log(3.0))
    t = torch.tensor([1.0, 1.0, 1.0, 0.0])
    expected = (-math.log(0.75) - math.log(0.25)) / 2
    assert math.isclose(pseudo_label_bce(l, t, make_packing([3, 1])).item(), expected, rel_tol=1e-6)
    # (N, C) targets (Eq. 6): each video's mean runs over its clips AND classes. Video A (2 clips, C=2):
    # entries ln2, ln2, ln2, ln2 (logit 0) -> ln 2; video B (1 clip): logits ln 3 vs targets (1, 0) ->
    # (0.2877 + 1.3863) / 2 = 0.8370; loss = (ln 2 + 0.8370) / 2 = 0.7651.
    l2 = torch.tensor([[0.0, 0.0], [0.0, 0.0], [math.log(3.0), math.log(3.0)]])
    t2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert math.isclose(pseudo_label_bce(l2, t2, make_packing([2, 1])).item(), (math.log(2) + expected) / 2,
                        rel_tol=1e-6)


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


def test_video_classifier_loss_is_softmax_over_classes():
    # Logits 0 over 3 classes -> softmax 1/3 each. Video 0 labels {0, 1}: target (1/2, 1/2, 0) ->
    # -(ln(1/3)/2 + ln(1/3)/2) = ln 3. Video 1 labels {2}: -ln(1/3) = ln 3. Mean ln 3.
    y = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert math.isclose(video_classifier_loss(torch.zeros(2, 3), y).item(), math.log(3), rel_tol=1e-6)
    # Logits (ln 2, 0, 0) -> softmax (1/2, 1/4, 1/4); label {0} -> -ln(1/2) = ln 2; a video without
    # labels contributes 0 to the mean over 2 videos -> ln 2 / 2.
    logits = torch.tensor([[math.log(2.0), 0.0, 0.0], [5.0, 1.0, 0.0]])
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert math.isclose(video_classifier_loss(logits, y).item(), math.log(2) / 2, rel_tol=1e-6)
