"""A bigtrain MoE model as a stock transformers Mixtral, and back: the config and the tensor names.

Mixtral holds a model whose every layer is an MoE layer of the same sizes (experts, top-k, expert width,
heads) with the top-k weights renormalised (bigtrain's `normalize_top_k`); the router z-loss coefficient
has no place in Mixtral's config and is not exported. The tensors are written under Mixtral's per-expert
checkpoint names, which every transformers version reads (5.x fuses them into `mlp.experts.gate_up_proj` /
`down_proj` on load, its conversion mapping):

    mlp.router.weight               -> block_sparse_moe.gate.weight
    mlp.experts.{e}.gate_proj.weight -> block_sparse_moe.experts.{e}.w1.weight
    mlp.experts.{e}.down_proj.weight -> block_sparse_moe.experts.{e}.w2.weight
    mlp.experts.{e}.up_proj.weight   -> block_sparse_moe.experts.{e}.w3.weight

Everything else keeps its (LLaMA) name. Pure functions, no files.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable

from transformers import MixtralConfig, PreTrainedConfig

from bigtrain.model.configuration import MOE_DEFAULTS, BigTrainConfig

_TO_MIXTRAL = [
    (re.compile(r"\.mlp\.router\.weight$"), ".block_sparse_moe.gate.weight"),
    (re.compile(r"\.mlp\.experts\.(\d+)\.gate_proj\.weight$"), r".block_sparse_moe.experts.\1.w1.weight"),
    (re.compile(r"\.mlp\.experts\.(\d+)\.down_proj\.weight$"), r".block_sparse_moe.experts.\1.w2.weight"),
    (re.compile(r"\.mlp\.experts\.(\d+)\.up_proj\.weight$"), r".block_sparse_moe.experts.\1.w3.weight"),
]
_FROM_MIXTRAL = [
    (re.compile(r"\.block_sparse_moe\.gate\.weight$"), ".mlp.router.weight"),
    (re.compile(r"\.block_sparse_moe\.experts\.(\d+)\.w1\.weight$"), r".mlp.experts.\1.gate_proj.weight"),
    (re.compile(r"\.block_sparse_moe\.experts\.(\d+)\.w2\.weight$"), r".mlp.experts.\1.down_proj.weight"),
    (re.compile(r"\.block_sparse_moe\.experts\.(\d+)\.w3\.weight$"), r".mlp.experts.\1.up_proj.weight"),
]


# the fields LLaMA and Mixtral configs share (the rest: the experts; sliding_window stays None)
SHARED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "rope_parameters",
    "attention_dropout",
    "tie_word_embeddings",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
)


def _rename(name: str, rules: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, repl in rules:
        new, n = pattern.subn(repl, name)
        if n:
            return new
    return name


def mixtral_name(name: str) -> str:
    return _rename(name, _TO_MIXTRAL)


def bigtrain_name(name: str) -> str:
    return _rename(name, _FROM_MIXTRAL)


def mixtral_problem(cfg: BigTrainConfig) -> str | None:
    """Why this model cannot be a stock Mixtral (None: it can)."""
    if cfg.moe is None:
        return "a dense model"
    if not all(cfg.layer_is_moe(i) for i in range(cfg.num_hidden_layers)):
        return "not every layer is an MoE layer"
    dense = copy.deepcopy(cfg)
    dense.moe = None
    if not dense.is_uniform:
        return "the layers' sizes differ"
    if not cfg.moe["normalize_top_k"]:
        return "normalize_top_k is false (Mixtral renormalises the top-k weights)"
    return None


def is_mixtral(cfg: BigTrainConfig) -> bool:
    return mixtral_problem(cfg) is None


def to_mixtral_config(cfg: BigTrainConfig) -> MixtralConfig:
    problem = mixtral_problem(cfg)
    if problem:
        raise ValueError(f"not a Mixtral layout: {problem}")
    dense = copy.deepcopy(cfg)
    dense.moe = None
    llama = dense.to_llama_config()
    return MixtralConfig(
        **{k: getattr(llama, k) for k in SHARED_FIELDS},
        num_local_experts=cfg.moe["num_experts"],  # type: ignore[index]
        num_experts_per_tok=cfg.moe["top_k"],  # type: ignore[index]
        router_aux_loss_coef=cfg.moe["router_aux_loss_coef"],  # type: ignore[index]
        router_jitter_noise=0.0,
        sliding_window=None,
        output_router_logits=False,
    )


def from_mixtral_config(cfg: MixtralConfig) -> BigTrainConfig:
    from transformers import LlamaConfig

    out = BigTrainConfig.from_llama_config(LlamaConfig(**{k: getattr(cfg, k) for k in SHARED_FIELDS}))
    out.moe = {
        **MOE_DEFAULTS,
        "num_experts": cfg.num_local_experts,
        "top_k": cfg.num_experts_per_tok,
        "router_aux_loss_coef": cfg.router_aux_loss_coef,
    }
    return out


def hf_config(cfg: BigTrainConfig) -> tuple[PreTrainedConfig, str]:
    """(config, architecture) an HF directory of this model carries: a stock LLaMA (uniform dense), a stock
    Mixtral (is_mixtral), else bigtrain's own."""
    if cfg.is_uniform:
        return cfg.to_llama_config(), "LlamaForCausalLM"
    if is_mixtral(cfg):
        return to_mixtral_config(cfg), "MixtralForCausalLM"
    return BigTrainConfig.from_dict(cfg.to_dict()), "BigTrainForCausalLM"


def hf_name(cfg: BigTrainConfig) -> Callable[[str], str]:
    """The tensor names in that directory (Mixtral's for a Mixtral layout, else bigtrain's = LLaMA's)."""
    return mixtral_name if is_mixtral(cfg) else str
