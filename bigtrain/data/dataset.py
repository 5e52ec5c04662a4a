"""The training and evaluation data of a run: token stores cut into fixed-length sequences, one per source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bigtrain.config import DataConfig
from bigtrain.data.prepare import Source, cached_store, eval_source, train_sources
from bigtrain.data.store import open_tokens
from bigtrain.data.tokenizer import load_tokenizer, tokenizer_identity
from bigtrain.errors import BigtrainError


@dataclass
class SequenceRange:
    """Sequences [start, start + count) of a token file."""

    file: Any  # TokenStore or the single-file TokenFile
    start: int
    count: int
    seq_len: int

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        rows = [self.file.sequence(self.start + int(i), self.seq_len) for i in indices]
        return torch.from_numpy(np.stack(rows))


@dataclass
class Mixture:
    """Several sources read as one index space: id = offsets[source] + sequence within that source.
    Also the evaluation set of a mixture (the held-out tails laid end to end)."""

    names: list[str]
    weights: list[float]
    parts: list[SequenceRange]

    @property
    def offsets(self) -> np.ndarray:
        return np.cumsum([0] + [p.count for p in self.parts])

    @property
    def count(self) -> int:
        return int(self.offsets[-1])

    @property
    def file(self) -> Any:  # every source shares one tokenizer (checked), so any file stands for them
        return self.parts[0].file

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        offsets = self.offsets
        rows = []
        for i in np.asarray(indices, dtype=np.int64):
            s = int(np.searchsorted(offsets, i, side="right")) - 1
            part = self.parts[s]
            rows.append(part.file.sequence(part.start + int(i - offsets[s]), part.seq_len))
        return torch.from_numpy(np.stack(rows))


@dataclass
class RunData:
    train: SequenceRange | Mixture
    eval: SequenceRange | Mixture | None
    vocab_size: int  # the tokenizer's


def _open(source: Source, tok: Any, cache_root: Path, workers: int | None) -> Any:
    if source.token_dir:
        return open_tokens(source.token_dir)
    store = cached_store(source, tok, cache_root, workers=workers)
    if store is None:  # cannot happen for one part; kept explicit
        raise BigtrainError(f"{source.key}: preparation did not finish")
    return store


def _check_tokenizer(source: Source, store: Any, wanted: dict | None) -> None:
    """A token_dir must come from the recipe's tokenizer (by hash when it records one, else by vocabulary)."""
    if wanted is None or not source.token_dir:
        return
    have = getattr(store.meta, "tokenizer_hash", None)
    if (have is not None and have != wanted["hash"]) or store.meta.vocab_size != wanted["vocab_size"]:
        raise BigtrainError(
            f"{source.key}: {source.token_dir} was tokenised with {store.meta.tokenizer!r} "
            f"(vocab {store.meta.vocab_size}, hash {have}), the recipe's data.tokenizer is {wanted['name']!r} "
            f"(vocab {wanted['vocab_size']}, hash {wanted['hash']})"
        )


def prepare_run_data(cfg: DataConfig, cache_root: Path, resume: dict | None = None) -> RunData:
    """Open every source, tokenising first where the cache has no copy (idempotent: in a process group
    let one rank call it first, then the others find the cache). `resume`: the data position of the
    checkpoint being resumed (what a stream needs to continue where it stopped)."""
    sources = train_sources(cfg)
    if not sources:
        raise BigtrainError(
            "data: no training data (set data.train_files, data.dataset, data.token_dir or data.sources)"
        )
    ev = eval_source(cfg)
    if cfg.streaming and cfg.dataset and not cfg.train_files:
        return stream_run_data(cfg, sources[0], ev, cache_root, resume)
    raw = [s for s in [*sources, ev] if s is not None and s.spec is not None]
    tok = None
    try:
        tok = load_tokenizer(cfg.tokenizer)
    except BigtrainError:
        if raw:  # a raw source needs it; only token_dirs alone may go without
            raise
    wanted = tokenizer_identity(tok) if tok is not None else None
    stores = []
    for src in sources:
        store = _open(src, tok, cache_root, cfg.workers)
        _check_tokenizer(src, store, wanted)
        stores.append(store)
    vocab = {s.meta.vocab_size for s in stores}
    if len(vocab) > 1:
        raise BigtrainError(f"data.sources: the sources come from different tokenizers (vocabularies {sorted(vocab)})")
    train_parts, eval_parts = [], []
    for src, store in zip(sources, stores, strict=True):
        n = store.num_sequences(cfg.seq_len)
        if n == 0:
            raise BigtrainError(f"{src.key}: {store.path} holds fewer than data.seq_len={cfg.seq_len} tokens")
        held = 0
        if ev is None and cfg.eval_fraction > 0:  # hold out the tail of each source; never trained on
            held = int(n * cfg.eval_fraction)
            held = max(held, 1) if n > 1 else held
        train_parts.append(SequenceRange(store, 0, n - held, cfg.seq_len))
        if held:
            eval_parts.append(SequenceRange(store, n - held, held, cfg.seq_len))
    if ev is not None:
        ev_store = _open(ev, tok, cache_root, cfg.workers)
        _check_tokenizer(ev, ev_store, wanted)
        eval_parts = [SequenceRange(ev_store, 0, ev_store.num_sequences(cfg.seq_len), cfg.seq_len)]
    eval_parts = [p for p in eval_parts if p.count > 0]
    names, weights = [s.name for s in sources], [s.weight for s in sources]
    train: SequenceRange | Mixture = train_parts[0] if len(sources) == 1 else Mixture(names, weights, train_parts)
    evald: SequenceRange | Mixture | None = None
    if len(eval_parts) == 1:
        evald = eval_parts[0]
    elif eval_parts:
        evald = Mixture(names, weights, eval_parts)
    return RunData(train, evald, stores[0].meta.vocab_size)


def stream_run_data(cfg: DataConfig, src: Source, ev: Source | None, cache_root: Path, resume: dict | None) -> RunData:
    """`data.streaming` with a dataset: train from the stream (no pre-pass); an eval split is prepared as usual."""
    from bigtrain.data.stream import TokenStream

    assert src.spec is not None
    tok = load_tokenizer(cfg.tokenizer)
    start = None
    if resume and resume.get("stream"):
        start = {"sequences": resume["sequences"], **resume["stream"]}
    stream = TokenStream({**src.spec, "streaming": True}, tok, cfg.seq_len, start)
    evald = None
    if ev is not None:
        ev_store = _open(ev, tok, cache_root, cfg.workers)
        evald = SequenceRange(ev_store, 0, ev_store.num_sequences(cfg.seq_len), cfg.seq_len)
    return RunData(stream, evald, len(tok))  # type: ignore[arg-type]
