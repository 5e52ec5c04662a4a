"""Initialising and loading the weights of a (possibly ZeRO-3 partitioned) model, one module at a time.

Rank 0 initialises or reads each module's full weights and DeepSpeed broadcasts them to the owners of
the partitions, so no rank ever holds more than one module in full, and the initial weights do not
depend on the world size (rank 0 draws them in the same order whatever the number of ranks).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import deepspeed
import torch
from torch import nn

from bigtrain.ckpt.source import CheckpointSource
from bigtrain.errors import BigtrainError

BLOCK = re.compile(r"^(.*?\.layers\.\d+)\.")


def block_of(name: str) -> str:
    """The unit gathered at once: a decoder layer, or a top-level module (embeddings, norm, head)."""
    m = BLOCK.match(name)
    return m.group(1) if m else name.rsplit(".", 1)[0]


def named_blocks(module: nn.Module) -> Iterator[tuple[str, list[tuple[str, nn.Parameter]]]]:
    current, params = None, []
    for name, p in module.named_parameters():
        b = block_of(name)
        if params and b != current:
            yield current, params  # type: ignore[misc]
            params = []
        current = b
        params.append((name, p))
    if params:
        yield current, params  # type: ignore[misc]


def gathered(params: list[nn.Parameter], modifier_rank: int | None) -> deepspeed.zero.GatheredParameters:
    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def initialize_weights(model: nn.Module, seed: int, rank: int) -> None:
    """The model's own init scheme (`_init_weights`), applied module by module on rank 0."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if not params:
            continue
        with gathered(params, modifier_rank=0):
            if rank == 0:
                model._init_weights(module)  # type: ignore[operator]
    torch.random.set_rng_state(generator_state)


def load_weights(model: nn.Module, source: CheckpointSource, rank: int, strip_prefix: str = "") -> None:
    """Copy a checkpoint's tensors into `model` (names and shapes must match exactly).

    Every rank checks names and shapes (from file headers) first, so a mismatch fails everywhere at
    once instead of leaving ranks waiting inside a gather."""
    shapes = {n.removeprefix(strip_prefix): tuple(getattr(p, "ds_shape", p.shape)) for n, p in model.named_parameters()}
    missing = sorted(set(shapes) - set(source))
    if missing:
        raise BigtrainError(f"init_from={source.path}: weights do not match the model config (missing {missing[:3]})")
    for name, shape in shapes.items():
        if source.shape(name) != shape:
            raise BigtrainError(
                f"init_from={source.path}: {name} has shape {source.shape(name)}, the model needs {shape}"
            )
    for _, params in named_blocks(model):
        with gathered([p for _, p in params], modifier_rank=0):
            if rank != 0:
                continue
            for name, p in params:
                with torch.no_grad():
                    p.data.copy_(source[name.removeprefix(strip_prefix)].to(p.dtype))
