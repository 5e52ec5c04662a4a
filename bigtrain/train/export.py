"""Export the trained model as an HF directory (safetensors + config + tokenizer).

Parameters are gathered one block (a decoder layer, or embeddings / norm / head) at a time and
appended to the shards by rank 0 (the shard headers are planned from the config), so exporting holds
one block, never the model. A uniform model is written as a stock `LlamaForCausalLM`, an MoE model whose
layout Mixtral holds (every layer MoE, uniform sizes: bigtrain/model/mixtral.py) as a stock
`MixtralForCausalLM`; any other as `model_type: bigtrain`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedConfig

from bigtrain.ckpt.atomic import atomic_directory
from bigtrain.ckpt.safetensors_writer import StreamingSafetensorsWriter
from bigtrain.model import BigTrainConfig
from bigtrain.model.mixtral import hf_config, hf_name
from bigtrain.model.param_shapes import expected_shapes
from bigtrain.train.distributed import World, barrier
from bigtrain.train.weights import gathered, named_blocks

BlockTransform = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def export_config(cfg: BigTrainConfig, dtype: torch.dtype) -> PreTrainedConfig:
    out, arch = hf_config(cfg)
    out.architectures = [arch]
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
        dtype = next(module.parameters()).dtype
        rename = hf_name(cfg)
        plan = [(rename(name), shape, dtype) for name, shape in expected_shapes(cfg).items()]
        order = {name: i for i, name in enumerate(expected_shapes(cfg))}
        writer = StreamingSafetensorsWriter(tmp, plan, max_shard_bytes) if tmp else None
        for _, params in named_blocks(module):
            with gathered([p for _, p in params], modifier_rank=None):
                if writer is None:
                    continue
                block = {name: p.detach().to("cpu", copy=True) for name, p in params}
                block = transform(block) if transform else block
                for name in sorted(block, key=lambda n: order[n]):
                    writer.write(rename(name), block[name].to(dtype))
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
