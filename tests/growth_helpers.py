"""Tiny models and checkpoints shared by the growth tests (not a test module)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from bigtrain.model import BigTrainConfig, BigTrainForCausalLM

VOCAB = 32000  # the demo tokenizer's


def tiny_config(**over: object) -> BigTrainConfig:
    base: dict = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=3,
        head_dim=16,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        max_position_embeddings=256,
    )
    base.update(over)
    return BigTrainConfig(**base)


def llama_3_2_1b_config() -> BigTrainConfig:
    """The Llama-3.2-1B shape (1,235,814,400 parameters), the speed target of issue 11."""
    return BigTrainConfig(
        vocab_size=128256,
        hidden_size=2048,
        num_hidden_layers=16,
        head_dim=64,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
        tie_word_embeddings=True,
    )


def heterogeneous_config(**over: object) -> BigTrainConfig:
    """Per-layer FFN sizes, an attention-only layer, per-layer head counts."""
    return tiny_config(
        num_hidden_layers=4,
        layer_intermediate_sizes=[96, 0, 192, 48],
        layer_num_attention_heads=[4, 2, 4, 4],
        layer_num_key_value_heads=[2, 1, 4, 2],
        **over,
    )


def random_model(cfg: BigTrainConfig, seed: int = 0) -> BigTrainForCausalLM:
    """Random weights, norm gains away from 1 so a wrong gain shows in the logits."""
    torch.manual_seed(seed)
    model = BigTrainForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0, 0.05)
    return model


def state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def save_stock_llama(model: BigTrainForCausalLM, out: Path, max_shard_size: str = "2MB") -> Path:
    """Save as a stock transformers LLaMA checkpoint (sharded safetensors at this size)."""
    llama = LlamaForCausalLM(model.config.to_llama_config())
    llama.load_state_dict(model.state_dict(), strict=False)
    llama.save_pretrained(out, max_shard_size=max_shard_size)
    return out


def text_ids(tokenizer_dir: Path, text: str, length: int = 96) -> torch.Tensor:
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tok(text, return_tensors="pt").input_ids[:, :length]
    assert ids.shape[1] == length
    return ids
