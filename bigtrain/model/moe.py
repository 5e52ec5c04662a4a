"""A Mixture-of-Experts FFN: a router and E SwiGLU experts, top-k routing, dropless.

Per token: probabilities p = softmax(router(x)) over the E experts (in float32), the k largest chosen, their
weights renormalised to sum to 1 when `normalize_top_k` (Mixtral; else the raw probabilities, Switch), and
the output sum_i w_i expert_i(x). Dropless: every token reaches its k experts whatever the load. The experts
run one after the other on the tokens routed to them (grouped by one argsort, so one host sync per layer for the
group sizes; index_select, then index_add back); every expert runs
every time, on zero tokens if none chose it, so all ranks build the same graph and every expert's weights get a
gradient (zero when unused) — what ZeRO-3 needs, with the MoE block registered as a leaf module (train/build.py).

Two auxiliary losses, kept on the module after each forward for the model to add to the training loss:
- load balancing (Switch, Fedus et al. 2021; Mixtral's `load_balancing_loss_func`):
  E * sum_e f_e P_e, f_e the share of the T*k routing assignments that went to e, P_e the mean router
  probability of e; 1.0 when the load is uniform.
- router z-loss (ST-MoE, Zoph et al. 2022): mean over tokens of logsumexp(router logits)^2.
And the routing statistics of the forward: tokens per expert and the mean routing entropy (nats; log E at most).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class RoutingStats:
    """Of one forward (this rank's tokens)."""

    tokens_per_expert: torch.Tensor  # (E,) float: routing assignments per expert (sums to tokens x k)
    entropy: torch.Tensor  # () mean over tokens of the router distribution's entropy (nats)
    tokens: int


class MoEFeedForward(nn.Module):
    def __init__(self, hidden_size: int, moe: dict[str, Any], expert: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.num_experts = int(moe["num_experts"])
        self.top_k = int(moe["top_k"])
        self.normalize_top_k = bool(moe["normalize_top_k"])
        self.router = nn.Linear(hidden_size, self.num_experts, bias=False)
        self.experts = nn.ModuleList(expert() for _ in range(self.num_experts))
        self.aux_loss: torch.Tensor | None = None
        self.z_loss: torch.Tensor | None = None
        self.stats: RoutingStats | None = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(router logits (T, E) fp32, probabilities (T, E), top-k weights (T, k), top-k experts (T, k))."""
        logits = self.router(x).float()
        probs = torch.softmax(logits, dim=-1)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        if self.normalize_top_k:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, probs, weights, chosen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits, probs, weights, chosen = self.route(x)
        # the (token, slot) assignments grouped by expert: one host sync per layer (the group sizes)
        order = torch.argsort(chosen.flatten(), stable=True)
        sizes = torch.bincount(chosen.flatten(), minlength=self.num_experts).tolist()
        out = torch.zeros_like(x)
        for expert, group in zip(self.experts, torch.split(order, sizes)):
            token = group // self.top_k  # may be empty: the expert still runs
            y = expert(x.index_select(0, token)) * weights.flatten()[group, None].to(x.dtype)
            out = out.index_add(0, token, y)
        self.record_losses(logits, probs, chosen)
        return out.reshape(shape)

    def record_losses(self, logits: torch.Tensor, probs: torch.Tensor, chosen: torch.Tensor) -> None:
        tokens = probs.shape[0]
        counts = nn.functional.one_hot(chosen, self.num_experts).sum(dim=(0, 1)).float()
        share = counts / max(1, tokens * self.top_k)
        self.aux_loss = self.num_experts * (share * probs.mean(dim=0)).sum()
        self.z_loss = torch.logsumexp(logits, dim=-1).square().mean()
        with torch.no_grad():
            entropy = -(probs * probs.clamp_min(1e-20).log()).sum(dim=-1).mean()
        self.stats = RoutingStats(counts.detach(), entropy.detach(), tokens)
