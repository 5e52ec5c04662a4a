"""Held-out evaluation: mean token loss and perplexity over a fixed set of sequences."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from bigtrain.data.dataset import SequenceRange
from bigtrain.train.distributed import World


def held_out_count(available: int, micro: int, max_batches: int) -> int:
    """How many held-out sequences an evaluation reads: the first `max_batches * micro`, on any number of
    ranks (the set must not depend on the world size, or the same model scores differently on 1 and 2 ranks)."""
    return min(available, max_batches * micro)


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A plain copy from pageable memory waits for the device's queue; from pinned memory it does not
    (PyTorch's pinned allocator keeps the buffer until the copy is done)."""
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


@torch.no_grad()
def evaluate(engine: Any, data: SequenceRange, world: World, micro: int, max_batches: int) -> dict[str, float]:
    """The first `max_batches * micro` held-out sequences (fixed, so evaluations compare), split across ranks."""
    engine.eval()
    n = held_out_count(data.count, micro, max_batches)
    mine = np.arange(n)[world.rank :: world.size]
    total = torch.zeros(2, dtype=torch.float64, device=engine.device)
    # every rank runs the same number of forwards (ZeRO-3 gathers are collective); a rank whose share is
    # used up runs a stand-in batch that is not counted
    steps = math.ceil(math.ceil(n / world.size) / micro) if n else 0
    for i in range(steps):
        idx = mine[i * micro : (i + 1) * micro]
        pad = len(idx) == 0
        batch = to_device(data.batch(idx if not pad else np.arange(1)), engine.device)
        loss = engine(input_ids=batch, labels=batch).loss
        if not pad:  # every sequence has seq_len - 1 targets, so a batch's mean weighs by its sequences
            total[0] += loss.detach().double() * len(idx)  # summed on the device: no host sync per batch
            total[1] += len(idx)
    dist.all_reduce(total)
    loss_sum, sequences = total.tolist()  # the evaluation's one host sync
    engine.train()
    if sequences == 0:
        return {}
    mean = loss_sum / sequences
    return {"eval_loss": mean, "eval_ppl": math.exp(min(mean, 50.0))}
