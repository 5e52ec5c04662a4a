"""Next-token cross-entropy straight from the final hidden states, without materialising the logits.

plain: logits = hidden @ W^T for the whole batch, then cross-entropy (B*S*V floats: ~23 GiB at micro 4,
seq 2048, vocab 128k in fp32). chunked: the same math a slice of tokens at a time, with the gradients of
hidden and W computed in the forward (the design of liger's fused linear cross-entropy, in PyTorch), so only
one slice of logits ever exists and nothing is recomputed. fused: liger's Triton kernel (CUDA).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from bigtrain.errors import BigtrainError
from bigtrain.model.kernels import resolve_liger

IGNORE_INDEX = -100
LOSSES = ("plain", "chunked", "fused")


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Labels are the inputs (HF convention): position t predicts token t+1; the last position predicts nothing."""
    pad = labels.new_full((labels.shape[0], 1), IGNORE_INDEX)
    return torch.cat((labels[:, 1:], pad), dim=1).flatten()


def default_chunk_tokens(tokens: int, hidden: int, vocab: int) -> int:
    """liger's rule: a slice of logits about the size of the hidden states (at least 256 tokens)."""
    chunks = max(1, math.ceil(vocab / hidden))
    return max(256, 2 ** math.ceil(math.log2(max(1, math.ceil(tokens / chunks)))))


@functools.cache
def mm_returns(device: torch.device, dtype: torch.dtype, out_dtype: torch.dtype) -> bool:
    """Whether torch.mm on `device` can return `dtype` inputs' product in `out_dtype` (CUDA, torch >= 2.9);
    asked once per device with a tiny GEMM, so that a build without the kernel falls back, not crashes."""
    if device.type != "cuda":
        return False
    try:
        a = torch.ones(16, 16, dtype=dtype, device=device)
        return torch.mm(a, a, out_dtype=out_dtype).dtype == out_dtype
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def add_weight_grad(grad_w: torch.Tensor, g: torch.Tensor, h: torch.Tensor) -> None:
    """grad_w += g^T h, grad_w in the accumulation dtype (fp32), g and h in the compute dtype. A bf16/fp16
    GEMM (tensor cores, fp32 accumulation inside) rather than an fp32 GEMM on upcast copies of g and h, which
    runs at a fraction of the speed (fp32 without TF32: ~1/15 of bf16 on an H100). On CUDA the GEMM returns
    its fp32 accumulator (`out_dtype`, no rounding); elsewhere (CPU: no `out_dtype` kernel) it returns the
    compute dtype, so each slice's contribution is rounded once before the fp32 sum; the gradient leaves
    the loss in the weight dtype anyway."""
    if g.dtype == h.dtype == grad_w.dtype:
        grad_w.addmm_(g.t(), h)  # fp32/fp64 model: the GEMM is already in the accumulation dtype
    elif g.dtype != h.dtype:
        grad_w.addmm_(g.t().to(grad_w.dtype), h.to(grad_w.dtype))
    elif mm_returns(g.device, g.dtype, grad_w.dtype):
        # addmm's out_dtype wants `input` in the compute dtype, so the fp32 sum is a separate add
        grad_w.add_(torch.mm(g.t(), h, out_dtype=grad_w.dtype))
    else:
        grad_w.add_(g.t() @ h)


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of (hidden @ weight^T) against targets, a slice of `chunk` tokens at a time."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, grads: bool):  # type: ignore[override]
        ctx.weight_dtype = weight.dtype
        acc = torch.promote_types(hidden.dtype, torch.float32)  # float32 unless the inputs are wider
        valid = targets != IGNORE_INDEX
        scale = 1.0 / valid.sum().clamp(min=1).to(acc)  # a tensor: no host sync
        need_h = grads and ctx.needs_input_grad[0]
        need_w = grads and ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        # float32 accumulation across slices, like one big matmul would do (add_weight_grad)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk]
            y = targets[start : start + chunk]
            keep = valid[start : start + chunk]
            y_safe = torch.where(keep, y, 0)
            logits = (h @ weight.t()).to(acc)
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, y_safe[:, None]).squeeze(1)
            total += ((lse - picked) * keep).sum()
            if need_h or need_w:
                # d loss / d logits = (softmax - onehot) * scale, on kept rows
                g = logits.sub_(lse[:, None]).exp_()
                g[torch.arange(len(y), device=g.device), y_safe] -= 1.0
                g.mul_((keep.to(acc) * scale)[:, None])
                g = g.to(weight.dtype)
                if need_h:
                    grad_h[start : start + chunk] = g @ weight
                if need_w:
                    add_weight_grad(grad_w, g, h)
        ctx.save_for_backward(grad_h, grad_w)
        return total * scale

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        dh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        dw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return dh, dw, None, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """hidden (N, H), weight (V, H), targets (N,) with IGNORE_INDEX for no target."""
    chunk = chunk or default_chunk_tokens(hidden.shape[0], hidden.shape[1], weight.shape[0])
    return ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk, torch.is_grad_enabled())


def plain_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = hidden @ weight.t()
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)


def fused_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(hidden, weight, targets, ignore_index=IGNORE_INDEX)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Causal-LM loss of hidden states (B, S, H) under the head `weight` (V, H), labels (B, S) = the inputs."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    targets = shifted_targets(labels)
    if kind == "chunked":
        return chunked_cross_entropy(flat, weight, targets)
    if kind == "fused":
        return fused_cross_entropy(flat, weight, targets)
    if kind == "plain":
        return plain_cross_entropy(flat, weight, targets)
    raise BigtrainError(f"unknown loss {kind!r} ({', '.join(LOSSES)})")


def resolve_loss(choice: str) -> str:
    """auto: liger's fused kernel on CUDA when installed, else chunked."""
    return resolve_liger(choice, LOSSES, liger="fused", fallback="chunked")
