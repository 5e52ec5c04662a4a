"""Learning-rate schedules as multipliers of the peak LR: linear warmup, then cosine, warmup-stable-decay
(WSD: constant, then a linear decay over the last `decay_fraction` of steps) or constant.

A run may be a slice of a longer schedule: its step s is the schedule's step `schedule_start + s` of
`schedule_steps` (train.schedule_scope: pipeline gives every stage of a staged recipe its slice of one
schedule). After a growth, `rewarm_steps` ramps the LR linearly up to the schedule's value."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim.lr_scheduler import LambdaLR

from bigtrain.config import TrainConfig


def schedule_multiplier(cfg: TrainConfig, length: int) -> Callable[[int], float]:
    """The multiplier at step `step` (optimizer steps already taken) of a schedule `length` steps long."""
    warmup = min(cfg.warmup_steps, max(length - 1, 0))
    floor = cfg.min_lr_ratio
    decay_steps = min(length, cfg.decay_steps or max(1, round(cfg.decay_fraction * length)))

    def at(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.schedule == "constant":
            return 1.0
        if cfg.schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, length - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        decay_start = length - decay_steps
        if step < decay_start:
            return 1.0
        return 1.0 - (1 - floor) * min(1.0, (step - decay_start) / decay_steps)

    return at


def lr_multiplier(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """The run's multiplier at its step `step`: its slice of the schedule, times the re-warm after a growth."""
    schedule = schedule_multiplier(cfg, cfg.schedule_steps or total_steps)
    start, rewarm = cfg.schedule_start, cfg.rewarm_steps

    def at(step: int) -> float:
        ramp = (step + 1) / (rewarm + 1) if step < rewarm else 1.0
        return schedule(start + step) * ramp

    return at


def extension_note(cfg: TrainConfig, done: int, total_steps: int) -> str:
    """The log line of a finished run extended from `done` to `total_steps` steps. The schedule is a function
    of the run's length, so a longer run has another one: cosine decays again over the new length, WSD
    moves its decay to the new end (a checkpoint from before the decay continues as if planned that long)."""
    lr = cfg.lr * lr_multiplier(cfg, total_steps)(done)
    head = f"bigtrain: extending a finished run from step {done} to {total_steps}"
    if cfg.schedule == "cosine":
        return f"{head}; the cosine decay is recomputed for {total_steps} steps (LR {lr:.3g} at step {done})"
    if cfg.schedule == "wsd":
        return f"{head}; the WSD decay moves to the last {cfg.decay_fraction:g} of {total_steps} steps (LR {lr:.3g} at step {done})"
    return f"{head} at the constant LR {lr:.3g}"


def recompute_lr(scheduler: LambdaLR) -> None:
    """Set each group's LR from the schedule at the scheduler's position. A resume restores the LR the old
    schedule gave; after an extension the new length's schedule applies from the next step on."""
    for group, base, at in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * at(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
