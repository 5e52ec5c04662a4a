"""Held-out evaluation: mean token loss and perplexity over a fixed set of sequences."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from bigtrain.data.dataset import SequenceRange
from bigtrain.train.distributed import World


@torch.no_grad()
def evaluate(engine: Any, data: SequenceRange, world: World, micro: int, max_batches: int) -> dict[str, float]:
    """The first `max_batches * micro * world` held-out sequences (fixed, so evaluations compare)."""
    engine.eval()
    n = min(data.count, max_batches * micro * world.size)
    mine = np.arange(n)[world.rank :: world.size]
    total = torch.zeros(2, dtype=torch.float64, device=engine.device)
    # every rank runs the same number of forwards: ZeRO-3 gathers are collective
    steps = math.ceil(math.ceil(n / world.size) / micro) if n else 0
    for i in range(steps):
        idx = mine[i * micro : (i + 1) * micro]
        pad = len(idx) == 0
        batch = data.batch(idx if not pad else np.arange(1)).to(engine.device)
        loss = engine(input_ids=batch, labels=batch).loss
        if not pad:
            total += torch.tensor([loss.item() * len(idx), len(idx)], dtype=torch.float64, device=engine.device)
    dist.all_reduce(total)
    engine.train()
    if total[1] == 0:
        return {}
    mean = float(total[0] / total[1])
    return {"eval_loss": mean, "eval_ppl": math.exp(min(mean, 50.0))}
