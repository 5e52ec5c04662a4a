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
from bigtrain.data.sampler import ORDER_ENV, FeistelPermutation, GlobalBatchSampler, MixtureSampler, make_sampler
from bigtrain.data.store import MapCache, ShardWriter, TokenStore, write_index
from bigtrain.errors import BigtrainError

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


# --- the sampler's order ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 100, 1000, 4097, 65536, 100_003])
def test_feistel_is_a_permutation_and_deterministic(n: int) -> None:
    p = FeistelPermutation(n, [1234, 0])
    out = p(np.arange(n))
    assert np.array_equal(np.sort(out), np.arange(n))
    assert np.array_equal(out, FeistelPermutation(n, [1234, 0])(np.arange(n)))  # a pure function of the key
    assert np.array_equal(p(np.arange(n)[::-1]), out[::-1])  # per position: any subset, any order
    if n >= 64:
        assert not np.array_equal(out, FeistelPermutation(n, [1234, 1])(np.arange(n)))
        assert not np.array_equal(out, np.arange(n))


def test_feistel_costs_no_memory_per_sequence() -> None:
    """49M sequences (100B tokens at 2048): the old order held 392 MB per epoch; one batch now costs KBs."""
    import tracemalloc

    s = GlobalBatchSampler(49_000_000, 1024, seed=7)
    s.global_batch_indices(0)  # numpy's lazy imports and the epoch's key, outside the measurement
    tracemalloc.start()
    idx = s.micro_batch_indices(123_456, 3, 5, 64, 4)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100_000 and len(idx) == 4 and idx.max() < 49_000_000


def shares(sampler: GlobalBatchSampler, batch: int, world: int, micro: int) -> np.ndarray:
    steps = sampler.global_batch // (world * micro)
    return np.concatenate(
        [sampler.micro_batch_indices(batch, m, r, world, micro) for m in range(steps) for r in range(world)]
    )


def test_sampler_order_is_an_epoch_permutation_equal_on_1_and_2_ranks() -> None:
    s = GlobalBatchSampler(num_sequences=100, global_batch=8, seed=3)
    assert s.order == "feistel"
    for batch in (0, 5, 12, 13, 40):  # 12 and 13 cross into epoch 1
        assert np.array_equal(shares(s, batch, 1, 2), shares(s, batch, 2, 2))
        assert np.array_equal(shares(s, batch, 2, 1), s.global_batch_indices(batch))
    flat = np.concatenate([s.global_batch_indices(b) for b in range(25)])
    assert np.array_equal(np.sort(flat[:100]), np.arange(100)) and np.array_equal(
        np.sort(flat[100:200]), np.arange(100)
    )
    assert not np.array_equal(flat[:100], flat[100:200])  # reshuffled per epoch
    assert np.array_equal(
        flat, np.concatenate([GlobalBatchSampler(100, 8, 3).global_batch_indices(b) for b in range(25)])
    )
    assert not np.array_equal(GlobalBatchSampler(100, 8, 4).global_batch_indices(0), flat[:8])
    m = MixtureSampler([60, 40], [3, 1], ["a", "b"], 8, 3)
    for batch in (0, 7, 30):
        assert np.array_equal(shares(m, batch, 1, 4), shares(m, batch, 2, 2))
    drawn = np.concatenate([m.global_batch_indices(b) for b in range(40)])  # 320 positions: a's 240 = 4 epochs
    a = drawn[drawn < 60]
    assert all(np.array_equal(np.sort(a[i * 60 : (i + 1) * 60]), np.arange(60)) for i in range(4))


def legacy_order(n: int, seed: int, positions: np.ndarray) -> np.ndarray:
    """The order before issue 21: a materialised numpy permutation per epoch."""
    return np.array([np.random.default_rng([seed, int(p) // n]).permutation(n)[p % n] for p in positions])


def test_an_old_checkpoint_resumes_in_the_old_order(monkeypatch: pytest.MonkeyPatch) -> None:
    class Train:  # a single source (SequenceRange) as make_sampler sees it
        count = 100

    old = {"sequences": 40, "sources": {"train": {"sequences": 40, "epoch": 0}}}  # saved before `order` existed
    resumed = make_sampler(Train(), 8, 3, resume=old)
    assert resumed.order == "permutation"
    for batch in (5, 12, 13):
        want = legacy_order(100, 3, np.arange(batch * 8, batch * 8 + 8))
        assert np.array_equal(resumed.global_batch_indices(batch), want)
        assert np.array_equal(shares(resumed, batch, 2, 2), want)
    assert resumed.position(48)["order"] == "permutation"  # saved again: the run keeps its order
    assert make_sampler(Train(), 8, 3, resume=resumed.position(48)).order == "permutation"
    new = make_sampler(Train(), 8, 3, resume={})
    assert new.order == "feistel" and make_sampler(Train(), 8, 3, resume=new.position(8)).order == "feistel"
    monkeypatch.setenv(ORDER_ENV, "permutation")  # a new run asked for the old order
    assert make_sampler(Train(), 8, 3).order == "permutation"
    assert make_sampler(Train(), 8, 3, resume=new.position(8)).order == "feistel"  # a checkpoint's order wins
    monkeypatch.setenv(ORDER_ENV, "bogus")
    with pytest.raises(BigtrainError, match="BIGTRAIN_DATA_ORDER='bogus'"):
        make_sampler(Train(), 8, 3)
    mix = MixtureSampler([60, 40], [3, 1], ["a", "b"], 8, 3, order="permutation")
    positions = np.arange(0, 80)
    got = np.concatenate([mix.global_batch_indices(b) for b in range(10)])
    sources, draws = mix.schedule[positions % 4096], np.array([mix.draws_before(p) for p in positions])
    for p in positions:  # source s's j-th draw: perm(seed, s, j // n_s)[j % n_s], as before
        s, j, n = int(sources[p]), int(draws[p][sources[p]]), mix.counts[sources[p]]
        assert got[p] == mix.offsets[s] + np.random.default_rng([3, s, j // n]).permutation(n)[j % n]


def test_sampler_and_stream_do_not_import_each_other() -> None:
    import ast

    for mod, other in (("sampler", "stream"), ("stream", "sampler")):
        tree = ast.parse((REPO / "bigtrain" / "data" / f"{mod}.py").read_text())
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert f"bigtrain.data.{other}" not in names, f"{mod}.py imports {other}.py"


@pytest.mark.slow
def test_a_real_run_resumed_from_an_old_checkpoint_keeps_the_old_order(
    demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer: a run in the old order (8 steps, checkpoints at 4 and 8); its step-4 checkpoint made into
    one an older bigtrain wrote (no `data.order`), resumed by this version: steps 5-8 equal the old run's.
    The same checkpoint marked `feistel` trains on other batches (so the check can tell orders apart)."""
    import shutil

    from bigtrain.ckpt.manifest import write_manifest
    from tests.trainer_runs import launch, losses, tiny_overrides

    def overrides(out: Path) -> list[str]:
        return tiny_overrides(demo_data, out, tmp_path / "cache", **{"train.save_every": 4, "train.eval_every": 0})

    old = tmp_path / "old"
    monkeypatch.setenv(ORDER_ENV, "permutation")
    launch(overrides(old), ranks=1)
    monkeypatch.delenv(ORDER_ENV)
    want = losses(old)
    got = {}
    for name, order in (("resumed", None), ("feistel", "feistel")):
        out = tmp_path / name
        shutil.copytree(old / "checkpoints" / "step_4", out / "checkpoints" / "step_4")
        state_file = out / "checkpoints" / "step_4" / "bigtrain_state.json"
        state = json.loads(state_file.read_text())
        assert state["data"].pop("order") == "permutation"
        if order:
            state["data"]["order"] = order
        state_file.write_text(json.dumps(state))
        write_manifest(out / "checkpoints" / "step_4")
        launch(overrides(out), ranks=1)
        got[name] = losses(out)
    assert set(got["resumed"]) == {5, 6, 7, 8}
    for step in (5, 6, 7, 8):
        assert got["resumed"][step] == pytest.approx(want[step], rel=1e-5, abs=1e-5), step
    assert any(abs(got["feistel"][s] - want[s]) > 1e-3 for s in (5, 6, 7, 8))
