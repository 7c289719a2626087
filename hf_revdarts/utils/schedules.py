"""Learning-rate schedules shared by the search and the training loop."""

from __future__ import annotations

import math

import torch


# transformers.get_inverse_sqrt_schedule starts at lr 0 (the first step would not train) and decays over a
# separate timescale; this one reaches peak/warmup at step 1 and decays as sqrt(warmup/step).
def inverse_sqrt_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the optimiser's lr over ``warmup_steps``, then decay ∝ 1/sqrt(step)."""
    warmup = max(1, int(warmup_steps))

    def factor(step: int) -> float:
        step = step + 1  # LambdaLR calls with 0 first; step 1 must already train
        return min(step / warmup, math.sqrt(warmup / step))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
