"""The model configuration: a LLaMA decoder whose sizes may differ layer by layer.

The per-layer lists are the one source of truth for the architecture. The scalar
`intermediate_size` / `num_attention_heads` / `num_key_value_heads` describe the isotropic
reference the layout was derived from; a uniform model is the case where every layer equals it.
"""

from __future__ import annotations

from typing import Any

from transformers import LlamaConfig, PreTrainedConfig


class BigTrainConfig(PreTrainedConfig):
    model_type = "bigtrain"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 32000
    hidden_size: int = 512
    num_hidden_layers: int = 8
    head_dim: int = 64
    num_attention_heads: int = 8
    num_key_value_heads: int = 8
    intermediate_size: int = 1408
    # Per layer; None means "the reference value in every layer". 0 FFN = attention-only layer.
    layer_intermediate_sizes: list[int] | None = None
    layer_num_attention_heads: list[int] | None = None
    layer_num_key_value_heads: list[int] | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5
    rope_parameters: dict | None = None
    attention_dropout: float = 0.0
    use_cache: bool = True
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    # Mixture-of-Experts FFNs (bigtrain/model/moe.py): None = dense. Keys: num_experts, top_k, every_n_layers,
    # router_aux_loss_coef, router_z_loss_coef, normalize_top_k (MOE_DEFAULTS). In an MoE layer
    # `layer_intermediate_sizes[i]` is the width of each expert.
    moe: dict | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        n = self.num_hidden_layers
        if self.layer_intermediate_sizes is None:
            self.layer_intermediate_sizes = [self.intermediate_size] * n
        if self.layer_num_attention_heads is None:
            self.layer_num_attention_heads = [self.num_attention_heads] * n
        if self.layer_num_key_value_heads is None:
            self.layer_num_key_value_heads = [self.num_key_value_heads] * n
        self.layer_intermediate_sizes = [int(x) for x in self.layer_intermediate_sizes]
        self.layer_num_attention_heads = [int(x) for x in self.layer_num_attention_heads]
        self.layer_num_key_value_heads = [int(x) for x in self.layer_num_key_value_heads]
        if self.rope_parameters is None:
            self.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
        if self.moe is not None:
            self.moe = {**MOE_DEFAULTS, **self.moe}
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """A dense model's config.json is as before MoE existed (no `moe: null`)."""
        out = super().to_dict()
        if out.get("moe") is None:
            out.pop("moe", None)
        return out

    def validate_architecture(self) -> None:
        problems = architecture_problems(self)
        if problems:
            raise ValueError(problems[0])

    # --- derived facts -------------------------------------------------------------------------
    def layer_is_moe(self, i: int) -> bool:
        """Whether layer i's FFN is a mixture of experts: every `every_n_layers`-th layer, counting from the
        top of each group (every_n_layers 2: layers 1, 3, 5, ...), and only layers that have an FFN."""
        if self.moe is None or not self.layer_intermediate_sizes[i]:
            return False
        return (i + 1) % int(self.moe["every_n_layers"]) == 0

    @property
    def is_moe(self) -> bool:
        return any(self.layer_is_moe(i) for i in range(self.num_hidden_layers))

    @property
    def is_uniform(self) -> bool:
        """Equal sizes in every layer and dense: a stock LLaMA."""
        return (
            self.moe is None
            and set(self.layer_intermediate_sizes) == {self.intermediate_size}
            and set(self.layer_num_attention_heads) == {self.num_attention_heads}
            and set(self.layer_num_key_value_heads) == {self.num_key_value_heads}
        )

    def to_llama_config(self) -> LlamaConfig:
        """The stock transformers config of a uniform model (same parameter names, same function)."""
        if not self.is_uniform:
            raise ValueError("only a uniform dense model (equal sizes in every layer) exports as a stock LLaMA")
        return LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            hidden_act=self.hidden_act,
            max_position_embeddings=self.max_position_embeddings,
            initializer_range=self.initializer_range,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters=dict(self.rope_parameters),
            attention_dropout=self.attention_dropout,
            tie_word_embeddings=self.tie_word_embeddings,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
        )

    @classmethod
    def from_llama_config(cls, cfg: LlamaConfig) -> BigTrainConfig:
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        rope = getattr(cfg, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0}
        eos = cfg.eos_token_id[0] if isinstance(cfg.eos_token_id, list) else cfg.eos_token_id
        return cls(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_hidden_layers,
            head_dim=head_dim,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads or cfg.num_attention_heads,
            intermediate_size=cfg.intermediate_size,
            hidden_act=cfg.hidden_act,
            max_position_embeddings=cfg.max_position_embeddings,
            initializer_range=cfg.initializer_range,
            rms_norm_eps=cfg.rms_norm_eps,
            rope_parameters=dict(rope),
            tie_word_embeddings=bool(cfg.tie_word_embeddings),
            pad_token_id=cfg.pad_token_id,
            bos_token_id=cfg.bos_token_id,
            eos_token_id=eos,
        )


MOE_DEFAULTS: dict[str, Any] = {
    "num_experts": 8,
    "top_k": 2,
    "every_n_layers": 1,
    "router_aux_loss_coef": 0.01,
    "router_z_loss_coef": 0.001,
    "normalize_top_k": True,
}


def moe_problems(moe: dict[str, Any]) -> list[str]:
    out = [f"moe: unknown key {k!r} (known: {', '.join(MOE_DEFAULTS)})" for k in moe if k not in MOE_DEFAULTS]
    e, k, n = moe.get("num_experts", 0), moe.get("top_k", 0), moe.get("every_n_layers", 1)
    if e < 1:
        out.append(f"moe: num_experts must be >= 1, got {e}")
    if not 1 <= k <= max(e, 1):
        out.append(f"moe: top_k must be in [1, num_experts = {e}], got {k}")
    if n < 1:
        out.append(f"moe: every_n_layers must be >= 1, got {n}")
    return out


def architecture_problems(cfg: BigTrainConfig) -> list[str]:
    """Every reason this architecture cannot be built, as one-line messages (empty when fine)."""
    n = cfg.num_hidden_layers
    out: list[str] = []
    if n < 1:
        out.append(f"num_hidden_layers must be >= 1, got {n}")
    if cfg.head_dim < 2 or cfg.head_dim % 2:
        out.append(f"head_dim must be even (RoPE rotates pairs), got {cfg.head_dim}")
    for name in ("layer_intermediate_sizes", "layer_num_attention_heads", "layer_num_key_value_heads"):
        values = getattr(cfg, name)
        if len(values) != n:
            out.append(f"{name} has {len(values)} entries for {n} layers")
    if cfg.moe is not None:
        out.extend(moe_problems(cfg.moe))
    if out:
        return out
    for i, (ffn, q, kv) in enumerate(
        zip(cfg.layer_intermediate_sizes, cfg.layer_num_attention_heads, cfg.layer_num_key_value_heads)
    ):
        if ffn < 0:
            out.append(f"layer {i}: FFN size {ffn} is negative")
        if q < 1 or kv < 1:
            out.append(f"layer {i}: needs at least one query and one kv head, got {q} and {kv}")
        elif q % kv:
            out.append(f"layer {i}: {q} query heads are not divisible by {kv} kv heads")
    return out
