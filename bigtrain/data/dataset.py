"""The training and evaluation data of a run: token files cut into fixed-length sequences."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bigtrain.config import DataConfig
from bigtrain.data.prepare import prepare_split
from bigtrain.data.token_file import TokenFile
from bigtrain.data.tokenizer import load_tokenizer
from bigtrain.errors import BigtrainError


@dataclass
class SequenceRange:
    """Sequences [start, start + count) of a token file."""

    file: TokenFile
    start: int
    count: int
    seq_len: int

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        rows = [self.file.sequence(self.start + int(i), self.seq_len) for i in indices]
        return torch.from_numpy(np.stack(rows))


@dataclass
class RunData:
    train: SequenceRange
    eval: SequenceRange | None
    vocab_size: int  # the tokenizer's


def prepare_run_data(cfg: DataConfig, cache_root: Path) -> RunData:
    """Open the token files, tokenising first where no cached copy exists (idempotent: in a process
    group let one rank call it first, then the others find the cache)."""
    if cfg.token_dir:
        train_file = TokenFile(cfg.token_dir)
        eval_file = TokenFile(Path(cfg.token_dir) / "eval") if (Path(cfg.token_dir) / "eval").is_dir() else None
    else:
        tokenizer = load_tokenizer(cfg.tokenizer)
        train_file = prepare_split(cfg, "train", tokenizer, cache_root)
        if train_file is None:
            raise BigtrainError("data: no training data (set data.train_files, data.dataset or data.token_dir)")
        eval_file = prepare_split(cfg, "eval", tokenizer, cache_root)
    n = train_file.num_sequences(cfg.seq_len)
    if n == 0:
        raise BigtrainError(f"data: {train_file.path} holds fewer than data.seq_len={cfg.seq_len} tokens")
    if eval_file is not None:
        eval_range = SequenceRange(eval_file, 0, eval_file.num_sequences(cfg.seq_len), cfg.seq_len)
        train_range = SequenceRange(train_file, 0, n, cfg.seq_len)
    else:
        # hold out the tail of the training sequences; they are never trained on
        held = int(n * cfg.eval_fraction) if cfg.eval_fraction > 0 else 0
        held = max(held, 1) if cfg.eval_fraction > 0 and n > 1 else held
        eval_range = SequenceRange(train_file, n - held, held, cfg.seq_len) if held else None
        train_range = SequenceRange(train_file, 0, n - held, cfg.seq_len)
    if eval_range is not None and eval_range.count == 0:
        eval_range = None
    return RunData(train_range, eval_range, train_file.meta.vocab_size)
