"""Read the fp32 master weights of a DeepSpeed ZeRO-3 checkpoint, one parameter at a time.

Layout (as `deepspeed/utils/zero_to_fp32.py` reconstructs it): every rank's
`*_optim_states.pt` holds `optimizer_state_dict.fp32_flat_groups`, a list of flat fp32 tensors;
concatenated, they are that rank's partition of every trainable parameter in the order of
`param_shapes` (model-states file), each parameter taking ceil(numel / world_size) elements
(the last rank's share zero-padded). The Adam moments sit in the same files, as
`optimizer_state_dict.optimizer_state_dict.state[i]` (`exp_avg`, `exp_avg_sq`), flat like the i-th
group. Frozen parameters are stored per rank as `frozen_param_fragments` in the model-states files. Rank files are opened with `mmap=True` for
each read and closed again, so neither the optimizer moments nor earlier parameters stay resident.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from bigtrain.errors import BigtrainError

OPTIM_GLOB = "*_optim_states.pt"
MODEL_GLOB = "*_model_states.pt"
FP32 = "fp32"


def _natural(path: Path) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def is_zero3_dir(path: Path) -> bool:
    return path.is_dir() and any(path.glob(OPTIM_GLOB))


def _load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as e:  # torch raises many types for a damaged zip/pickle
        raise BigtrainError(f"{path}: cannot read DeepSpeed checkpoint file ({type(e).__name__}: {e})") from None


def _strip(name: str) -> str:
    return name.removeprefix("module.")


class Zero3Checkpoint:
    """Parameter name -> fp32 tensor, gathered from all ranks' partitions on demand."""

    def __init__(self, tag_dir: str | Path) -> None:
        self.dir = Path(tag_dir)
        self.optim_files = sorted(self.dir.glob(OPTIM_GLOB), key=_natural)
        self.model_files = sorted(self.dir.glob(MODEL_GLOB), key=_natural)
        if not self.optim_files or not self.model_files:
            raise BigtrainError(f"{self.dir}: not a DeepSpeed checkpoint (no *_optim_states.pt / *_model_states.pt)")
        osd = _load(self.optim_files[0]).get("optimizer_state_dict", {})
        if osd.get("zero_stage") != 3:
            raise BigtrainError(f"{self.dir}: a ZeRO stage {osd.get('zero_stage')} checkpoint; bigtrain reads stage 3")
        world = osd.get("partition_count")
        self.world_size = max(world) if isinstance(world, list) else int(world)
        if self.world_size != len(self.optim_files):
            raise BigtrainError(
                f"{self.dir}: saved by {self.world_size} ranks but {len(self.optim_files)} optim_states files present"
            )
        # the flat groups have equal sizes on every rank; their boundaries are where a parameter may straddle
        self.group_sizes = [int(t.numel()) for t in osd["fp32_flat_groups"]]
        ms = _load(self.model_files[0])
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.offsets: dict[str, int] = {}  # start of the parameter's partition inside each rank's flat buffer
        offset = 0
        for group in ms["param_shapes"]:
            for name, shape in group.items():
                self.shapes[_strip(name)] = tuple(shape)
                self.offsets[_strip(name)] = offset
                offset += math.ceil(math.prod(shape) / self.world_size)
        if offset != sum(self.group_sizes):
            raise BigtrainError(
                f"{self.dir}: parameter shapes need {offset} elements per rank, flat groups hold {sum(self.group_sizes)}"
            )
        self.frozen: dict[str, str] = {}  # stripped name -> name as saved
        for name, shape in (ms.get("frozen_param_shapes") or {}).items():
            self.shapes[_strip(name)] = tuple(shape)
            self.frozen[_strip(name)] = name
        if len(self.model_files) != self.world_size and self.frozen:
            raise BigtrainError(f"{self.dir}: frozen parameters need one model_states file per rank")
        # tied parameters are saved once; the alias maps to its source
        self.aliases = {_strip(a): _strip(b) for a, b in (ms.get("shared_params") or {}).items()}
        del osd, ms

    def adam_step(self) -> int:
        """The optimizer's step count (every parameter group steps together)."""
        state = _load(self.optim_files[0])["optimizer_state_dict"]["optimizer_state_dict"].get("state") or {}
        if not state:
            raise BigtrainError(f"{self.dir}: the checkpoint holds no optimizer state (saved before the first step)")
        step = state[0]["step"]
        return int(step.item() if torch.is_tensor(step) else step)

    def keys(self) -> list[str]:
        return list(self.shapes)

    def is_frozen(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.frozen

    def read(self, name: str, key: str = FP32) -> torch.Tensor:
        shape = self.shapes[self.aliases.get(name, name)]
        return self.read_rows(name, 0, shape[0], key).view(shape)

    def read_rows(self, name: str, start: int, stop: int, key: str = FP32) -> torch.Tensor:
        """Rows [start, stop): elements [start * cols, stop * cols) of the flattened parameter, taken
        from the ranks whose partitions they fall in. `key`: the fp32 master weights, or one of the
        optimizer's per-parameter states (`exp_avg`, `exp_avg_sq`; trainable parameters only)."""
        name = self.aliases.get(name, name)
        shape = self.shapes[name]
        row = math.prod(shape[1:])
        stop = min(stop, shape[0])
        lo, hi = start * row, stop * row
        if name in self.frozen:
            if key != FP32:
                raise BigtrainError(f"{self.dir}: {name} is frozen and has no optimizer state {key!r}")
            parts = [_load(f)["frozen_param_fragments"][self.frozen[name]].clone() for f in self.model_files]
            return torch.cat(parts)[lo:hi].view(-1, *shape[1:]).float()
        per_rank = math.ceil(math.prod(shape) / self.world_size)
        parts = []
        for r, f in enumerate(self.optim_files):
            a, b = max(lo, r * per_rank), min(hi, (r + 1) * per_rank)
            if a < b:
                groups = _flat_groups(_load(f)["optimizer_state_dict"], key, f)
                start_in_rank = self.offsets[name] + a - r * per_rank
                parts.append(_slice_groups(groups, self.group_sizes, start_in_rank, b - a, f))
        return torch.cat(parts).view(-1, *shape[1:])


def _flat_groups(osd: dict, key: str, where: Path) -> list[torch.Tensor]:
    """A rank's flat tensors for `key`, one per parameter group."""
    if key == FP32:
        return osd["fp32_flat_groups"]
    state = osd["optimizer_state_dict"]["state"]
    try:
        return [state[i][key] for i in range(len(osd["fp32_flat_groups"]))]
    except KeyError:
        raise BigtrainError(f"{where}: no optimizer state {key!r} (saved before the first step?)") from None


def _slice_groups(groups: list[torch.Tensor], sizes: list[int], start: int, n: int, where: Path) -> torch.Tensor:
    """Elements [start, start + n) of the concatenation of `groups`, copied out of the memory map."""
    if len(groups) != len(sizes):
        raise BigtrainError(f"{where}: {len(groups)} flat parameter groups, rank 0 has {len(sizes)}")
    out, pos, end = [], 0, start + n
    for g, size in zip(groups, sizes, strict=True):
        lo, hi = max(start, pos), min(end, pos + size)
        if lo < hi:
            if g.numel() != size:
                raise BigtrainError(f"{where}: flat group has {g.numel()} elements, rank 0 has {size}")
            out.append(g[lo - pos : hi - pos].clone())
        pos += size
    return torch.cat(out)
