"""`step:`: STEP's frozen inherited layers with LoRA adapters (Yano et al., NAACL 2025)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from bigtrain.config.base import Section

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


class StepConfig(Section):
    """STEP: inherited layers frozen and adapted by LoRA (peft), new layers trained fully.
    `lora: false` is LLaMA Pro's stage (Wu et al., ACL 2024): the inherited layers frozen, no adapters,
    only the new blocks train (with `train_embeddings: false, train_lm_head: false` as the paper)."""

    lora: bool = True
    lora_rank: int = Field(default=64, ge=1)
    lora_alpha: float | None = None  # None: equal to the rank (scale 1)
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    targets: list[str] = Field(default_factory=lambda: list(PROJECTIONS))
    # The paper leaves these open; both default to trainable (see docs/staged.md).
    train_embeddings: bool = True
    train_lm_head: bool = True
    # RMSNorm weights of inherited layers: frozen with the rest of the layer by default.
    train_inherited_norms: bool = False
    # What of an inherited layer is frozen: all of it (STEP, LLaMA Pro), or its attention only (after
    # `grow: {op: upcycle}`: the inherited attention frozen, LoRA on it if `lora`, experts + router trained)
    freeze: Literal["layers", "attention"] = "layers"

    @model_validator(mode="after")
    def _known_targets(self) -> StepConfig:
        unknown = [t for t in self.targets if t not in PROJECTIONS]
        if unknown:
            raise ValueError(f"LoRA target {unknown[0]!r} matches no module (known: {', '.join(PROJECTIONS)})")
        if not self.targets:
            raise ValueError("LoRA targets are empty")
        if self.freeze == "attention" and self.lora and not self.lora_targets:
            raise ValueError("freeze: attention adapts the attention only; targets name no attention projection")
        return self

    @property
    def lora_targets(self) -> list[str]:
        """The projections that get adapters: the frozen ones among `targets`."""
        if self.freeze == "attention":
            return [t for t in self.targets if t in ATTENTION_PROJECTIONS]
        return list(self.targets)

    @property
    def scale(self) -> float:
        return (self.lora_alpha if self.lora_alpha is not None else self.lora_rank) / self.lora_rank
