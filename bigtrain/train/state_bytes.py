"""Exact bytes of training state held by this rank: parameters, gradients, optimizer states.

One accounting for every ZeRO stage and dtype bigtrain runs (DeepSpeed 0.19): `widths` says how many bytes
per element each kind of state takes and whether ZeRO splits it over the ranks; the planner
(`pipeline/memory.py`) and `train.zero_stage: auto` (`zero_stage.py`) predict from it, and `per_rank` counts
what a built engine holds. `tests/test_state_bytes.py` checks both against every tensor DeepSpeed allocates.

What DeepSpeed holds, per element (T: trainable elements, all: every parameter; /N: split over N ranks):

| precision, stage | optimizer | weights | gradients at their peak | fp32 master + Adam |
|---|---|---|---|---|
| fp32, 0 | the plain optimizer | 4 | 4 (`p.grad`) | 0 + 8 (the weights are the master) |
| fp32, 1 | DeepSpeedZeroOptimizer | 4 | 4 (full gradients until the boundary) | (4 + 8) / N |
| fp32, 2 | DeepSpeedZeroOptimizer | 4 | 4 / N (`averaged_gradients`) | (4 + 8) / N |
| bf16, 0 | FP16_Optimizer (`fp32_groups_flat`) | 2 | 2 (`p.grad`, summed in bf16) | 4 + 8 |
| bf16, 1 | BF16_Optimizer (`grad_accum_dtype: fp32`) | 2 | 2 (`p.grad`) + 4 (fp32 flat sums) | (4 + 8) / N |
| bf16, 2 | DeepSpeedZeroOptimizer | 2 | 4 / N (fp32 `averaged_gradients`) | (4 + 8) / N |
| any, 3 | DeepSpeedZeroOptimizer_Stage3 | w / N | accum / N (one flat buffer) | (4 + 8) / N |

fp16 follows bf16's code paths with fp16 gradient sums at every stage (DeepSpeed's default grad_accum_dtype;
not testable on CPU, where DeepSpeed refuses fp16). Gradients other than ZeRO-3's flat buffer and
BF16_Optimizer's fp32 sums are freed at every step, so `per_rank` counts them from the parameters they belong
to (their size while they exist, between the first backward of a step and its optimizer step), not from
whatever happens to be alive when it is called. Not counted: buckets and working buffers, and the transient
fp32 copy of the gradients FP16_Optimizer makes inside its step (4 B per element at stage 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class Widths:
    """Bytes per element of each kind of state, and whether ZeRO splits it over the ranks."""

    weight: int
    weight_split: bool
    grad_full: int  # gradients of every trainable element on every rank
    grad_split: int  # gradients of this rank's share only
    optimizer: int  # fp32 master + Adam's two moments
    optimizer_split: bool


def accum_bytes(stage: int, precision: str) -> int:
    """Width of the summed gradients: bigtrain sets `grad_accum_dtype: fp32` for bf16 at stages >= 1
    (ds_config.py); otherwise DeepSpeed sums in the weight dtype."""
    return 4 if precision == "bf16" and stage >= 1 else DTYPE_BYTES[precision]


def widths(stage: int, precision: str) -> Widths:
    if stage not in (0, 1, 2, 3) or precision not in DTYPE_BYTES:
        raise ValueError(f"no state accounting for ZeRO stage {stage!r} at precision {precision!r}")
    w = DTYPE_BYTES[precision]
    master = 0 if precision == "fp32" and stage == 0 else 4
    optimizer = master + 8
    if stage == 0:
        return Widths(w, False, w, 0, optimizer, False)
    if stage == 1:
        full = w + 4 if precision == "bf16" else accum_bytes(1, precision)  # BF16_Optimizer: bf16 grads + fp32 sums
        return Widths(w, False, full, 0, optimizer, True)
    return Widths(w, stage == 3, 0, accum_bytes(stage, precision), optimizer, True)


def expected(
    stage: int, precision: str, world_size: int, numels: Sequence[int], trainable: Sequence[bool]
) -> dict[str, int]:
    """Per-rank state bytes of parameters with these element counts (`trainable`: whether each trains).
    A split tensor holds ceil(numel / N) elements per rank (ZeRO-3 pads each tensor; stages 1-2 pad the flat
    groups instead, a difference of under N elements per group)."""
    wd = widths(stage, precision)

    def share(n: int, split: bool) -> int:
        return math.ceil(n / world_size) if split else n

    train = [n for n, t in zip(numels, trainable, strict=True) if t]
    return {
        "param_bytes": wd.weight * sum(share(n, wd.weight_split) for n in numels),
        "grad_bytes": wd.grad_full * sum(train) + wd.grad_split * sum(share(n, True) for n in train),
        "optimizer_state_bytes": wd.optimizer * sum(share(n, wd.optimizer_split) for n in train),
    }


# --- what a built engine holds ---------------------------------------------------------------------


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor) or t.numel() == 0 or t.device.type == "meta":
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


MASTER_ATTRS = (
    "fp32_partitioned_groups_flat",  # ZeRO-3
    "single_partition_of_fp32_groups",  # ZeRO-1/2
    "fp32_groups_flat_partition",  # BF16_Optimizer (bf16 at stage 1)
    "fp32_groups_flat",  # FP16_Optimizer (fp16 or bf16 at stage 0)
)


def optimizer_state_bytes(optimizer: Any) -> int:
    """Adam moments plus the fp32 master copies (flat groups or partitions)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    tensors: list[torch.Tensor] = [
        v for state in inner.state.values() for v in state.values() if isinstance(v, torch.Tensor)
    ]
    for attr in MASTER_ATTRS:
        tensors.extend(getattr(optimizer, attr, None) or [])
    return tensor_bytes(tensors)


def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def grad_bytes(optimizer: Any, module: torch.nn.Module) -> int:
    """Gradient bytes at their peak (see the module docstring): the buffers DeepSpeed keeps across steps as
    they are, the ones it frees at each step from the parameters they are the gradients of."""
    flat = getattr(optimizer, "grad_partitions_flat_buffer", None)
    if isinstance(flat, torch.Tensor):  # ZeRO-3: this rank's partitions in one flat buffer
        return tensor_bytes([flat])
    params = trainable(module)
    full = sum(p.numel() for p in params)
    fp32_sums = getattr(optimizer, "fp32_groups_gradients_flat", None)
    if fp32_sums is not None:  # BF16_Optimizer: fp32 sums of the whole model, besides the bf16 p.grad
        return tensor_bytes(fp32_sums) + sum(p.numel() * p.element_size() for p in params)
    partitions = getattr(optimizer, "single_partition_of_fp32_groups", None)
    if partitions is not None:  # ZeRO-1/2: summed in gradient_accumulation_dtype
        width = torch.empty(0, dtype=optimizer.gradient_accumulation_dtype).element_size()
        if getattr(optimizer, "partition_gradients", False):  # stage 2: this rank's partitions only
            return width * sum(t.numel() for t in partitions)
        return width * full  # stage 1: every gradient until the accumulation boundary
    return sum(p.numel() * p.element_size() for p in params)  # stage 0: p.grad in the weight dtype


def per_rank(engine: Any, optimizer: Any) -> dict[str, int]:
    return {
        "param_bytes": param_bytes(engine.module),
        "grad_bytes": grad_bytes(optimizer, engine.module),
        "optimizer_state_bytes": optimizer_state_bytes(optimizer),
    }
