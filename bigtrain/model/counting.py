"""Parameter and FLOP counts, from the architecture's tensor list (`param_shapes`; no model is built)."""

from __future__ import annotations

import math

from bigtrain.model.configuration import BigTrainConfig
from bigtrain.model.param_shapes import layer_shapes, non_layer_shapes


def _numel(shapes: dict[str, tuple[int, ...]], part: str = "") -> int:
    return sum(math.prod(shape) for name, shape in shapes.items() if name.startswith(part))


def attention_params(cfg: BigTrainConfig, layer: int) -> int:
    return _numel(layer_shapes(cfg, layer), "self_attn.")


def ffn_params(cfg: BigTrainConfig, layer: int) -> int:
    return _numel(layer_shapes(cfg, layer), "mlp.")


def layer_params(cfg: BigTrainConfig, layer: int) -> int:
    """Weights of one block, norms included (an attention-only layer has one norm)."""
    return _numel(layer_shapes(cfg, layer))


def active_layer_params(cfg: BigTrainConfig, layer: int) -> int:
    """The weights one token goes through in a layer: an MoE layer's router and top_k of its experts."""
    shapes = layer_shapes(cfg, layer)
    if not cfg.layer_is_moe(layer):
        return _numel(shapes)
    one_expert = _numel(shapes, "mlp.experts.0.")
    return _numel(shapes) - (cfg.moe["num_experts"] - cfg.moe["top_k"]) * one_expert  # type: ignore[index]


def active_non_embedding_params(cfg: BigTrainConfig) -> int:
    return sum(active_layer_params(cfg, i) for i in range(cfg.num_hidden_layers))


def active_params(cfg: BigTrainConfig) -> int:
    """Parameters per token (= total_params for a dense model)."""
    return embedding_params(cfg) + active_non_embedding_params(cfg)


def embedding_params(cfg: BigTrainConfig) -> int:
    """Input embedding, final norm and (untied) LM head."""
    return _numel(non_layer_shapes(cfg))


def total_params(cfg: BigTrainConfig) -> int:
    return embedding_params(cfg) + non_embedding_params(cfg)


def non_embedding_params(cfg: BigTrainConfig) -> int:
    return sum(layer_params(cfg, i) for i in range(cfg.num_hidden_layers))


def train_flops_per_token(cfg: BigTrainConfig, seq_len: int) -> float:
    """bigtrain's convention, forward+backward FLOPs per token: 6 x matmul weights (LM head included, input
    embedding excluded: it is a lookup; the blocks' norm weights ride along, negligible) plus causal attention
    scores and values, 6 * 2 * s * q_width / 2 per layer (the mask leaves half of the score matrix, and SDPA's
    flash kernels skip the masked blocks). 7.82G for Llama-3.2-1B at seq 2048; PaLM's convention: 8.22G.
    An MoE layer counts its active weights (router + top_k experts), not all of them."""
    matmul = active_non_embedding_params(cfg) + cfg.vocab_size * cfg.hidden_size
    attn = sum(6 * seq_len * q * cfg.head_dim for q in cfg.layer_num_attention_heads)
    return 6.0 * matmul + attn


def palm_flops_per_token(cfg: BigTrainConfig, seq_len: int) -> float:
    """The PaLM-appendix convention (Chowdhery et al. 2022, app. B), as llm-foundry, torchtitan and OLMo
    report MFU: 6N + 12 L H Q T, N every parameter (a tied embedding once), attention not halved for the
    causal mask; per layer 12 * T * (H * Q) here, so layers with their own head counts add up exactly.
    N counts the active parameters of an MoE model (router + top_k experts per MoE layer)."""
    attn = sum(12 * seq_len * q * cfg.head_dim for q in cfg.layer_num_attention_heads)
    return 6.0 * active_params(cfg) + attn
