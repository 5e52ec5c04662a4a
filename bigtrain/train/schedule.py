"""Learning-rate schedules as multipliers of the peak LR: linear warmup, then cosine, warmup-stable-decay
(WSD: constant, then a linear decay over the last `decay_fraction` of steps) or constant."""

from __future__ import annotations

import math
from collections.abc import Callable

from bigtrain.config import TrainConfig


def lr_multiplier(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    floor = cfg.min_lr_ratio

    def at(step: int) -> float:  # `step` = optimizer steps already taken
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.schedule == "constant":
            return 1.0
        if cfg.schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        decay_steps = max(1, round(cfg.decay_fraction * total_steps))
        decay_start = total_steps - decay_steps
        if step < decay_start:
            return 1.0
        return 1.0 - (1 - floor) * min(1.0, (step - decay_start) / decay_steps)

    return at
