"""Parameter and FLOP counts derived from the per-layer sizes (no model needs to be built)."""

from __future__ import annotations

from bigtrain.model.configuration import BigTrainConfig


def attention_params(cfg: BigTrainConfig, layer: int) -> int:
    q, kv = cfg.layer_num_attention_heads[layer], cfg.layer_num_key_value_heads[layer]
    return cfg.hidden_size * cfg.head_dim * (2 * q + 2 * kv)


def ffn_params(cfg: BigTrainConfig, layer: int) -> int:
    return 3 * cfg.hidden_size * cfg.layer_intermediate_sizes[layer]


def layer_params(cfg: BigTrainConfig, layer: int) -> int:
    """Weights of one block, norms included (an attention-only layer has one norm)."""
    norms = cfg.hidden_size * (2 if cfg.layer_intermediate_sizes[layer] else 1)
    return attention_params(cfg, layer) + ffn_params(cfg, layer) + norms


def embedding_params(cfg: BigTrainConfig) -> int:
    """Input embedding, final norm and (untied) LM head."""
    head = 0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size
    return cfg.vocab_size * cfg.hidden_size + cfg.hidden_size + head


def total_params(cfg: BigTrainConfig) -> int:
    return embedding_params(cfg) + sum(layer_params(cfg, i) for i in range(cfg.num_hidden_layers))


def non_embedding_params(cfg: BigTrainConfig) -> int:
    return sum(layer_params(cfg, i) for i in range(cfg.num_hidden_layers))


def train_flops_per_token(cfg: BigTrainConfig, seq_len: int) -> float:
    """bigtrain's convention, forward+backward FLOPs per token: 6 x matmul weights (LM head included, input
    embedding excluded: it is a lookup; the blocks' norm weights ride along, negligible) plus causal attention
    scores and values, 6 * 2 * s * q_width / 2 per layer (the mask leaves half of the score matrix, and SDPA's
    flash kernels skip the masked blocks). 7.82G for Llama-3.2-1B at seq 2048; PaLM's convention: 8.22G."""
    matmul = non_embedding_params(cfg) + cfg.vocab_size * cfg.hidden_size
    attn = sum(6 * seq_len * q * cfg.head_dim for q in cfg.layer_num_attention_heads)
    return 6.0 * matmul + attn


def palm_flops_per_token(cfg: BigTrainConfig, seq_len: int) -> float:
    """The PaLM-appendix convention (Chowdhery et al. 2022, app. B), as llm-foundry, torchtitan and OLMo
    report MFU: 6N + 12 L H Q T, N every parameter (a tied embedding once), attention not halved for the
    causal mask; per layer 12 * T * (H * Q) here, so layers with their own head counts add up exactly."""
    attn = sum(12 * seq_len * q * cfg.head_dim for q in cfg.layer_num_attention_heads)
    return 6.0 * total_params(cfg) + attn
