"""Losses: Eq. 4 / Eq. 6 (BCE against pseudo-labels), the softmax attention-MIL loss of the
"no pseudo-label" ablation (paper 4.3, UntrimmedNet/STPN style) and the gating classifier's loss.

All take LOGITS (the heads' pre-sigmoid outputs): BCE-with-logits is BCE on sigmoid(logits),
computed stably. Every loss weighs each VIDEO of a packed step alike (mean over a video's entries,
then over videos), as the release does with one video per step: see
emmil.pseudo_labels.per_video_mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from emmil.model import Packing, segment_softmax
from emmil.pseudo_labels import per_video_mean


def pseudo_label_bce(logits: torch.Tensor, target: torch.Tensor, packing: Packing) -> torch.Tensor:
    """Eq. 4 (logits (N,) of q_phi vs z_hat (N,)) and Eq. 6 (logits (N, C) of p_theta vs y_hat (N, C)):
    -t log sigmoid(l) - (1 - t) log(1 - sigmoid(l)), averaged over each video's entries, then over
    the videos of the batch.
    """
    if logits.shape != target.shape:
        raise ValueError(f"pseudo_label_bce: logits {tuple(logits.shape)} vs target {tuple(target.shape)}")
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return per_video_mean(bce, packing.seg, packing.num_videos)


def attention_mil_video_probs(key_logits: torch.Tensor, cls_logits: torch.Tensor, packing: Packing) -> torch.Tensor:
    """Soft-attention MIL pooling: a = softmax_t(key_logits) per video, video prob
    s_c = sum_t a_t * sigmoid(cls_logits_{t,c}) (Eq. 8 with sigma = attention-weighted sum).

    key_logits (N,), cls_logits (N, C) -> (B, C) in (0, 1).
    """
    att = segment_softmax(key_logits, packing)  # (N,)
    weighted = att.unsqueeze(1) * torch.sigmoid(cls_logits)  # (N, C)
    out = torch.zeros(packing.num_videos, cls_logits.shape[1], dtype=cls_logits.dtype, device=cls_logits.device)
    return out.index_add(0, packing.seg, weighted)


def attention_mil_loss(key_logits: torch.Tensor, cls_logits: torch.Tensor, y: torch.Tensor, packing: Packing) -> torch.Tensor:
    """BCE of the attention-pooled video probabilities against video labels y (B, C), over ALL classes
    of positive and negative videos alike (no special treatment of negative bags): the ablation's
    "normal attention MIL loss" (paper 4.3). The attention gets gradient from every class's score.
    """
    probs = attention_mil_video_probs(key_logits, cls_logits, packing).clamp(1e-6, 1 - 1e-6)
    return F.binary_cross_entropy(probs, y)


def video_classifier_loss(video_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gating classifier (UntrimmedNet / W-TALC style): softmax over classes against the video's
    label distribution y_c / sum_c y_c, i.e. -sum_c (y_c / |y|) log softmax(logits)_c, mean over
    videos. video_logits (B, C), y (B, C) multi-hot. A video without labels contributes 0 (and still
    counts in the mean: it carries no class evidence). The release gates on these softmax
    probabilities at 0.15 (emmil.localize.gate_classes)."""
    target = y / y.sum(dim=1, keepdim=True).clamp_min(1)  # (B, C) rows sum to 1 (or 0)
    return -(target * F.log_softmax(video_logits, dim=1)).sum(dim=1).mean()
