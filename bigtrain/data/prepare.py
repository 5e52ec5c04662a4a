"""Tokenise documents once into a token directory (`bigtrain-data prepare`, or on first use by the trainer)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from bigtrain.ckpt.atomic import atomic_directory
from bigtrain.config import DataConfig
from bigtrain.data.sources import expand_files, load_documents
from bigtrain.data.token_file import TokenFile, TokenFileWriter
from bigtrain.errors import BigtrainError


def batched(items: Iterable[str], n: int) -> Iterator[list[str]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def source_spec(cfg: DataConfig, split: str) -> dict:
    """What a split is made of; files are identified by path, size and mtime."""
    files_key = "data.train_files" if split == "train" else "data.eval_files"
    patterns = cfg.train_files if split == "train" else cfg.eval_files
    if patterns:
        files = expand_files(patterns, files_key)
        return {"files": [[f, os.path.getsize(f), int(os.path.getmtime(f))] for f in files], "key": files_key}
    dataset_split = cfg.split if split == "train" else cfg.eval_split
    if cfg.dataset and dataset_split:
        return {
            "dataset": cfg.dataset,
            "config": cfg.dataset_config,
            "split": dataset_split,
            "key": "data.dataset",
        }
    return {}


def fingerprint(spec: dict, tokenizer: PreTrainedTokenizerBase, text_field: str, max_tokens: int | None) -> str:
    ident = {"spec": spec, "tokenizer": tokenizer.name_or_path, "vocab": len(tokenizer), "field": text_field}
    ident["max_tokens"] = max_tokens
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def write_split(cfg: DataConfig, spec: dict, tokenizer: PreTrainedTokenizerBase, target: Path, fp: str) -> TokenFile:
    """Tokenise the documents of `spec` into `target` (atomically: complete or absent)."""
    docs = load_documents(
        files=[f for f, _, _ in spec["files"]] if "files" in spec else None,
        dataset=spec.get("dataset"),
        dataset_config=spec.get("config"),
        split=spec.get("split", "train"),
        text_field=cfg.text_field,
        streaming=cfg.streaming,
        key=spec["key"],
    )
    with atomic_directory(target, overwrite=True) as tmp:
        writer = TokenFileWriter(tmp, len(tokenizer), tokenizer.eos_token_id, tokenizer.name_or_path, fp)
        cap = cfg.max_tokens
        for chunk in batched(docs, 64):
            ids = tokenizer(chunk, add_special_tokens=False)["input_ids"]
            if cap is not None:  # whole documents until the cap is reached
                ends = itertools.accumulate(len(x) + 1 for x in ids)
                ids = ids[: next((i + 1 for i, e in enumerate(ends) if writer.meta.num_tokens + e >= cap), len(ids))]
            writer.add_documents(ids)
            if cap is not None and writer.meta.num_tokens >= cap:
                break
        meta = writer.close()
        if meta.num_tokens == 0:
            raise BigtrainError(f"{spec['key']}: the data is empty (no text to tokenise)")
    print(f"bigtrain: tokenised {meta.num_documents:,} documents into {meta.num_tokens:,} tokens at {target}")
    return TokenFile(target)


def prepare_split(
    cfg: DataConfig, split: str, tokenizer: PreTrainedTokenizerBase, cache_root: Path
) -> TokenFile | None:
    """Tokenise one split into `cache_root/<split>-<fingerprint>/` unless already there. None if no such split."""
    spec = source_spec(cfg, split)
    if not spec:
        return None
    fp = fingerprint(spec, tokenizer, cfg.text_field, cfg.max_tokens)
    target = cache_root / f"{split}-{fp}"
    if (target / "meta.json").exists():
        return TokenFile(target)
    return write_split(cfg, spec, tokenizer, target, fp)


def prepare_token_dir(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> list[TokenFile]:
    """`bigtrain-data prepare`: the train split in `out_dir`, the eval split (if any) in `out_dir/eval`.
    Training then reads it with `data.token_dir=out_dir`."""
    written = []
    for split, target in (("train", out_dir), ("eval", out_dir / "eval")):
        spec = source_spec(cfg, split)
        if spec:
            written.append(
                write_split(cfg, spec, tokenizer, target, fingerprint(spec, tokenizer, cfg.text_field, cfg.max_tokens))
            )
    if not written:
        raise BigtrainError("data: nothing to prepare (set data.train_files or data.dataset)")
    return written


def check_vocab(token_file: TokenFile, model_vocab: int) -> None:
    if token_file.meta.vocab_size > model_vocab:
        raise BigtrainError(
            f"model.vocab_size={model_vocab} is smaller than the tokenizer's {token_file.meta.vocab_size} tokens "
            f"({token_file.path})"
        )
