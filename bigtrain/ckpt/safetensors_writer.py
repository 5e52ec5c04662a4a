"""Write safetensors shards straight to disk, tensor by tensor (or row block by row block).

A safetensors header lists every tensor's offsets before the data. The names, shapes and dtypes of a
model are known in advance (its config implies them: `bigtrain.model.param_shapes`), so the headers
are written first and each tensor's bytes appended as it is produced: nothing is buffered, memory
stays at the block being written, whether growing a checkpoint or exporting a trained model. Shard
names and the index follow the HF convention (`model.safetensors`, or
`model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import BinaryIO

import torch

from bigtrain.ckpt.safetensors_reader import DTYPES

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class StreamingSafetensorsWriter:
    def __init__(
        self,
        out_dir: str | Path,
        plan: list[tuple[str, tuple[int, ...], torch.dtype]],
        max_shard_bytes: int = 2 * 1024**3,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.dtype = {name: dtype for name, _, dtype in plan}
        self.nbytes = {name: _numel(shape) * dtype.itemsize for name, shape, dtype in plan}
        shards: list[list[tuple[str, tuple[int, ...], torch.dtype]]] = [[]]
        size = 0
        for entry in plan:
            if shards[-1] and size + self.nbytes[entry[0]] > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(entry)
            size += self.nbytes[entry[0]]
        n = len(shards)
        self.files = [SAFE_WEIGHTS_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.shards = shards
        self.order = [name for name, _, _ in plan]
        self.shard_of = {name: i for i, shard in enumerate(shards) for name, _, _ in shard}
        self._next = 0  # index into order of the tensor being written
        self._written = 0  # bytes of it written so far
        self._file: BinaryIO | None = None
        self._shard = -1

    def _open(self, i: int) -> None:
        if self._file is not None:
            self._file.close()
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape, dtype in self.shards[i]:
            header[name] = {
                "dtype": DTYPE_NAMES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + self.nbytes[name]],
            }
            offset += self.nbytes[name]
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors itself writes it
        self._file = (self.out_dir / self.files[i]).open("wb")
        self._file.write(len(raw).to_bytes(8, "little") + raw)
        self._shard = i

    def write(self, name: str, block: torch.Tensor) -> None:
        """Append `block` (the whole tensor, or its next rows) to tensor `name`; tensors come in plan order."""
        if self._next >= len(self.order) or name != self.order[self._next]:
            expected = self.order[self._next] if self._next < len(self.order) else "nothing"
            raise RuntimeError(f"writer expected {expected}, got {name}")
        if block.dtype != self.dtype[name]:
            raise RuntimeError(f"{name}: dtype {block.dtype}, planned {self.dtype[name]}")
        if self.shard_of[name] != self._shard:
            self._open(self.shard_of[name])
        data = block.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
        self._written += data.nbytes
        if self._written > self.nbytes[name]:
            raise RuntimeError(f"{name}: more bytes than its planned shape holds")
        self._file.write(memoryview(data))
        if self._written == self.nbytes[name]:
            self._next, self._written = self._next + 1, 0

    def close(self) -> list[str]:
        if self._file is not None:
            self._file.close()
        if self._next != len(self.order):
            raise RuntimeError(f"writer closed before {self.order[self._next]} was written")
        if len(self.files) > 1:
            total = sum(self.nbytes.values())
            weight_map = {name: self.files[self.shard_of[name]] for name in self.order}
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.out_dir / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2))
        return self.files


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
