"""Training schedule as a pure function of the (1-based) epoch (paper 4.1, authors' release).

paper (THUMOS14: cycle 10, cycle_epochs 30, lr_boost 4, 65 epochs):
  epochs 1-10 M (all-positive initial labels), 11-20 E, 21-30 M, then lr x4 and alternate every
  epoch: 31 E, 32 M, ..., 65 E.  ActivityNet1.2: cycle 5, lr_boost 1 (constant lr).
released (authors' code): the same steps, but the lr boost starts with the third cycle (epoch 21).
Variants without alternation (`joint`, `attention-mil`, `supervised`) train both branches every
epoch with the same lr scale; `joint` uses the all-positive M-side labels during the first cycle.
`oracle-key` alternates like `full` but its labels are ground truth from the start (no all-positive
block). `whole-video` trains no head ("none"): only the gate, which every variant trains in its own
first `train.gate_epochs` epochs (emmil.train).
"""

from __future__ import annotations

from dataclasses import dataclass

ALTERNATING = ("full", "no-pseudo-label", "oracle-key")


@dataclass(frozen=True)
class EpochPlan:
    step: str  # "E" (train q_phi), "M" (train p_theta), "joint" (both) or "none" (neither)
    stage: str  # "cycle" (multi-epoch E/M blocks) or "alternate" (one-epoch E/M after cycle_epochs)
    lr_scale: float  # multiply train.lr by this
    all_positive: bool  # M-side labels are the all-positive initialisation (first M block)


def _alternating_step(epoch: int, cycle: int, cycle_epochs: int) -> tuple[str, str, int]:
    """(step, stage, block index) of an alternating schedule; blocks of `cycle` epochs start with M."""
    if epoch <= cycle_epochs:
        block = (epoch - 1) // cycle
        return ("M" if block % 2 == 0 else "E"), "cycle", block
    blocks = (cycle_epochs + cycle - 1) // cycle  # blocks in the cycled phase (the last may be short)
    block = blocks + (epoch - cycle_epochs - 1)  # one-epoch blocks continue the alternation
    return ("M" if block % 2 == 0 else "E"), "alternate", block


def plan_epoch(epoch: int, train, variant: str = "full") -> EpochPlan:
    """What epoch `epoch` (1-based) does under TrainConfig `train` for `variant`."""
    if epoch < 1:
        raise ValueError(f"plan_epoch: epoch is 1-based, got {epoch}")
    step, stage, block = _alternating_step(epoch, train.cycle, train.cycle_epochs)
    if train.schedule == "released":
        boosted = epoch > 2 * train.cycle  # release: lr x4 from the third cycle on
    else:
        boosted = stage == "alternate"
    lr_scale = float(train.lr_boost) if boosted else 1.0
    first_m = block == 0
    if variant == "whole-video":
        return EpochPlan("none", stage, lr_scale, all_positive=False)
    if variant in ALTERNATING:
        return EpochPlan(step, stage, lr_scale, all_positive=first_m and step == "M" and variant == "full")
    return EpochPlan("joint", stage, lr_scale, all_positive=first_m and variant == "joint")


def schedule_table(train, variant: str = "full") -> list[EpochPlan]:
    """The plan of every epoch 1..train.epochs (index i = epoch i+1)."""
    return [plan_epoch(e, train, variant) for e in range(1, train.epochs + 1)]
