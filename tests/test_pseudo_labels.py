import torch

from emmil.model import make_packing
from emmil.pseudo_labels import all_positive_labels, e_step_labels, m_step_labels


def test_eq3_e_step_per_video_means_and_positive_classes_only():
    # video 0 (3 clips, label class 0): mean P_.,0 = (0.1+0.5+0.9)/3 = 0.5 -> only clip 2 (0.9) is above.
    #   class 1 is absent: its large scores (0.9 at clip 0) must not count.
    # video 1 (2 clips, labels {0,1}): means class0 (0.2+0.4)/2=0.3 -> clip 1; class1 (0.8+0.2)/2=0.5 -> clip 0.
    p = torch.tensor([[0.1, 0.9], [0.5, 0.1], [0.9, 0.1], [0.2, 0.8], [0.4, 0.2]])
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    seg = make_packing([3, 2]).seg
    assert e_step_labels(p, y, seg).tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]


def test_eq3_negative_bag_all_zero_and_constant_scores_give_zero():
    p = torch.tensor([[0.7, 0.2], [0.9, 0.3], [0.5, 0.5], [0.5, 0.5]])
    y = torch.tensor([[0.0, 0.0], [1.0, 0.0]])  # video 0 has no labels; video 1 is flat (not > mean)
    assert e_step_labels(p, y, make_packing([2, 2]).seg).tolist() == [0.0, 0.0, 0.0, 0.0]


def test_eq5_m_step_threshold_with_gamma():
    # video 0: Q = 0.1, 0.2, 0.9, 0.4: mean 0.4, max-min 0.8.
    #   gamma=0    -> threshold 0.4  -> clip 2 only (0.4 is not > 0.4)
    #   gamma=0.15 -> threshold 0.52 -> clip 2 only; gamma=0.5 -> 0.8 -> clip 2; gamma=0.7 -> 0.96 -> none
    # video 1: Q = 0.3, 0.6 (mean 0.45, range 0.3), gamma=0.15 -> 0.495 -> clip 1; label only class 1.
    q = torch.tensor([0.1, 0.2, 0.9, 0.4, 0.3, 0.6])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    seg = make_packing([4, 2]).seg
    out = m_step_labels(q, y, seg, 0.15)
    assert out.tolist() == [[0, 0], [0, 0], [1, 0], [0, 0], [0, 0], [0, 1]]
    assert m_step_labels(q, y, seg, 0.7)[:4].sum().item() == 0.0
    # gamma=0 on video 0 with Q=0.1,0.5,0.5,0.5: mean 0.4 -> three clips positive
    q2 = torch.tensor([0.1, 0.5, 0.5, 0.5, 0.3, 0.6])
    assert m_step_labels(q2, y, seg, 0.0)[:4, 0].tolist() == [0.0, 1.0, 1.0, 1.0]


def test_eq5_negative_bag_uniformly_negative_and_all_positive_init():
    q = torch.tensor([0.1, 0.9, 0.2, 0.8])
    y = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    seg = make_packing([2, 2]).seg
    assert m_step_labels(q, y, seg, 0.0)[:2].sum().item() == 0.0
    assert all_positive_labels(y, seg).tolist() == [[0, 0], [0, 0], [1, 1], [1, 1]]


def test_packing_does_not_mix_video_statistics():
    torch.manual_seed(0)
    lengths = [5, 1, 7]
    q = torch.rand(13)
    p = torch.rand(13, 3)
    y = torch.tensor([[1.0, 0, 1], [0, 1.0, 0], [1.0, 1.0, 0]])
    packed_m = m_step_labels(q, y, make_packing(lengths).seg, 0.15)
    packed_e = e_step_labels(p, y, make_packing(lengths).seg)
    start = 0
    for i, t in enumerate(lengths):
        sl = slice(start, start + t)
        alone = make_packing([t]).seg
        assert torch.equal(packed_m[sl], m_step_labels(q[sl], y[i : i + 1], alone, 0.15))
        assert torch.equal(packed_e[sl], e_step_labels(p[sl], y[i : i + 1], alone))
        start += t


def test_clip_labels_of_a_six_clip_video_with_one_segment():
    # Clip t covers [t, t+1) in clip units; segment (1.5, 3.2) of class 1 overlaps clips 1 ([1,2) by
    # 0.5), 2 (fully) and 3 ([3,4) by 0.2): rows 1-3 are 1 for class 1; clips 0, 4, 5 and class 0 are 0.
    from emmil.pseudo_labels import clip_labels

    out = clip_labels([(1.5, 3.2)], [1], num_clips=6, num_classes=2)
    assert out.tolist() == [[0, 0], [0, 1], [0, 1], [0, 1], [0, 0], [0, 0]]
    # A segment touching a clip boundary exactly does not label the clip it only touches: (2, 3) -> clip 2
    # alone; one running past the video end is clipped; a zero-length segment labels nothing.
    out = clip_labels([(2.0, 3.0), (4.5, 9.0), (1.0, 1.0)], [0, 1, 1], num_clips=6, num_classes=2)
    assert out.tolist() == [[0, 0], [0, 0], [1, 0], [0, 0], [0, 1], [0, 1]]


def test_per_video_mean_weighs_videos_alike():
    # video 0: rows (1, 3) -> mean over its 2 rows x 2 classes of [[1, 3], [1, 3]] = 2; video 1: [[10, 10]] -> 10.
    # Per video, then over videos: (2 + 10) / 2 = 6 (a mean over all 6 entries would give 28 / 6 = 4.67).
    from emmil.pseudo_labels import per_video_mean

    values = torch.tensor([[1.0, 3.0], [1.0, 3.0], [10.0, 10.0]])
    assert per_video_mean(values, make_packing([2, 1]).seg, 2).item() == 6.0
    assert per_video_mean(torch.tensor([1.0, 2.0, 6.0]), make_packing([3]).seg, 1).item() == 3.0
