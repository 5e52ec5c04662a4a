"""Exact bytes of training state held by this rank: parameters, gradients, optimizer states.

These are what the memory planner predicts (bigtrain-plan); they are counted from the tensors
DeepSpeed really holds, not estimated."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor) or t.numel() == 0:
            continue
        key = t.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def param_bytes(module: torch.nn.Module) -> int:
    """The parameter partitions this rank holds (ZeRO-3: `ds_tensor`; otherwise the full tensors)."""
    return tensor_bytes(getattr(p, "ds_tensor", p) for p in module.parameters())


def optimizer_state_bytes(optimizer: Any) -> int:
    """Adam moments plus the fp32 master partitions (ZeRO keeps them as flat groups)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    tensors: list[torch.Tensor] = [
        v for state in inner.state.values() for v in state.values() if isinstance(v, torch.Tensor)
    ]
    # ZeRO-3, ZeRO-1/2, BF16_Optimizer (bf16 at stage 1)
    for attr in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups", "fp32_groups_flat_partition"):
        tensors.extend(getattr(optimizer, attr, None) or [])
    return tensor_bytes(tensors)


def grad_bytes(optimizer: Any, module: torch.nn.Module) -> int:
    """ZeRO-3 keeps this rank's gradient partitions in one flat buffer; other stages in p.grad, and
    BF16_Optimizer (bf16 at stage 1) sums them into flat fp32 buffers of the whole model besides."""
    flat = getattr(optimizer, "grad_partitions_flat_buffer", None)
    if isinstance(flat, torch.Tensor):
        return tensor_bytes([flat])
    fp32_sums = getattr(optimizer, "fp32_groups_gradients_flat", None) or []
    return tensor_bytes([*fp32_sums, *(p.grad for p in module.parameters() if p.grad is not None)])


def per_rank(engine: Any, optimizer: Any) -> dict[str, int]:
    return {
        "param_bytes": param_bytes(engine.module),
        "grad_bytes": grad_bytes(optimizer, engine.module),
        "optimizer_state_bytes": optimizer_state_bytes(optimizer),
    }
