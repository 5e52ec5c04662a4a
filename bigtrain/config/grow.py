"""`grow:`: how a stage's model is grown from the previous stage, and how the training state is handed over."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from bigtrain.config.base import Section

# GrowSpec size field -> the ModelSpec field it sets
# A later stage's sizes come from grow:, never from model: (the weights must come from somewhere)
SIZE_FIELDS = (
    "num_layers",
    "hidden_size",
    "intermediate_size",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "vocab_size",
    "tie_embeddings",
    "layout",
    "moe",
)


GROW_SIZES = {
    "layers": "num_layers",
    "hidden": "hidden_size",
    "ffn": "intermediate_size",
    "heads": "num_heads",
    "kv_heads": "num_kv_heads",
}


class GrowSpec(Section):
    """How a stage's model is grown from the previous stage's export (names as `bigtrain-grow` flags)."""

    op: str
    layers: int | None = None
    hidden: int | None = None
    ffn: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    init: str | None = None
    seed: int | None = None
    # width replicas (net2net, aki): asymmetric (LEMON; the default when unset) | noise (Net2Net) | even (FPI)
    split: Literal["asymmetric", "noise", "even"] | None = None
    split_spread: float | None = Field(default=None, ge=0, lt=1)  # asymmetric: u ~ U(1-s, 1+s); default 0.5
    noise_std: float | None = Field(default=None, ge=0)  # noise: relative std; default 0.01
    placement: Literal["upper", "after-each"] | None = None  # step/zero-depth/random-depth; default upper
    drop: int | None = Field(default=None, ge=0)  # dus: layers dropped from each copy (give layers too)
    block: int | None = Field(default=None, ge=1)  # middle-stack: layers in the replicated middle block
    snr_db: float | None = None  # hypercloning: SNR (dB) of the function-keeping +-noise; none when unset
    # upcycle (dense -> MoE, bigtrain/growth/upcycle.py): E copies of each FFN, top-k, G shards per copy,
    # Drop-Upcycling's re-initialised fraction, the router's init (normal, the default, or zeros)
    experts: int | None = Field(default=None, ge=1)
    top_k: int | None = Field(default=None, ge=1)
    granularity: int | None = Field(default=None, ge=1)
    drop_ratio: float | None = Field(default=None, ge=0, le=1)
    router_init: Literal["normal", "zeros"] | None = None
    # The hand-over (docs/staged.md): grow the previous stage's last training checkpoint (its fp32 masters) or
    # its export; `carry` maps its Adam moments through the operator too (new parameters start at zero
    # moments, the step count goes on); `rewarm_steps` re-warms the LR after the growth.
    source: Literal["checkpoint", "export"] = "checkpoint"
    optimizer: Literal["fresh", "carry"] = "fresh"
    rewarm_steps: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _known_op(self) -> GrowSpec:
        from bigtrain.growth.registry import DEPTH_OPS, MOE_OPS, WIDTH_OPS, known  # the one list of operators

        parts = self.op.split("+")
        for part in parts:
            if part not in DEPTH_OPS + WIDTH_OPS + MOE_OPS:
                raise ValueError(f"unknown growth op {part!r} (known: {known()})")
        if any(p in MOE_OPS for p in parts):
            if len(parts) > 1:
                raise ValueError(f"op {self.op!r}: upcycle is used alone, not composed with '+'")
            if self.experts is None or self.top_k is None:
                raise ValueError("op upcycle: give experts and top_k")
            if self.top_k > self.experts:
                raise ValueError(f"op upcycle: top_k {self.top_k} exceeds experts {self.experts}")
        if sum(p in DEPTH_OPS for p in parts) > 1 or sum(p in WIDTH_OPS for p in parts) > 1:
            raise ValueError(f"op {self.op!r}: at most one depth and one width operator, joined by '+'")
        if "dus" in parts and self.layers is None:
            # the stage's depth must be known when the recipe is read, before the source exists
            raise ValueError("op dus: give layers (2 (L - drop)); drop alone does not size the stage")
        if self.optimizer == "carry" and self.source == "export":
            raise ValueError("optimizer: carry needs source: checkpoint (an export holds no optimizer state)")
        return self

    def sizes(self) -> dict[str, Any]:
        """The ModelSpec fields this growth sets (upcycle: `moe`; its expert width is set by the stage)."""
        out: dict[str, Any] = {GROW_SIZES[k]: v for k in GROW_SIZES if (v := getattr(self, k)) is not None}
        if self.experts is not None and self.top_k is not None:
            g = self.granularity or 1
            out["moe"] = {"num_experts": self.experts * g, "top_k": self.top_k * g}
        return out

    def grow_args(self) -> dict[str, Any]:
        """Keyword arguments for `bigtrain.growth.grow_checkpoint` (op excluded)."""
        skip = ("op", *HANDOVER_FIELDS)
        return {k: v for k, v in self.model_dump().items() if k not in skip and v is not None}


HANDOVER_FIELDS = ("source", "optimizer", "rewarm_steps")  # GrowSpec fields that are not operator arguments
