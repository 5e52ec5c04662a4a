"""Write a state dict tensor by tensor into sharded safetensors files with an HF index.

Holds at most one shard (`max_shard_bytes`) in memory, so exporting or growing a model never
needs the whole model twice in RAM.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


class ShardedSafetensorsWriter:
    def __init__(self, out_dir: str | Path, max_shard_bytes: int = 2 * 1024**3) -> None:
        self.out_dir = Path(out_dir)
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[list[str]] = []
        self._total_bytes = 0
        self._closed = False

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if self._closed:
            raise RuntimeError("writer is closed")
        t = tensor.detach().to("cpu").contiguous()
        nbytes = t.numel() * t.element_size()
        if self._pending and self._pending_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self._pending[name] = t.clone() if t.data_ptr() == tensor.data_ptr() else t
        self._pending_bytes += nbytes
        self._total_bytes += nbytes

    def _flush(self) -> None:
        index = len(self._shards)
        save_file(self._pending, str(self.out_dir / f".shard-{index:05d}.safetensors"), metadata={"format": "pt"})
        self._shards.append(list(self._pending))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Finish the files; returns the shard file names."""
        if self._pending or not self._shards:
            self._flush()
        self._closed = True
        n = len(self._shards)
        names = [SAFE_WEIGHTS_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        weight_map: dict[str, str] = {}
        for i, (keys, name) in enumerate(zip(self._shards, names)):
            (self.out_dir / f".shard-{i:05d}.safetensors").rename(self.out_dir / name)
            weight_map.update(dict.fromkeys(keys, name))
        if n > 1:
            index = {"metadata": {"total_size": self._total_bytes}, "weight_map": weight_map}
            (self.out_dir / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2))
        return names
