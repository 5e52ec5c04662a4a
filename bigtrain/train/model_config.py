"""Which architecture a stage trains: the recipe's `model:` section, or the config of `init_from` (any
checkpoint `bigtrain.ckpt.source.open_checkpoint` reads: an HF dir, a run dir, a ZeRO-3 dir)."""

from __future__ import annotations

from bigtrain.ckpt.source import open_checkpoint
from bigtrain.config import ModelSpec, Recipe
from bigtrain.errors import BigtrainError
from bigtrain.model import BigTrainConfig


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def model_vocab_size(model: ModelSpec, tokenizer_vocab: int) -> int:
    """The embedding rows a recipe's model gets: `model.vocab_size`, else the tokenizer's size rounded up
    to a multiple of 64 (fast matmuls; the extra rows are never a target)."""
    return model.vocab_size or round_up(tokenizer_vocab, 64)


def resolve_model_config(recipe: Recipe, tokenizer_vocab: int) -> BigTrainConfig:
    """init_from fixes the architecture (the recipe's model sizes are then not used); otherwise the
    recipe's, with vocab_size defaulting to the tokenizer's size rounded up to a multiple of 64."""
    if recipe.init_from:
        try:
            cfg = open_checkpoint(recipe.init_from).config
        except BigtrainError as e:
            raise BigtrainError(f"init_from: {e}") from None
        where = f"init_from={recipe.init_from}"
        if cfg.moe is not None and recipe.model.moe is not None:  # the recipe's auxiliary-loss weights
            spec = recipe.model.moe
            if (spec.num_experts, spec.top_k) != (cfg.moe["num_experts"], cfg.moe["top_k"]):
                raise BigtrainError(
                    f"init_from={recipe.init_from}: {cfg.moe['num_experts']} experts top-{cfg.moe['top_k']}, "
                    f"model.moe says {spec.num_experts} top-{spec.top_k}"
                )
            cfg.moe = {**cfg.moe, "router_aux_loss_coef": spec.router_aux_loss_coef}
            cfg.moe["router_z_loss_coef"] = spec.router_z_loss_coef
    else:
        cfg = recipe.model.build_config(model_vocab_size(recipe.model, tokenizer_vocab))
        where = "model.vocab_size"
    if cfg.vocab_size < tokenizer_vocab:
        raise BigtrainError(f"{where}: vocab size {cfg.vocab_size} is below the tokenizer's {tokenizer_vocab} tokens")
    cfg._attn_implementation = recipe.model.attn_implementation
    return cfg
