"""The first, single-file token format: one flat array of token ids (`tokens.bin`, documents separated
by EOS) and `meta.json`, read through a memory map. Still read (`data.token_dir` of an older prepare);
new data is written as a sharded store (bigtrain/data/store.py); nothing writes this format any more
(tests/test_data_store.py makes one by hand)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bigtrain.errors import BigtrainError

TOKENS = "tokens.bin"
META = "meta.json"


@dataclass
class TokenFileMeta:
    dtype: str
    num_tokens: int
    num_documents: int
    vocab_size: int
    eos_token_id: int
    tokenizer: str
    fingerprint: str


class TokenFile:
    """Read side: fixed-length sequences cut from the flat token array."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not (path / META).is_file() or not (path / TOKENS).is_file():
            raise BigtrainError(f"{path}: not a token directory (needs {TOKENS} and {META}; see bigtrain-data prepare)")
        try:
            self.meta = TokenFileMeta(**json.loads((path / META).read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise BigtrainError(f"{path / META}: corrupt token metadata ({e})") from None
        dtype = np.dtype(self.meta.dtype)
        expected = self.meta.num_tokens * dtype.itemsize
        actual = (path / TOKENS).stat().st_size
        if actual != expected:
            raise BigtrainError(f"{path / TOKENS}: {actual} bytes, expected {expected} (truncated or corrupt)")
        self.path = path
        self.tokens = np.memmap(path / TOKENS, dtype=dtype, mode="r") if expected else np.zeros(0, dtype)

    def num_sequences(self, seq_len: int) -> int:
        return len(self.tokens) // seq_len

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.tokens[start:stop], dtype=np.int64)

    def sequence(self, index: int, seq_len: int) -> np.ndarray:
        return np.asarray(self.tokens[index * seq_len : (index + 1) * seq_len], dtype=np.int64)
