"""Initialising and loading the weights of a (possibly ZeRO-3 partitioned) model, one module at a time.

Rank 0 initialises or reads each module's full weights and DeepSpeed broadcasts them to the owners of
the partitions, so no rank ever holds more than one module in full, and the initial weights do not
depend on the world size (rank 0 draws them in the same order whatever the number of ranks).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import deepspeed
import torch
from torch import nn

from bigtrain.ckpt.safetensors_reader import SafetensorsFile
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


class HFWeights:
    """The tensors of an HF safetensors directory (single file or sharded with an index)."""

    def __init__(self, directory: str | Path) -> None:
        d = Path(directory)
        index = d / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise BigtrainError(f"{index}: corrupt index ({e})") from None
            files = {f: SafetensorsFile(d / f) for f in sorted(set(weight_map.values())) if (d / f).exists()}
            missing = sorted(set(weight_map.values()) - set(files))
            if missing:
                raise BigtrainError(f"{d}: shard {missing[0]} named in the index is missing")
            self.where = {name: files[f] for name, f in weight_map.items()}
        elif (d / "model.safetensors").is_file():
            single = SafetensorsFile(d / "model.safetensors")
            self.where = dict.fromkeys(single.keys(), single)
        else:
            raise BigtrainError(f"{d}: no model.safetensors or model.safetensors.index.json")
        self.directory = d

    def names(self) -> set[str]:
        return set(self.where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.where[name].shape(name))

    def read(self, name: str) -> torch.Tensor:
        return self.where[name].read(name)


def load_weights(model: nn.Module, directory: str | Path, rank: int, strip_prefix: str = "") -> None:
    """Copy an HF directory's tensors into `model` (names and shapes must match exactly).

    Every rank checks names and shapes from the file headers first, so a mismatch fails everywhere
    at once instead of leaving ranks waiting inside a gather."""
    source = HFWeights(directory)
    shapes = {n.removeprefix(strip_prefix): tuple(getattr(p, "ds_shape", p.shape)) for n, p in model.named_parameters()}
    missing = set(shapes) - source.names()
    unexpected = source.names() - set(shapes) - {"lm_head.weight"}  # a tied head is stored by some writers
    if missing or unexpected:
        what = f"missing {sorted(missing)[:3]}" if missing else f"unexpected {sorted(unexpected)[:3]}"
        raise BigtrainError(f"init_from={directory}: weights do not match the model config ({what})")
    for name, shape in shapes.items():
        if source.shape(name) != shape:
            raise BigtrainError(
                f"init_from={directory}: {name} has shape {source.shape(name)}, the model needs {shape}"
            )
    for _, params in named_blocks(model):
        with gathered([p for _, p in params], modifier_rank=0):
            if rank != 0:
                continue
            for name, p in params:
                with torch.no_grad():
                    p.data.copy_(source.read(name.removeprefix(strip_prefix)).to(p.dtype))
