"""Pseudo-labels of EM-MIL (paper Eq. 3 and Eq. 5) as pure tensor functions on packed batches.

Every mean / max / min is taken over the clips of ONE video (segment reductions over `seg`), so
packing several videos into one batch never mixes their statistics. Classes absent from a video
(y_c = 0) are 0 at every clip: negative bags are uniformly negative (the MIL assumption, paper 3.4).
"""

from __future__ import annotations

import numpy as np
import torch


def segment_mean(values: torch.Tensor, seg: torch.Tensor, num_videos: int) -> torch.Tensor:
    """Per-video mean over clips: values (N, K), seg (N,) -> (B, K)."""
    # one-hot (B, N) @ values (N, K): a tiny matmul, faster than index_add on CPU and deterministic
    onehot = torch.zeros(num_videos, seg.shape[0], dtype=values.dtype, device=values.device)
    onehot[seg, torch.arange(seg.shape[0], device=seg.device)] = 1.0
    counts = onehot.sum(dim=1, keepdim=True)  # (B, 1)
    return (onehot @ values) / counts.clamp_min(1)


def segment_extreme(values: torch.Tensor, seg: torch.Tensor, num_videos: int, reduce: str) -> torch.Tensor:
    """Per-video max ("amax") or min ("amin") over clips: values (N, K) -> (B, K)."""
    fill = float("-inf") if reduce == "amax" else float("inf")
    out = torch.full((num_videos, values.shape[1]), fill, dtype=values.dtype, device=values.device)
    index = seg.unsqueeze(1).expand_as(values)
    return out.scatter_reduce(0, index, values, reduce=reduce, include_self=True)


def e_step_labels(p: torch.Tensor, y: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Eq. 3: z_hat_t = 1 if sum_c 1(P_{t,c} > mean_{1:T} P_{.,c} and y_c = 1) > 0, else 0.

    p (N, C) classification probabilities of the frozen p_theta, y (B, C) video labels in {0,1},
    seg (N,) video of each clip -> z_hat (N,) float in {0, 1}. A video without labels gets all 0.
    """
    mean = segment_mean(p, seg, y.shape[0])  # (B, C)
    above = (p > mean[seg]) & (y[seg] > 0)  # (N, C)
    return above.any(dim=1).to(p.dtype)


def m_step_labels(q: torch.Tensor, y: torch.Tensor, seg: torch.Tensor, gamma: float) -> torch.Tensor:
    """Eq. 5: y_hat_{t,c} = 1 if y_c = 1 and Q_t > mean_{1:T} Q + gamma * (max_t Q - min_t Q), else 0.

    q (N,) key-instance probabilities of the frozen q_phi, y (B, C), seg (N,) -> y_hat (N, C).
    """
    b = y.shape[0]
    q2 = q.unsqueeze(1)  # (N, 1)
    threshold = segment_mean(q2, seg, b) + gamma * (
        segment_extreme(q2, seg, b, "amax") - segment_extreme(q2, seg, b, "amin")
    )  # (B, 1)
    key = (q2 > threshold[seg]).to(y.dtype)  # (N, 1)
    return key * y[seg]


def all_positive_labels(y: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Initial M step (paper 3.4): every clip of a positive bag is 1 for the bag's classes.

    y (B, C), seg (N,) -> (N, C) = y of each clip's video.
    """
    return y[seg]


def per_video_mean(values: torch.Tensor, seg: torch.Tensor, num_videos: int) -> torch.Tensor:
    """Mean over each video's entries, then over videos: values (N,) or (N, C) -> scalar.

    The release trains one video per step with losses averaged over time, so a step of B packed
    videos must weigh every video alike: a plain mean over packed rows would let a 2,000-clip video
    outweigh a 14-clip one ~140x. For B = 1 this is the plain mean.
    """
    rows = values if values.dim() == 1 else values.mean(dim=1)  # (N,) mean over classes
    return segment_mean(rows.unsqueeze(1), seg, num_videos).mean()


def clip_labels(segments: list[tuple[float, float]], classes: list[int], num_clips: int, num_classes: int) -> np.ndarray:
    """Ground-truth clip labels (T, C) in {0, 1}: clip t (covering [t, t+1) in clip units) is 1 for
    class c when it overlaps a segment (s, e) of c by a positive length, i.e. t < e and t + 1 > s.

    `segments` in clip units (seconds * 25 / 16), `classes` the class index of each segment. A
    zero-length segment labels nothing. The reference variants `supervised` and `oracle-key` train on it.
    """
    out = np.zeros((num_clips, num_classes), dtype=np.float32)
    for (s, e), c in zip(segments, classes):
        if e <= s:
            continue
        lo = max(0, int(np.floor(s)))
        hi = min(num_clips, int(np.ceil(e)))
        out[lo:hi, c] = 1.0
    return out
