"""Training straight from a streamed dataset (`data.streaming: true` with `data.dataset`): no pre-pass.

A background thread reads documents from the stream, tokenises them (the Rust tokenizer releases the
GIL) and packs them into `seq_len` sequences ahead of the trainer. Sequences are taken in stream order:
global position p is the p-th packed sequence, the same for every world size (each rank reads the
stream and keeps the rows of its share). The position of a sequence is (document, offset): the document
its first token comes from and that token's offset in the document's tokens (BOS/EOS included). The
checkpoint records it, and a resumed run skips that many documents and continues at that token. Its
sampler (stream order) is `bigtrain.data.sampler.StreamSampler`.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import numpy as np
import torch

from bigtrain.data.prepare import encode
from bigtrain.data.sources import open_dataset
from bigtrain.data.tokenizer import document_specials
from bigtrain.errors import BigtrainError

UNBOUNDED = 2**62  # a stream's length is unknown; the sampler only needs "large enough"


class TokenStream:
    def __init__(
        self, spec: dict[str, Any], tokenizer: Any, seq_len: int, start: dict | None = None, ahead: int = 1024
    ):
        self.spec, self.tok, self.seq_len, self.ahead = spec, tokenizer, seq_len, ahead
        start = start or {}
        self.base = int(start.get("sequences", 0))  # global position of self._seqs[0]
        self._start = (int(start.get("document", 0)), int(start.get("offset", 0)))
        self._seqs: deque[tuple[np.ndarray, int, int]] = deque()  # (tokens, document, offset)
        self._cond = threading.Condition()
        self._done = False
        self._error: BaseException | None = None
        self.count = UNBOUNDED
        self.file = self  # for check_vocab
        self.meta = type("Meta", (), {"vocab_size": len(tokenizer)})()
        self.path = spec["dataset"]
        self.streaming = True
        threading.Thread(target=self._produce, daemon=True, name="bigtrain-stream").start()

    # --- producer -----------------------------------------------------------------------------------
    def _documents(self):
        first, _ = self._start
        ds = open_dataset(self.spec)
        field = self.spec["text_field"]
        for i, row in enumerate(ds.skip(first) if first else ds):
            if field not in row:
                raise BigtrainError(
                    f"{self.spec['key']}: no column {field!r} (columns: {sorted(row)}); set data.text_field"
                )
            yield first + i, row[field]

    def _produce(self) -> None:
        try:
            bos, eos = document_specials(self.tok)
            head, tail = ([bos] if bos is not None else []), ([eos] if eos is not None else [])
            carry: list[int] = []
            segments: deque[list[int]] = deque()  # [document, offset, tokens] of what `carry` holds, in order
            first_doc, skip = self._start
            for d, text in self._documents():
                ids = encode(self.tok, [text])[0] if text else []
                if not ids:  # as in a store: an empty document adds nothing
                    continue
                marked = [*head, *ids, *tail]
                offset = skip if d == first_doc else 0
                segments.append([d, offset, len(marked) - offset])
                carry += marked[offset:]
                while len(carry) >= self.seq_len:
                    seq = np.asarray(carry[: self.seq_len], dtype=np.int64)
                    del carry[: self.seq_len]
                    start = (segments[0][0], segments[0][1])
                    left = self.seq_len
                    while left:
                        take = min(left, segments[0][2])
                        segments[0][1] += take
                        segments[0][2] -= take
                        left -= take
                        if segments[0][2] == 0:
                            segments.popleft()
                    with self._cond:
                        while len(self._seqs) >= self.ahead:
                            self._cond.wait()
                        self._seqs.append((seq, *start))
                        self._cond.notify_all()
        except BaseException as e:  # handed to the trainer at its next batch
            self._error = e
        with self._cond:
            self._done = True
            self._cond.notify_all()

    # --- consumer -----------------------------------------------------------------------------------
    def _wait_for(self, position: int) -> None:
        with self._cond:
            while position >= self.base + len(self._seqs) and not self._done:
                self._cond.wait()
        if position >= self.base + len(self._seqs):
            if self._error is not None:
                raise (
                    self._error
                    if isinstance(self._error, BigtrainError)
                    else BigtrainError(f"{self.spec['key']}: reading the stream failed: {self._error!r}")
                )
            raise BigtrainError(f"{self.spec['key']}: the stream ended after {self.base + len(self._seqs)} sequences")

    def sequence(self, position: int, seq_len: int | None = None) -> np.ndarray:
        if position < self.base:
            raise BigtrainError(f"stream: sequence {position} was already released (now at {self.base})")
        self._wait_for(position)
        return self._seqs[position - self.base][0]

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.sequence(int(i)) for i in indices]))

    def position(self, sequences: int) -> dict:
        """Where sequence `sequences` starts; sequences before it are released."""
        try:
            self._wait_for(sequences)
        except BigtrainError:
            if self._error is not None or self.base + len(self._seqs) < sequences:
                raise
            return {"document": None, "offset": None, "ended": True}  # consumed to the very end
        with self._cond:
            while self.base < sequences:
                self._seqs.popleft()
                self.base += 1
            self._cond.notify_all()
            _, doc, offset = self._seqs[0]
        return {"document": doc, "offset": offset}
