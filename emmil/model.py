"""The two-stream EM-MIL model on PACKED batches.

Per stream s in {rgb, flow} (paper section 3; architecture of the authors' release):
  key-instance head   q_phi^s:   Conv1d(D_s -> H, k, same pad) -> ReLU -> Dropout -> Linear(H -> 1) -> sigmoid = Q_t
  classification head p_theta^s: Conv1d(D_s -> H, k, same pad) -> ReLU -> Dropout -> Linear(H -> C) -> sigmoid = P_{t,c}
phi = both key heads, theta = both classification heads. Heads return LOGITS; the sigmoid is applied
by the losses (BCE-with-logits, numerically stable) and by `scores()`.

Plus the video-level gating classifier (paper 3.5: "a plain UntrimmedNet with soft attentions"):
  h_t = ReLU(W x_t), class logits s_{t,c}, attention logits a_t; video logit_c = sum_t softmax_t(a)_t s_{t,c}.

Packing: a batch is the clips of several videos stacked into one (N, D) matrix. The k-tap conv
is ONE matmul X @ [W_0 | ... | W_{k-1}] (N, k*H) followed by shifted sums whose taps are zeroed
where they would cross a video boundary, so the result equals nn.Conv1d run on each video alone
(zero padding) while the matmul is large enough to run at the machine's matmul rate.
grouped_packed_conv1d does the same for several models at once (emmil.packed): each its own matmul,
the shifted sums over all their rows in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

STREAMS = ("rgb", "flow")


@dataclass(frozen=True)
class Packing:
    """Where each packed row comes from. N = total clips, B = videos in the batch."""

    seg: torch.Tensor  # (N,) long: video index in the batch, 0..B-1, non-decreasing
    pos: torch.Tensor  # (N,) long: clip index inside its video
    length: torch.Tensor  # (N,) long: T of the row's video
    lengths: torch.Tensor  # (B,) long: T per video
    num_videos: int  # B

    @property
    def num_rows(self) -> int:
        return int(self.seg.shape[0])


def make_packing(lengths: list[int] | torch.Tensor, device: torch.device | str = "cpu") -> Packing:
    """Packing of videos with T_i = lengths[i] clips stacked in order (every T_i >= 1)."""
    lengths_t = torch.as_tensor(lengths, dtype=torch.long, device=device)
    if lengths_t.numel() == 0:
        raise ValueError("make_packing: empty batch (no videos)")
    if bool((lengths_t < 1).any()):
        raise ValueError(f"make_packing: every video needs >= 1 clip, got lengths {lengths_t.tolist()}")
    b = int(lengths_t.numel())
    seg = torch.repeat_interleave(torch.arange(b, device=device), lengths_t)  # (N,)
    starts = torch.cumsum(lengths_t, 0) - lengths_t  # (B,) first row of each video
    pos = torch.arange(seg.numel(), device=device) - starts[seg]  # (N,)
    return Packing(seg=seg, pos=pos, length=lengths_t[seg], lengths=lengths_t, num_videos=b)


def _edge_rows(packing: Packing, pad: int) -> torch.Tensor:
    """(R,) rows within `pad` clips of their video's start or end (the only rows a tap can cross at)."""
    return torch.nonzero((packing.pos < pad) | (packing.pos >= packing.length - pad)).squeeze(1)


def _shift_sum(y: torch.Tensor, h: int, k: int, sign: int, packing: Packing, bias: torch.Tensor | None) -> torch.Tensor:
    """out[t] = (bias) + sum_j y[t + sign*off_j, block j] over taps whose row is in t's own video.

    y (N, k*H) -> (N, H); bias (H,) or (N, H) (a row each: members of a pack have their own biases).
    sign=+1 is the conv forward; sign=-1 with the blocks read in reverse is its transpose (the backward).
    Whole-slice adds first, then the edge rows are recomputed exactly.
    """
    n = y.shape[0]
    pad = k // 2
    centre = y[:, pad * h : (pad + 1) * h]
    out = centre + bias if bias is not None else centre.clone()
    offsets = [sign * (j - pad) for j in range(k)]
    for j, off in enumerate(offsets):
        if off > 0:
            out[: n - off] += y[off:, j * h : (j + 1) * h]
        elif off < 0:
            out[-off:] += y[: n + off, j * h : (j + 1) * h]
    if pad == 0:
        return out
    edge = _edge_rows(packing, pad)
    fixed = y[edge, pad * h : (pad + 1) * h]
    if bias is not None:
        fixed = fixed + (bias[edge] if bias.dim() == 2 else bias)  # (N, H) bias: one row per packed row
    pos, length = packing.pos[edge], packing.length[edge]
    for j, off in enumerate(offsets):
        if off == 0:
            continue
        valid = ((pos + off >= 0) & (pos + off < length)).unsqueeze(1).to(y.dtype)  # (R, 1)
        fixed = fixed + y[(edge + off).clamp(0, n - 1), j * h : (j + 1) * h] * valid
    out[edge] = fixed
    return out


def _shift_sum_grad(grad_out: torch.Tensor, h: int, k: int, packing: Packing) -> torch.Tensor:
    """The gradient of _shift_sum's input y (N, k*H) from grad_out (N, H), contiguous: grad_y[r, block j]
    = grad_out[r - off_j] if row r - off_j reads row r inside one video, else 0. Copies and selects
    only (exact), so it may run over the rows of all members of a pack at once."""
    pad = k // 2
    n = grad_out.shape[0]
    grad_y = torch.zeros(n, k * h, dtype=grad_out.dtype, device=grad_out.device)
    for j in range(k):
        off = j - pad
        block = grad_y[:, j * h : (j + 1) * h]
        if off == 0:
            block.copy_(grad_out)
        elif off > 0:
            block[off:] = grad_out[: n - off]
        else:
            block[: n + off] = grad_out[-off:]
    if pad:
        edge = _edge_rows(packing, pad)
        pos, length = packing.pos[edge], packing.length[edge]
        for j in range(k):
            off = j - pad
            if off == 0:
                continue
            # row r = edge is read through tap j by row r - off; invalid if that row is outside r's video
            invalid = ((pos - off < 0) | (pos - off >= length)).unsqueeze(1)
            rows = edge
            block = grad_y[rows, j * h : (j + 1) * h]
            grad_y[rows, j * h : (j + 1) * h] = torch.where(invalid, torch.zeros_like(block), block)
    return grad_y


class _PackedConv1d(torch.autograd.Function):
    """Autograd for packed_conv1d with hand-written backward: grad_y is the transposed shift of
    grad_out (no full-size zero buffers per tap), grad_W = x^T grad_y is one matmul."""

    @staticmethod
    def forward(ctx, x, weight, bias, packing_pos, packing_length, packing):
        h, d, k = weight.shape
        w = weight.permute(1, 2, 0).reshape(d, k * h)  # (D, k*H): column block j = W[:, :, j]^T
        y = x @ w  # (N, k*H): the one big matmul
        ctx.save_for_backward(x, w)
        ctx.packing, ctx.shape, ctx.has_bias = packing, (h, d, k), bias is not None
        return _shift_sum(y, h, k, +1, packing, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, w = ctx.saved_tensors
        h, d, k = ctx.shape
        grad_out = grad_out.contiguous()
        grad_y = _shift_sum_grad(grad_out, h, k, ctx.packing)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y @ w.t()
        if ctx.needs_input_grad[1]:
            grad_w = (x.t() @ grad_y).reshape(d, k, h).permute(2, 0, 1)  # back to (H, D, k)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(0)
        return grad_x, grad_w, grad_b, None, None, None


def packed_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, packing: Packing) -> torch.Tensor:
    """nn.Conv1d(D, H, k, padding=k//2) applied to every packed video separately.

    x (N, D), weight (H, D, k) as nn.Conv1d stores it, bias (H,) -> (N, H).
    out[t] = b + sum_j W_j^T x[t + j - k//2]; taps outside the row's own video are zero (zero padding).
    One matmul X @ [W_0 | ... | W_{k-1}] (N, k*H), then shifted slice sums; the few rows within k//2
    of a video boundary are recomputed exactly from their valid taps, so nothing leaks across videos.
    """
    return _PackedConv1d.apply(x, weight, bias, packing.pos, packing.length, packing)


# PyTorch's CPU allocator starts every tensor on a 64-byte boundary. Small BLAS products depend on where
# their operands start (measured: (N, 13) @ (13, 1) from an offset slice differs in the last bit), so a
# pack member's rows of a shared buffer are fed to BLAS from the alignment its run alone would have.
ALIGNMENT = 64  # bytes


def aligned(t: torch.Tensor) -> torch.Tensor:
    """`t` if its data starts on an ALIGNMENT boundary, else a contiguous copy that does."""
    return t if t.data_ptr() % ALIGNMENT == 0 else t.clone(memory_format=torch.contiguous_format)


class _GroupedPackedConv1d(torch.autograd.Function):
    """Autograd for grouped_packed_conv1d: member m's rows are rows [a_m, a_m + N_m) of the packing.
    Inputs (after packing, m): xs (m tensors), weights (m), biases (m)."""

    @staticmethod
    def forward(ctx, packing, m, *tensors):
        xs, weights, biases = tensors[:m], tensors[m : 2 * m], tensors[2 * m :]
        h, d, k = weights[0].shape
        sizes = [int(x.shape[0]) for x in xs]
        ws = [w.permute(1, 2, 0).reshape(d, k * h) for w in weights]  # (D, k*H) each, as _PackedConv1d
        y = xs[0].new_empty(sum(sizes), k * h)
        for x, w, rows in zip(xs, ws, torch.split(y, sizes)):
            torch.mm(x, w, out=rows)  # each member's own matmul, at the shape of its run alone
        # (N, H): each member's bias on its rows; one member adds its (H,) bias as packed_conv1d does
        bias_rows = biases[0] if m == 1 else torch.cat([b.expand(n, h) for b, n in zip(biases, sizes)])
        ctx.save_for_backward(*xs, *ws)
        ctx.packing, ctx.shape, ctx.sizes, ctx.m = packing, (h, d, k), sizes, m
        return _shift_sum(y, h, k, +1, packing, bias_rows)  # one pass over every member's rows

    @staticmethod
    def backward(ctx, grad_out):
        m, sizes = ctx.m, ctx.sizes
        saved = ctx.saved_tensors
        xs, ws = saved[:m], saved[m:]
        h, d, k = ctx.shape
        grad_out = grad_out.contiguous()
        grad_y = _shift_sum_grad(grad_out, h, k, ctx.packing)  # (N, k*H), all members at once
        need = ctx.needs_input_grad[2:]
        grad_xs, grad_ws, grad_bs = [None] * m, [None] * m, [None] * m
        for i, (gy, go) in enumerate(zip(torch.split(grad_y, sizes), torch.split(grad_out, sizes))):
            gy = aligned(gy)
            if need[i]:
                grad_xs[i] = gy @ ws[i].t()
            if need[m + i]:
                grad_ws[i] = (xs[i].t() @ gy).reshape(d, k, h).permute(2, 0, 1)
            if need[2 * m + i]:
                grad_bs[i] = aligned(go).sum(0)
        return (None, None, *grad_xs, *grad_ws, *grad_bs)


def grouped_packed_conv1d(
    xs: list[torch.Tensor], weights: list[torch.Tensor], biases: list[torch.Tensor], packing: Packing
) -> torch.Tensor:
    """packed_conv1d of several models ("members") at once: member i applies (weights[i], biases[i]),
    nn.Conv1d layout (H, D, k) and (H,), to its own packed clips xs[i] (N_i, D), and `packing` packs
    all members' videos in member order (member i's rows follow member i-1's). -> (N, H), N = sum N_i.

    Each member's matmul X_i @ [W_0 | ... | W_{k-1}] is its own (the shape its run alone has, so the
    result is that run's to the bit); the shifted sums, edge fixes and the backward's transposed shifts
    (adds and copies: exact wherever they run) are one pass over every member's rows.
    """
    if not (len(xs) == len(weights) == len(biases)) or not xs:
        raise ValueError(f"grouped_packed_conv1d: {len(xs)} inputs, {len(weights)} weights, {len(biases)} biases")
    return _GroupedPackedConv1d.apply(packing, len(xs), *xs, *weights, *biases)


class Head(nn.Module):
    """Conv1d(D -> H, k) -> ReLU -> Dropout -> Linear(H -> out): per-clip logits on packed rows."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, kernel_size: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv1d(in_dim, hidden, kernel_size, padding=kernel_size // 2)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:  # (N, D) -> (N, out)
        hidden = F.relu(packed_conv1d(x, self.conv.weight, self.conv.bias, packing))
        return self.fc(self.drop(hidden))


class VideoClassifier(nn.Module):
    """UntrimmedNet-style soft-attention MIL video classifier for test-time class gating."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int, dropout: float):
        super().__init__()
        self.enc = nn.Linear(in_dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.cls = nn.Linear(hidden, num_classes)
        self.att = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        """x (N, D) -> video logits (B, C) = sum_t softmax_t(a)_t * s_{t,c} per video."""
        hidden = self.drop(F.relu(self.enc(x)))  # (N, Hc)
        att = segment_softmax(self.att(hidden).squeeze(1), packing)  # (N,)
        clip_logits = self.cls(hidden)  # (N, C)
        out = torch.zeros(packing.num_videos, clip_logits.shape[1], dtype=x.dtype, device=x.device)
        return out.index_add(0, packing.seg, att.unsqueeze(1) * clip_logits)


class LinearMeanGate(nn.Module):
    """Video classifier on the video's mean clip feature: logits = W ((mean_t x_t - mu) / sd) + b.

    mu, sd (buffers) are the per-feature mean and std of the training videos' mean features; W, b are
    fitted once, to the minimum of a convex loss (emmil.train.fit_linear_mean_gate), before any head trains."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.register_buffer("mu", torch.zeros(in_dim))
        self.register_buffer("sd", torch.ones(in_dim))
        self.fc = nn.Linear(in_dim, num_classes)

    def video_means(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        """x (N, D) -> each video's mean clip feature (B, D)."""
        sums = torch.zeros(packing.num_videos, x.shape[1], dtype=x.dtype, device=x.device).index_add(0, packing.seg, x)
        return sums / packing.lengths.to(x.dtype).unsqueeze(1)

    def forward(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        """x (N, D) -> video logits (B, C)."""
        return self.fc((self.video_means(x, packing) - self.mu) / self.sd)


def segment_softmax(logits: torch.Tensor, packing: Packing) -> torch.Tensor:
    """Softmax over the clips of each video: logits (N,) -> weights (N,), summing to 1 per video."""
    b = packing.num_videos
    seg_max = torch.full((b,), float("-inf"), dtype=logits.dtype, device=logits.device)
    seg_max = seg_max.scatter_reduce(0, packing.seg, logits.detach(), reduce="amax", include_self=True)
    e = torch.exp(logits - seg_max[packing.seg])  # (N,)
    denom = torch.zeros(b, dtype=logits.dtype, device=logits.device).index_add(0, packing.seg, e)
    return e / denom[packing.seg]


class EMMIL(nn.Module):
    """Two streams x {key-instance q_phi, classification p_theta} heads, plus the gating classifier."""

    def __init__(
        self,
        rgb_dim: int,
        flow_dim: int,
        num_classes: int,
        *,
        hidden: int = 256,
        kernel_size: int = 3,
        dropout: float = 0.5,
        cls_hidden: int = 256,
        gate: str = "attention",
    ):
        super().__init__()
        self.rgb_dim, self.flow_dim, self.num_classes = rgb_dim, flow_dim, num_classes
        dims = {"rgb": rgb_dim, "flow": flow_dim}
        self.key = nn.ModuleDict({s: Head(dims[s], hidden, 1, kernel_size, dropout) for s in STREAMS})  # phi
        self.cls = nn.ModuleDict({s: Head(dims[s], hidden, num_classes, kernel_size, dropout) for s in STREAMS})  # theta
        if gate == "attention":
            self.gate = VideoClassifier(rgb_dim + flow_dim, cls_hidden, num_classes, dropout)
        elif gate == "linear-mean":
            self.gate = LinearMeanGate(rgb_dim + flow_dim, num_classes)
        else:
            raise ValueError(f"gate = {gate!r}: expected 'attention' or 'linear-mean'")

    @classmethod
    def from_config(cls, model_cfg, rgb_dim: int, flow_dim: int, num_classes: int) -> "EMMIL":
        return cls(
            rgb_dim,
            flow_dim,
            num_classes,
            hidden=model_cfg.hidden,
            kernel_size=model_cfg.kernel_size,
            dropout=model_cfg.dropout,
            cls_hidden=model_cfg.cls_hidden,
            gate=model_cfg.gate,
        )

    def stream_input(self, x: torch.Tensor, stream: str) -> torch.Tensor:
        """(N, D_rgb + D_flow) -> the stream's columns (a view; RGB columns come first)."""
        return x[:, : self.rgb_dim] if stream == "rgb" else x[:, self.rgb_dim :]

    def key_logits(self, x: torch.Tensor, packing: Packing, stream: str) -> torch.Tensor:  # (N,)
        return self.key[stream](self.stream_input(x, stream), packing).squeeze(1)

    def cls_logits(self, x: torch.Tensor, packing: Packing, stream: str) -> torch.Tensor:  # (N, C)
        return self.cls[stream](self.stream_input(x, stream), packing)

    def phi_parameters(self) -> list[nn.Parameter]:
        return list(self.key.parameters())

    def theta_parameters(self) -> list[nn.Parameter]:
        return list(self.cls.parameters())

    def gate_parameters(self) -> list[nn.Parameter]:
        return list(self.gate.parameters())

    @torch.no_grad()
    def scores(self, x: torch.Tensor, packing: Packing) -> dict[str, torch.Tensor]:
        """Inference scores: q_rgb, q_flow (N,), p_rgb, p_flow (N, C) sigmoid probabilities, video (B, C)
        the gate's softmax over classes (emmil.losses.video_classifier_loss)."""
        out = {}
        for s in STREAMS:
            out[f"q_{s}"] = torch.sigmoid(self.key_logits(x, packing, s))
            out[f"p_{s}"] = torch.sigmoid(self.cls_logits(x, packing, s))
        out["video"] = torch.softmax(self.gate(x, packing), dim=1)  # over classes, as the release's gate
        return out
