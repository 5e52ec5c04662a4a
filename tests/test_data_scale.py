"""At scale (issue 21): a store of many shards read with a bounded number of descriptors, and the sampler's
O(1)-memory order. Synthetic token stores (no tokenizer needed): the store only reads what the index says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bigtrain.data import store as store_mod
from bigtrain.data.store import MapCache, ShardWriter, TokenStore, write_index

REPO = Path(__file__).resolve().parents[1]


def synthetic_store(path: Path, shards: int, tokens_per_shard: int, seed: int = 0) -> np.ndarray:
    """A store of `shards` shards of random uint16 tokens (sizes vary, a few empty); returns all tokens."""
    rng = np.random.default_rng(seed)
    (path / "shards").mkdir(parents=True)
    settings = {
        "format": store_mod.FORMAT,
        "dtype": "uint16",
        "fingerprint": "synthetic",
        "tokenizer": {"name": "synthetic", "vocab_size": 50000, "eos_token_id": 0, "bos_token_id": None, "hash": None},
    }
    records, flat = [], []
    for unit in range(shards):
        n = 0 if unit % 97 == 5 else int(rng.integers(1, 2 * tokens_per_shard))
        ids = rng.integers(0, 50000, n, dtype=np.uint16)
        w = ShardWriter(path, unit, np.dtype(np.uint16))
        w.write(ids, documents=1)
        records.append(w.finish())
        flat.append(ids)
    write_index(path, settings, records)
    return np.concatenate(flat).astype(np.int64)


READER = """
import hashlib, json, os, resource, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))  # soft and hard: the store cannot raise it
from bigtrain.data.store import TokenStore, map_cache
s = TokenStore(sys.argv[1])
h = hashlib.sha256()
for start in range(0, s.meta.num_tokens, 700):  # reads that span shards, through every shard
    h.update(s.read(start, min(start + 700, s.meta.num_tokens)).tobytes())
print(json.dumps({"sha": h.hexdigest(), "fds": len(os.listdir("/proc/self/fd")), "open": len(map_cache())}))
"""


def run_reader(path: Path, limit: int, open_shards: int | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(store_mod.OPEN_SHARDS_ENV, None)
    if open_shards is not None:
        env[store_mod.OPEN_SHARDS_ENV] = str(open_shards)
    return subprocess.run(
        [sys.executable, "-c", READER, str(path), str(limit)], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("scale") / "store"
    return path, synthetic_store(path, shards=600, tokens_per_shard=300)


def test_many_shards_read_under_a_low_ulimit(many_shards: tuple[Path, np.ndarray]) -> None:
    """600 shards under `ulimit -n 128` (the issue's case fails with EMFILE when every shard stays open)."""
    path, tokens = many_shards
    import hashlib

    want = hashlib.sha256()
    for start in range(0, len(tokens), 700):
        want.update(tokens[start : start + 700].tobytes())
    done = run_reader(path, limit=128, open_shards=16)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["sha"] == want.hexdigest() and got["open"] <= 16 and got["fds"] < 128


def test_a_limit_too_low_for_the_cache_is_one_line(many_shards: tuple[Path, np.ndarray]) -> None:
    path, _ = many_shards
    done = run_reader(path, limit=128, open_shards=None)  # the default 128 maps cannot fit in 128 descriptors
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "the open-file limit (ulimit -n) is 128" in last and store_mod.OPEN_SHARDS_ENV in last


def test_the_cache_is_bounded_and_reads_are_exact(
    many_shards: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, tokens = many_shards
    monkeypatch.setattr(store_mod, "_CACHE", MapCache(5))
    before = len(os.listdir("/proc/self/fd"))
    s = TokenStore(path)
    assert s.meta.num_tokens == len(tokens) and len(s.shards) == 600
    for start in range(0, len(tokens), 333):
        assert np.array_equal(s.read(start, start + 333), tokens[start : start + 333])
    assert len(store_mod.map_cache()) == 5 and len(os.listdir("/proc/self/fd")) - before <= 5
    assert np.array_equal(s.sequence(7, 1000), tokens[7000:8000])


def test_open_shards_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(store_mod.OPEN_SHARDS_ENV, "0")
    with pytest.raises(store_mod.BigtrainError, match="BIGTRAIN_OPEN_SHARDS='0': must be an integer >= 1"):
        store_mod.open_shards_limit()
    monkeypatch.delenv(store_mod.OPEN_SHARDS_ENV)
    assert store_mod.open_shards_limit() == store_mod.OPEN_SHARDS_DEFAULT
