"""Which architecture a stage trains: the recipe's `model:` section, or the config of `init_from`."""

from __future__ import annotations

import json
from pathlib import Path

from bigtrain.config import Recipe
from bigtrain.errors import BigtrainError
from bigtrain.model import BigTrainConfig


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def read_model_config(directory: str | Path) -> BigTrainConfig:
    """An exported/grown/stock-LLaMA directory's config as a BigTrainConfig."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise BigtrainError(f"init_from={directory}: no config.json")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BigtrainError(f"{path}: invalid JSON ({e.msg})") from None
    kind = raw.get("model_type")
    if kind == "bigtrain":
        return BigTrainConfig.from_pretrained(str(directory))
    if kind == "llama":
        from transformers import LlamaConfig

        return BigTrainConfig.from_llama_config(LlamaConfig.from_pretrained(str(directory)))
    raise BigtrainError(f"{path}: model_type {kind!r} is not a LLaMA-architecture model (llama or bigtrain)")


def resolve_model_config(recipe: Recipe, tokenizer_vocab: int) -> BigTrainConfig:
    """init_from fixes the architecture (the recipe's model sizes are then not used); otherwise the
    recipe's, with vocab_size defaulting to the tokenizer's size rounded up to a multiple of 64."""
    if recipe.init_from:
        cfg = read_model_config(recipe.init_from)
        where = f"init_from={recipe.init_from}"
    else:
        vocab = recipe.model.vocab_size or round_up(tokenizer_vocab, 64)
        cfg = recipe.model.build_config(vocab)
        where = "model.vocab_size"
    if cfg.vocab_size < tokenizer_vocab:
        raise BigtrainError(f"{where}: vocab size {cfg.vocab_size} is below the tokenizer's {tokenizer_vocab} tokens")
    cfg._attn_implementation = recipe.model.attn_implementation
    return cfg
