"""Model shapes the benchmarks share, so "1b" means the same model in every one of them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelPreset:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    seq_len: int
    micro_batch: int
    global_batch: int  # micro_batch x accumulation on one rank
    rope_theta: float
    lr: float
    max_tokens: int | None  # tokenise at most this much of the demo corpus (enough for the steps)


# the demo recipe's model (recipes/demo.yaml); two micro batches per step to exercise accumulation
DEMO = ModelPreset(256, 4, 4, 2, 64, 688, 32000, 256, 4, 8, 10000.0, 1e-3, 200_000)
# Llama-3.2-1B: 1.24B parameters, tied; 32 query / 8 kv heads of 64, FFN 8192, vocab 128256; rope theta as
# Llama 3 (without its long-context scaling)
LLAMA_1B = ModelPreset(2048, 16, 32, 8, 64, 8192, 128256, 2048, 4, 16, 500000.0, 3e-4, None)
