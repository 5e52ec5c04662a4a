"""Tokenise a source once into a sharded token store (`bigtrain-data prepare`, or on first use by the trainer).

A source is cut into fixed work units (a file; 50k rows of a dataset); each unit becomes one shard,
tokenised by a pool of processes (`workers`) and, across machines, by parts (`part=(I, N)` takes the
units with index % N == I). Units depend only on the source, so the bytes and their global order are
the same for any number of workers and parts. Prepared data is keyed by a fingerprint of the source
files (path, size, mtime), the tokenizer (a hash of its vocabulary and rules) and the settings, so every
stage and every rerun that needs the same tokens finds them in the cache instead of tokenising again.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from bigtrain.config import DataConfig, SourceConfig
from bigtrain.data.sources import Unit, expand_files, source_units, unit_documents, units_from_rows
from bigtrain.data.store import (
    FORMAT,
    INDEX,
    ShardWriter,
    TokenStore,
    claim_directory,
    dtype_for,
    finished_shard,
    prepare_lock,
    read_settings,
    write_index,
)
from bigtrain.data.tokenizer import document_specials, load_tokenizer, tokenizer_identity
from bigtrain.errors import BigtrainError

ENCODE_BATCH = 256  # documents per tokenizer call
SMALL_INPUT_BYTES = 16 * 2**20  # below this, automatic worker count tokenises in-process (no pool start-up)


# --- what to prepare -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A resolved source: its recipe key (for messages), weight, and either a raw spec or a token_dir."""

    name: str
    key: str
    weight: float
    spec: dict[str, Any] | None  # files or dataset (json-able: part of the fingerprint)
    token_dir: str | None = None


def _resolve(src: SourceConfig, cfg: DataConfig, key: str) -> Source:
    if src.token_dir:
        return Source(src.name, key, src.weight, None, src.token_dir)
    common = {"key": key, "text_field": src.text_field or cfg.text_field, "max_tokens": src.max_tokens}
    if src.files:
        files = [os.path.abspath(f) for f in expand_files(src.files, key)]
        spec = {"files": [[f, os.path.getsize(f), int(os.path.getmtime(f))] for f in files], **common}
    else:
        spec = {"dataset": src.dataset, "config": src.dataset_config, "split": src.split, **common}
        spec["streaming"] = cfg.streaming
    return Source(src.name, key, src.weight, spec)


def train_sources(cfg: DataConfig) -> list[Source]:
    """`data.sources`, or the one-source shorthand (`train_files`, `dataset`, `token_dir`)."""
    if cfg.sources:
        return [_resolve(s, cfg, f"data.sources[{s.name}]") for s in cfg.sources]
    if cfg.token_dir:
        return [Source("train", "data.token_dir", 1.0, None, cfg.token_dir)]
    if cfg.train_files:
        one = SourceConfig(name="train", files=cfg.train_files, max_tokens=cfg.max_tokens)
        return [_resolve(one, cfg, "data.train_files")]
    if cfg.dataset:
        one = SourceConfig(
            name="train",
            dataset=cfg.dataset,
            dataset_config=cfg.dataset_config,
            split=cfg.split,
            max_tokens=cfg.max_tokens,
        )
        return [_resolve(one, cfg, "data.dataset")]
    return []


def eval_source(cfg: DataConfig) -> Source | None:
    if cfg.eval_files:
        return _resolve(
            SourceConfig(name="eval", files=cfg.eval_files, max_tokens=cfg.max_tokens), cfg, "data.eval_files"
        )
    if cfg.dataset and cfg.eval_split:
        one = SourceConfig(
            name="eval",
            dataset=cfg.dataset,
            dataset_config=cfg.dataset_config,
            split=cfg.eval_split,
            max_tokens=cfg.max_tokens,
        )
        return _resolve(one, cfg, "data.dataset")
    if cfg.token_dir and (Path(cfg.token_dir) / "eval").is_dir():
        return Source("eval", "data.token_dir", 1.0, None, str(Path(cfg.token_dir) / "eval"))
    return None


def source_spec(cfg: DataConfig, split: str) -> list[Source]:
    """The sources of a split, with their files checked (what preflight calls on every rank)."""
    if split == "train":
        return train_sources(cfg)
    ev = eval_source(cfg)
    return [ev] if ev else []


def store_settings(spec: dict[str, Any], tok: PreTrainedTokenizerBase) -> dict[str, Any]:
    """What a store is made from. The fingerprint leaves out the recipe key: the same files named in
    `data.train_files` or in `data.sources` are the same tokens."""
    ident = tokenizer_identity(tok)
    content = {k: v for k, v in spec.items() if k != "key"}
    key = {"format": FORMAT, "source": content, "tokenizer": {k: v for k, v in ident.items() if k != "name"}}
    fp = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "format": FORMAT,
        "fingerprint": fp,
        "tokenizer": ident,
        "dtype": dtype_for(len(tok)).name,
        "source": spec,
        "num_units": None,
    }


# --- tokenising one unit (in a pool worker, or in-process) ------------------------------------------

_TOKENIZERS: dict[str, PreTrainedTokenizerBase] = {}


def _tokenizer(name: str) -> PreTrainedTokenizerBase:
    if name not in _TOKENIZERS:
        _TOKENIZERS[name] = load_tokenizer(name)
    return _TOKENIZERS[name]


def encode(tok: PreTrainedTokenizerBase, docs: list[str]) -> list[list[int]]:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:  # the Rust tokenizer straight away: no per-call Python overhead of __call__
        return [e.ids for e in backend.encode_batch(docs, add_special_tokens=False)]
    return tok(docs, add_special_tokens=False)["input_ids"]


def tokenise_unit(
    target: Path, spec: dict[str, Any], unit: Unit, tokenizer: str, cap: int | None = None
) -> dict[str, Any]:
    """Write unit `unit` of `spec` as one shard of `target`; `cap`: stop after the document that reaches it."""
    tok = _tokenizer(tokenizer)
    bos, eos = document_specials(tok)
    head, tail = ([bos] if bos is not None else []), ([eos] if eos is not None else [])
    writer = ShardWriter(target, unit.index, dtype_for(len(tok)))
    try:
        batch: list[str] = []
        docs = unit_documents(spec, unit)
        done = False
        while not done:
            batch.clear()
            for doc in docs:
                if doc:
                    batch.append(doc)
                if len(batch) == ENCODE_BATCH:
                    break
            else:
                done = True
            flat: list[int] = []
            count = 0
            for ids in encode(tok, batch):
                if not ids:  # a document with no tokens adds nothing, not lone BOS/EOS
                    continue
                flat += head
                flat += ids
                flat += tail
                count += 1
                if cap is not None and writer.tokens + len(flat) >= cap:
                    done = True
                    break
            writer.write(flat, count)
        return writer.finish(source=unit.label)
    except BaseException:
        writer.abort()
        raise


def _worker_init() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one worker, one core: the pool is the parallelism


# --- a whole store ---------------------------------------------------------------------------------


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_part(text: str) -> tuple[int, int]:
    """`--shard I/N` -> (I, N), 0 <= I < N."""
    i, sep, n = text.partition("/")
    try:
        index, count = int(i), int(n)
    except ValueError:
        raise BigtrainError(f"--shard {text}: expected I/N, e.g. 7/64") from None
    if not sep or count < 1 or not 0 <= index < count:
        raise BigtrainError(f"--shard {text}: I must be in 0..N-1 (N >= 1)")
    return index, count


def prepare_store(
    source: Source,
    tok: PreTrainedTokenizerBase,
    target: Path,
    workers: int | None = None,
    part: tuple[int, int] = (0, 1),
    log: bool = True,
) -> TokenStore | None:
    """Tokenise `source` into the store `target` (resuming what is there). Returns the store once every
    unit is done (the index is written by whichever part finishes last), or None while other parts
    still have shards to write."""
    assert source.spec is not None
    spec = source.spec
    settings = store_settings(spec, tok)
    if (target / INDEX).is_file():
        store = TokenStore(target)
        if store.meta.fingerprint == settings["fingerprint"]:
            return store
    with prepare_lock(target):  # one part counts a dataset's rows and claims; the others read its settings
        have = read_settings(target)
        if have and have.get("fingerprint") == settings["fingerprint"] and have.get("num_units") is not None:
            settings = have
            units = units_from_rows(have["num_rows"]) if "num_rows" in have else source_units(spec)
        else:
            units = source_units(spec)
            settings["num_units"] = len(units)
            if units and units[0].rows is not None:
                settings["num_rows"] = units[-1].rows[1]
        claim_directory(target, settings)
    itemsize = dtype_for(len(tok)).itemsize
    cap = spec.get("max_tokens")
    if cap is not None and part[1] > 1:
        raise BigtrainError(f"{spec['key']}: max_tokens prepares documents in order, not in parts (--shard)")
    done = {u.index: r for u in units if (r := finished_shard(target, u.index, itemsize))}
    todo = [u for u in units if u.index % part[1] == part[0] and u.index not in done]
    if cap is not None:  # in order, each unit up to what the cap leaves
        for u in units:
            used = sum(r["tokens"] for r in done.values())
            if used >= cap:
                break
            if u.index not in done:
                done[u.index] = tokenise_unit(target, spec, u, tok.name_or_path, cap - used)
        units = [u for u in units if u.index in done]
    elif todo:
        n = workers or default_workers()
        small = workers is None and sum(os.path.getsize(u.file) for u in todo if u.file) < SMALL_INPUT_BYTES
        n = 1 if small else min(n, len(todo))
        for record in _run(target, spec, todo, tok.name_or_path, n):
            done[record["unit"]] = record
    if cap is None:  # re-read from disk: parts running at the same time may have finished theirs meanwhile
        done = {u.index: r for u in units if (r := finished_shard(target, u.index, itemsize))}
    if any(u.index not in done for u in units):
        if log:
            print(f"bigtrain: part {part[0]}/{part[1]}: {len(done)} of {len(units)} shards done at {target}")
        return None
    records = [done[u.index] for u in units]
    if sum(r["tokens"] for r in records) == 0:
        raise BigtrainError(f"{spec['key']}: the data is empty (no text to tokenise)")
    # every shard is there: this part is the last (or ties with another); the lock lets one write the index
    with prepare_lock(target):
        if not (target / INDEX).is_file():
            write_index(target, settings, records)
    store = TokenStore(target)
    if log:
        m = store.meta
        print(f"bigtrain: tokenised {m.num_documents:,} documents into {m.num_tokens:,} tokens at {target}")
    return store


def _run(target: Path, spec: dict[str, Any], units: list[Unit], tokenizer: str, workers: int) -> list[dict]:
    if workers <= 1:
        return [tokenise_unit(target, spec, u, tokenizer) for u in units]
    records = []
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init) as pool:
        futures: list[Future] = [pool.submit(tokenise_unit, target, spec, u, tokenizer) for u in units]
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in finished if f.exception() is not None), None)
        if failed is not None:
            for f in futures:
                f.cancel()
            raise failed.exception()  # type: ignore[misc]
        records = [f.result() for f in futures]
    return records


def cached_store(source: Source, tok: PreTrainedTokenizerBase, cache_root: Path, **kw: Any) -> TokenStore | None:
    """The source's store in the shared cache: `cache_root/tokens-<fingerprint>/`."""
    assert source.spec is not None
    target = cache_root / f"tokens-{store_settings(source.spec, tok)['fingerprint']}"
    return prepare_store(source, tok, target, **kw)


def prepare_token_dir(
    cfg: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path | None,
    cache_root: Path | None = None,
    workers: int | None = None,
    part: tuple[int, int] = (0, 1),
) -> list[tuple[Path, TokenStore | None]]:
    """`bigtrain-data prepare`: one source into `out_dir` (a mixture: `out_dir/<name>`), the eval split
    into `out_dir/eval`; without `out_dir`, into the cache the trainer reads. token_dir sources are
    already prepared and skipped."""
    sources = [s for s in train_sources(cfg) if s.spec is not None]
    ev = eval_source(cfg)
    if ev is not None and ev.spec is not None:
        sources.append(ev)
    if not sources:
        raise BigtrainError("data: nothing to prepare (set data.train_files, data.dataset or data.sources)")
    many = len(cfg.sources) > 1
    written = []
    for src in sources:
        if out_dir is None:
            assert cache_root is not None and src.spec is not None
            target = cache_root / f"tokens-{store_settings(src.spec, tokenizer)['fingerprint']}"
        elif src.name == "eval" and src.key != f"data.sources[{src.name}]":
            target = out_dir / "eval"
        else:
            target = out_dir / src.name if many else out_dir
        written.append((target, prepare_store(src, tokenizer, target, workers=workers, part=part)))
    return written


def check_vocab(token_file: Any, model_vocab: int) -> None:
    if token_file.meta.vocab_size > model_vocab:
        raise BigtrainError(
            f"model.vocab_size={model_vocab} is smaller than the tokenizer's {token_file.meta.vocab_size} tokens "
            f"({token_file.path})"
        )
