"""Read safetensors files one tensor at a time with plain reads (no memory map).

`safetensors.safe_open` memory-maps the whole file; every page it touches then counts towards the
reader's resident memory until the file is closed, so reading a whole model that way shows an RSS
of the model's size. Reading each tensor's byte range with `readinto` keeps the process at one
tensor (the page cache holds the rest, outside our RSS). The format is a little-endian u64 header
length, a JSON header {name: {dtype, shape, data_offsets}}, then the raw bytes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from bigtrain.errors import BigtrainError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class SafetensorsFile:
    """The header of one .safetensors file, validated against the file size; tensors read on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        size = self.path.stat().st_size
        with self.path.open("rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise BigtrainError(f"{self.path}: truncated safetensors file (no header)")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise BigtrainError(f"{self.path}: truncated or corrupt safetensors file (header of {n} bytes)")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise BigtrainError(f"{self.path}: corrupt safetensors header ({e})") from None
        if not isinstance(header, dict):
            raise BigtrainError(f"{self.path}: corrupt safetensors header")
        header.pop("__metadata__", None)
        self.data_start = 8 + n
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for name, e in header.items():
            try:
                dtype = DTYPES[e["dtype"]]
                begin, end = (int(x) for x in e["data_offsets"])
                shape = tuple(int(x) for x in e["shape"])
            except (KeyError, TypeError, ValueError):
                raise BigtrainError(f"{self.path}: corrupt safetensors entry for {name}") from None
            if not 0 <= begin <= end or any(x < 0 for x in shape):
                raise BigtrainError(f"{self.path}: corrupt safetensors entry for {name} (negative offset or size)")
            numel = 1
            for s in shape:
                numel *= s
            if end - begin != numel * dtype.itemsize:
                raise BigtrainError(f"{self.path}: corrupt safetensors entry for {name} (size mismatch)")
            if self.data_start + end > size:
                raise BigtrainError(
                    f"{self.path}: truncated safetensors file ({name} ends at byte {self.data_start + end}, "
                    f"file has {size})"
                )
            self.entries[name] = (dtype, shape, begin, end)

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def dtype(self, name: str) -> torch.dtype:
        return self.entries[name][0]

    def read(self, name: str) -> torch.Tensor:
        shape = self.entries[name][1]
        return self.read_rows(name, 0, shape[0] if shape else 1).reshape(shape)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of a tensor (row-major storage makes them one contiguous byte range)."""
        dtype, shape, begin, end = self.entries[name]
        row_bytes = (end - begin) // shape[0] if shape and shape[0] else end - begin
        stop = min(stop, shape[0]) if shape else 1
        buf = bytearray(max(0, stop - start) * row_bytes)
        with self.path.open("rb") as f:
            f.seek(self.data_start + begin + start * row_bytes)
            got = f.readinto(buf)
        if got != len(buf):
            raise BigtrainError(f"{self.path}: truncated safetensors file while reading {name}")
        if not buf:
            return torch.empty((0, *shape[1:]), dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(-1, *shape[1:])
