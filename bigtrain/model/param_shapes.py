"""The parameter names and shapes an architecture implies (LLaMA names; no file access)."""

from __future__ import annotations

from bigtrain.model.configuration import BigTrainConfig


def expected_shapes(cfg: BigTrainConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of the architecture with its shape, in model order (LLaMA names). The one list of
    the model's tensors: loading, growth, counting (`counting.py`) and the planner derive from it."""
    outer = non_layer_shapes(cfg)
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": outer.pop("model.embed_tokens.weight")}
    for i in range(cfg.num_hidden_layers):
        out.update(layer_shapes(cfg, i, prefix=f"model.layers.{i}."))
    out.update(outer)
    return out


def non_layer_shapes(cfg: BigTrainConfig) -> dict[str, tuple[int, ...]]:
    """The input embedding, the final norm and an untied LM head."""
    d = cfg.hidden_size
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, d), "model.norm.weight": (d,)}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = (cfg.vocab_size, d)
    return out


def layer_shapes(cfg: BigTrainConfig, i: int, prefix: str = "") -> dict[str, tuple[int, ...]]:
    d, hd = cfg.hidden_size, cfg.head_dim
    q, kv, f = (
        cfg.layer_num_attention_heads[i],
        cfg.layer_num_key_value_heads[i],
        cfg.layer_intermediate_sizes[i],
    )
    out = {
        f"{prefix}input_layernorm.weight": (d,),
        f"{prefix}self_attn.q_proj.weight": (q * hd, d),
        f"{prefix}self_attn.k_proj.weight": (kv * hd, d),
        f"{prefix}self_attn.v_proj.weight": (kv * hd, d),
        f"{prefix}self_attn.o_proj.weight": (d, q * hd),
    }
    if f and cfg.layer_is_moe(i):  # a router, then E experts of width f (bigtrain/model/moe.py)
        out[f"{prefix}post_attention_layernorm.weight"] = (d,)
        out[f"{prefix}mlp.router.weight"] = (cfg.moe["num_experts"], d)  # type: ignore[index]
        for e in range(cfg.moe["num_experts"]):  # type: ignore[index]
            out[f"{prefix}mlp.experts.{e}.gate_proj.weight"] = (f, d)
            out[f"{prefix}mlp.experts.{e}.up_proj.weight"] = (f, d)
            out[f"{prefix}mlp.experts.{e}.down_proj.weight"] = (d, f)
    elif f:
        out[f"{prefix}post_attention_layernorm.weight"] = (d,)
        out[f"{prefix}mlp.gate_proj.weight"] = (f, d)
        out[f"{prefix}mlp.up_proj.weight"] = (f, d)
        out[f"{prefix}mlp.down_proj.weight"] = (d, f)
    return out
