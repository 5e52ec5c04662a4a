"""The decoder's elementwise kernels: PyTorch reference code, or liger-kernel's fused Triton kernels (CUDA).

liger's `apply_liger_kernel_to_llama` patches transformers' Llama classes, not bigtrain's, so the model calls
these functions directly. liger is an optional extra (`pip install .[gpu]`) and is imported only when chosen.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bigtrain.errors import BigtrainError


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LLaMA's RMSNorm: normalise in float32, cast back, then scale (the order HF Llama uses)."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k: (batch, heads, seq, head_dim); cos/sin: (batch, seq, head_dim)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return nn.functional.silu(gate) * up


@dataclass(frozen=True)
class Kernels:
    name: str
    rms_norm: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    rotary: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    silu_mul: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


TORCH_KERNELS = Kernels("torch", rms_norm, rotary, silu_mul)


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def liger_kernels() -> Kernels:
    from liger_kernel.transformers.functional import liger_rms_norm, liger_rope, liger_swiglu

    def liger_rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        # in_place=False: the incoming gradient feeds a residual branch and must not be overwritten
        return liger_rms_norm(x, weight, eps, offset=0.0, casting_mode="llama", in_place=False)

    # liger_rope takes q, k as (batch, heads, seq, head_dim) views, as HF Llama passes them
    return Kernels("liger", liger_rms, liger_rope, liger_swiglu)


def resolve_liger(choice: str, choices: tuple[str, ...], liger: str, fallback: str) -> str:
    """The one rule for a setting with a liger option (the kernels, the loss): `auto` is `liger` on CUDA
    with liger-kernel installed, else `fallback`; `liger` asked for without CUDA or the package is an
    error, as is anything outside `choices`. The messages name the value, not a recipe key: the caller
    that read the value from a recipe adds its key."""
    if choice == "auto":
        return liger if torch.cuda.is_available() and liger_installed() else fallback
    if choice not in choices:
        raise BigtrainError(f"unknown {choice!r} (auto, {', '.join(choices)})")
    if choice == liger and not torch.cuda.is_available():
        raise BigtrainError(f"{liger} needs a CUDA device (use {fallback} or auto)")
    if choice == liger and not liger_installed():
        raise BigtrainError(f"{liger} needs liger-kernel (pip install 'bigtrain[gpu]')")
    return choice


def resolve_kernels(choice: str, compiled: bool = False) -> str:
    """auto: liger on CUDA when installed, else torch; under torch.compile torch: liger's Triton autograd
    functions are opaque to Dynamo and split every decoder layer's graph, while inductor fuses the torch
    elementwise ops itself. `liger` asked for explicitly stays liger."""
    if choice == "auto" and compiled:
        return "torch"
    return resolve_liger(choice, ("liger", "torch"), liger="liger", fallback="torch")


def get_kernels(name: str) -> Kernels:
    return liger_kernels() if name == "liger" else TORCH_KERNELS
