"""An MoE model's metrics of a logging step: the auxiliary loss and, per MoE layer, the routing (docs/moe.md)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def moe_record(model: Any, aux_sum: torch.Tensor, micro_batches: int) -> dict[str, Any]:
    """An MoE model's metrics of a logging step (a collective): the weighted auxiliary loss (mean over ranks and
    micro batches; `loss` is the cross-entropy alone) and, of the step's last micro batch, per MoE layer the
    routing assignments each expert received over all ranks, the routing entropy (nats, mean over ranks), and
    how many (rank, expert) pairs received no token (an expert idle on a rank while busy on another)."""
    stats = model.routing_stats()
    layers = sorted(stats)
    counts = torch.stack([stats[i].tokens_per_expert for i in layers]).to(aux_sum.device)
    idle = (counts == 0).sum(dim=1).float()
    entropy = torch.stack([stats[i].entropy for i in layers]).to(aux_sum.device).float()
    packed = torch.cat([aux_sum.reshape(1), counts.flatten(), idle, entropy])
    dist.all_reduce(packed)
    world = dist.get_world_size()
    n, e = counts.shape
    counts = packed[1 : 1 + n * e].reshape(n, e)
    idle, entropy = packed[1 + n * e : 1 + n * e + n], packed[1 + n * e + n :] / world
    return {
        "moe_aux_loss": float(packed[0]) / micro_batches,
        "moe_tokens_per_expert": {str(i): [int(c) for c in counts[k].tolist()] for k, i in enumerate(layers)},
        "moe_routing_entropy": {str(i): float(entropy[k]) for k, i in enumerate(layers)},
        "moe_idle_experts": {str(i): int(idle[k]) for k, i in enumerate(layers)},
    }
