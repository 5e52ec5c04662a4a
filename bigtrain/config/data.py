"""`data:`: the corpus (files, a dataset, prepared tokens or a weighted mixture), tokenizer and packing."""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, field_validator, model_validator

from bigtrain.config.base import Section


class SourceConfig(Section):
    """One source of a mixture (`data.sources`): raw files, a dataset name, or a prepared token directory."""

    name: str
    files: list[str] = Field(default_factory=list)
    dataset: str | None = None
    dataset_config: str | None = None
    split: str = "train"
    token_dir: str | None = None
    text_field: str | None = None  # default: data.text_field
    weight: float = 1.0
    max_tokens: int | None = None

    @field_validator("files", mode="before")
    @classmethod
    def _one_path(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one_kind(self) -> SourceConfig:
        kinds = [k for k in ("files", "dataset", "token_dir") if getattr(self, k)]
        if len(kinds) != 1:
            got = " and ".join(kinds) if kinds else "none of them"
            raise ValueError(f"source {self.name!r}: give exactly one of files, dataset, token_dir (got {got})")
        if not self.weight > 0 or not math.isfinite(self.weight):
            raise ValueError(f"source {self.name!r}: weight must be > 0, got {self.weight}")
        return self


class DataConfig(Section):
    # Raw text: local files/globs (.txt, .jsonl/.json, .parquet), or a hub/local dataset name.
    # A single path is a one-element list (`data.train_files=corpus.txt`).
    train_files: list[str] = Field(default_factory=list)
    eval_files: list[str] = Field(default_factory=list)
    dataset: str | None = None
    dataset_config: str | None = None
    split: str = "train"
    eval_split: str | None = None
    text_field: str = "text"
    streaming: bool = False
    # A pre-tokenised token directory from `bigtrain-data prepare` (skips tokenisation).
    token_dir: str | None = None
    # A weighted mixture of sources instead of train_files/dataset/token_dir (docs/data.md).
    sources: list[SourceConfig] = Field(default_factory=list)
    # Where tokenised data is cached, keyed by content (default: <output_dir>/data; for a staged recipe
    # <root output_dir>/data, shared by every stage).
    cache_dir: str | None = None
    # Processes that tokenise (None: all cores).
    workers: int | None = Field(default=None, ge=1)
    tokenizer: str = "data/tokenizer"
    seq_len: int = 256
    # Held out for evaluation when no eval files/split are given: this share of packed sequences.
    eval_fraction: float = Field(default=0.01, ge=0.0, lt=0.5)
    seed: int = 1234
    # Where this run begins in the seeded order of training sequences: the global sequences before it are
    # skipped. None: 0, except that each later stage of a staged recipe continues where the stage before
    # it ended (bigtrain-run sets it), so a grown model goes on through the data instead of seeing its
    # first stage's batches again; 0 restarts. A streamed dataset always starts at its beginning.
    start_sequence: int | None = Field(default=None, ge=0)
    # Stop tokenising a source after this many tokens (e.g. a slice of a streamed hub corpus).
    max_tokens: int | None = None

    @field_validator("train_files", "eval_files", mode="before")
    @classmethod
    def _one_path(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _sources_or_shorthand(self) -> DataConfig:
        if self.sources:
            shorthand = [k for k in ("train_files", "dataset", "token_dir") if getattr(self, k)]
            if shorthand:
                raise ValueError(f"data.sources replaces data.{shorthand[0]}: give one or the other")
            names = [s.name for s in self.sources]
            dup = next((n for n in names if names.count(n) > 1), None)
            if dup is not None:
                raise ValueError(f"data.sources: the name {dup!r} is used twice")
        if self.streaming and self.start_sequence:
            raise ValueError("data.start_sequence: a streamed dataset cannot skip ahead, it starts at its beginning")
        return self
