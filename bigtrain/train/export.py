"""Export the trained model as an HF directory (safetensors + config + tokenizer).

Parameters are gathered one block (a decoder layer, or embeddings / norm / head) at a time and
streamed into shards by rank 0, so exporting never needs the whole model twice in memory. A uniform
model is written as a stock `LlamaForCausalLM`; a heterogeneous one as `model_type: bigtrain`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from bigtrain.ckpt.atomic import atomic_directory
from bigtrain.ckpt.safetensors_writer import ShardedSafetensorsWriter
from bigtrain.model import BigTrainConfig
from bigtrain.train.distributed import World, barrier
from bigtrain.train.weights import gathered, named_blocks

BlockTransform = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def export_config(cfg: BigTrainConfig, dtype: torch.dtype) -> BigTrainConfig:
    out = cfg.to_llama_config() if cfg.is_uniform else BigTrainConfig.from_dict(cfg.to_dict())
    out.architectures = ["LlamaForCausalLM" if cfg.is_uniform else "BigTrainForCausalLM"]
    out.dtype = dtype
    return out


def export_hf(
    module: nn.Module,
    cfg: BigTrainConfig,
    out_dir: Path,
    tokenizer_dir: Path | None,
    world: World,
    transform: BlockTransform | None = None,
    max_shard_bytes: int = 2 * 1024**3,
) -> None:
    """Collective: every rank calls it; rank 0 writes `out_dir` atomically (replacing an older export)."""
    context = atomic_directory(out_dir, overwrite=True) if world.is_main else None
    tmp = context.__enter__() if context else None
    try:
        writer = ShardedSafetensorsWriter(tmp, max_shard_bytes) if tmp else None
        dtype = torch.float32
        for _, params in named_blocks(module):
            with gathered([p for _, p in params], modifier_rank=None):
                if writer is None:
                    continue
                block = {name: p.detach().to("cpu", copy=True) for name, p in params}
                for name, tensor in (transform(block) if transform else block).items():
                    dtype = tensor.dtype
                    writer.add(name, tensor)
        if writer is not None and tmp is not None:
            writer.close()
            export_config(cfg, dtype).save_pretrained(tmp)
            if tokenizer_dir is not None:
                from transformers import AutoTokenizer

                AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(tmp)
    except BaseException as e:
        if context:
            context.__exit__(type(e), e, e.__traceback__)
        raise
    if context:
        context.__exit__(None, None, None)
    barrier()
