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
    """Forward+backward FLOPs per token: 6 x matmul weights (LM head included, input embedding
    excluded: it is a lookup) plus causal attention scores and values, 6 * 2 * s * q_width / 2 per layer."""
    matmul = non_embedding_params(cfg) + cfg.vocab_size * cfg.hidden_size
    attn = sum(6 * seq_len * q * cfg.head_dim for q in cfg.layer_num_attention_heads)
    return 6.0 * matmul + attn
