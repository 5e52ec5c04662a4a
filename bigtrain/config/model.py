"""`model:`: the isotropic reference architecture and its layer-wise layout."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from bigtrain.config.base import Section
from bigtrain.errors import RecipeError
from bigtrain.model.configuration import BigTrainConfig, architecture_problems
from bigtrain.model.layout import derive_layers


class LayoutConfig(Section):
    """How per-layer sizes derive from the isotropic reference (bigtrain/model/layout.py, docs/layouts.md)."""

    scheme: Literal["uniform", "ffn-concentrate", "lws", "reverse", "framed", "crown"] = "uniform"
    # ffn-concentrate: share of layers that keep an FFN, where they sit, how the widened FFNs are rounded
    ratio: float | None = None
    position: Literal["first", "middle", "final"] = "middle"
    ffn_rounding: Literal["common", "spread"] = "common"
    # lws / framed: [first layer, last layer] growing; reverse: shrinking; crown: [edge, peak, edge].
    # Multipliers of hidden_size (beta: FFN width, alpha: query width); None: OpenELM's 0.5-4.0 / 0.5-1.0.
    ffn_mult: list[float] | None = None
    attn_mult: list[float] | None = None
    # Pin the first and last layers to the reference, or to these multipliers of hidden_size.
    frame: bool = False
    frame_ffn_mult: float | None = None
    frame_attn_mult: float | None = None
    # Scale the multipliers by one common factor so the parameter count matches the reference.
    match_params: bool = False
    match_scale: Literal["both", "ffn", "attn"] = "both"
    # FFN widths are made divisible by this (OpenELM and the FFN study: 256).
    ffn_multiple: int = 256


class MoESpec(Section):
    """`model.moe:`: Mixture-of-Experts FFNs (bigtrain/model/moe.py). `intermediate_size` is then each expert's
    width; every `every_n_layers`-th layer (counting from the top of each group) is MoE."""

    num_experts: int = Field(ge=1)
    top_k: int = Field(ge=1)
    every_n_layers: int = Field(default=1, ge=1)
    router_aux_loss_coef: float = Field(default=0.01, ge=0)
    router_z_loss_coef: float = Field(default=0.001, ge=0)
    normalize_top_k: bool = True  # renormalise the k chosen probabilities to sum to 1 (Mixtral)

    @model_validator(mode="after")
    def _k_within(self) -> MoESpec:
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k {self.top_k} exceeds num_experts {self.num_experts}")
        return self


class ModelSpec(Section):
    """The recipe's `model:` section: the isotropic reference plus a layout scheme."""

    hidden_size: int = 256
    num_layers: int = 4
    head_dim: int = 64
    num_heads: int = 4
    num_kv_heads: int | None = None
    intermediate_size: int = 688
    # None: the tokenizer's size rounded up to a multiple of 64. Never below the tokenizer's size.
    vocab_size: int | None = None
    tie_embeddings: bool = False
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    init_std: float = 0.02
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flex_attention"] = "sdpa"
    layout: LayoutConfig = Field(default_factory=LayoutConfig)
    moe: MoESpec | None = None

    def build_config(self, vocab_size: int | None = None) -> BigTrainConfig:
        """The model config with the per-layer sizes that the layout scheme gives."""
        ffn, heads, kv = derive_layers(self)
        return BigTrainConfig(
            vocab_size=vocab_size or self.vocab_size or 32000,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            head_dim=self.head_dim,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads or self.num_heads,
            intermediate_size=self.intermediate_size,
            layer_intermediate_sizes=ffn,
            layer_num_attention_heads=heads,
            layer_num_key_value_heads=kv,
            max_position_embeddings=self.max_position_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            rms_norm_eps=self.rms_norm_eps,
            initializer_range=self.init_std,
            tie_word_embeddings=self.tie_embeddings,
            moe=self.moe.model_dump() if self.moe else None,
        )


def check_model(spec: ModelSpec, source: str) -> BigTrainConfig:
    """Derive the per-layer architecture now, so a bad layout fails at load, not inside a rank."""
    try:
        cfg = spec.build_config()
    except ValueError as e:
        raise RecipeError(f"{source}: model: {e}") from None
    problems = architecture_problems(cfg)
    if problems:
        raise RecipeError(f"{source}: model: {problems[0]}")
    return cfg
