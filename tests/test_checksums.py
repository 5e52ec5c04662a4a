"""Per-rank checkpoint checksums (issue 21): with `train.checkpoint_checksums` every rank hashes the files
it wrote itself, the manifest gathers them, and they equal a direct SHA-256 of every file; at resume the
ranks share the hashing out again; a file whose bytes change afterwards (same size) is refused on resume,
which falls back to the previous checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bigtrain.ckpt import manifest
from bigtrain.ckpt.manifest import write_manifest
from bigtrain.train.checkpoint import checkpoint_problem, checksum_shares, writer_rank
from tests.trainer_runs import launch, losses, tiny_overrides

SHARD = "zero_pp_rank_1_mp_rank_00_optim_states.pt"


def test_each_file_has_one_writer() -> None:
    names = {
        "zero_pp_rank_1_mp_rank_00_optim_states.pt": 1,
        "zero_pp_rank_1_mp_rank_00_model_states.pt": 1,
        "bf16_zero_pp_rank_3_mp_rank_00_optim_states.pt": 3,
        "rng/rank_1.pt": 1,
        "rng/rank_0.pt": 0,
        "mp_rank_00_model_states.pt": 0,  # DeepSpeed's unpartitioned model states (stages 0-2), rank 0's
        "zero_to_fp32.py": 0,
        "config.json": 0,
        "zero_pp_rank_9_mp_rank_00_optim_states.pt": 0,  # not a rank of this world: rank 0 hashes it
    }
    assert {n: writer_rank(n, 4) for n in names} == names


def test_resume_hashing_is_shared_out_once_per_file() -> None:
    """At resume every rank hashes its own shards, and the rest (rank 0's files, and a larger world's
    ranks' after a world-size change) goes to the least-loaded rank: every file exactly once."""
    files = {
        **{f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt": 1000 for r in range(4)},  # saved by 4 ranks
        **{f"rng/rank_{r}.pt": 10 for r in range(4)},
        "zero_to_fp32.py": 50,
        "config.json": 1,
    }
    shares = checksum_shares(files, 2)  # resumed on 2
    assert sorted(n for share in shares for n in share) == sorted(files)
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt" in shares[1] and "rng/rank_0.pt" in shares[0]
    loads = [sum(files[n] for n in share) for share in shares]
    assert max(loads) - min(loads) <= 50  # ranks 2 and 3's shards split between the two
    assert sorted(checksum_shares(files, 1)[0]) == sorted(files)


def test_manifest_takes_the_ranks_checksums_and_hashes_only_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rng").mkdir()
    (tmp_path / "a.pt").write_bytes(b"a" * 10)
    (tmp_path / "rng" / "rank_1.pt").write_bytes(b"b" * 5)
    hashed: list[str] = []
    real = manifest.sha256
    monkeypatch.setattr(manifest, "sha256", lambda p: hashed.append(p.name) or real(p))
    written = write_manifest(tmp_path, checksums=True, known={"rng/rank_1.pt": "from rank 1"})
    assert written["files"]["rng/rank_1.pt"] == {"bytes": 5, "sha256": "from rank 1"}
    assert written["files"]["a.pt"]["sha256"] == hashlib.sha256(b"a" * 10).hexdigest()
    assert hashed == ["a.pt"]


@pytest.fixture(scope="module")
def run(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A finished 4-step 2-rank run with checksums: checkpoints step_2 and step_4."""
    root = tmp_path_factory.mktemp("checksums")
    values = {
        "train.max_steps": 4,
        "train.save_every": 2,
        "train.eval_every": 0,
        "train.keep_last": 2,
        "train.checkpoint_checksums": True,
        "train.export": False,
    }
    overrides = tiny_overrides(demo_data, root / "run", root / "cache", **values)
    launch(overrides, ranks=2)
    return root / "run", overrides


def test_manifest_checksums_equal_sha256_of_every_file(run: tuple[Path, list[str]]) -> None:
    ckpt = run[0] / "checkpoints" / "step_4"
    listed = json.loads((ckpt / "manifest.json").read_text())["files"]
    on_disk = sorted(
        p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file() and p.name != "manifest.json"
    )
    assert sorted(listed) == on_disk
    for name, entry in listed.items():
        assert entry["sha256"] == hashlib.sha256((ckpt / name).read_bytes()).hexdigest(), name
    assert {writer_rank(n, 2) for n in listed} == {0, 1} and writer_rank(SHARD, 2) == 1  # both ranks hashed


@pytest.mark.slow
def test_a_corrupted_file_is_refused_on_resume(run: tuple[Path, list[str]]) -> None:
    out, overrides = run
    shard = out / "checkpoints" / "step_4" / SHARD
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum sees it
    shard.write_bytes(bytes(data))
    before = losses(out)
    result = launch(overrides, ranks=2)
    expected = (
        f"bigtrain: checkpoint step_4 fails verification: {shard}: SHA-256 differs from manifest.json (corrupted); "
        "resuming from step_2 instead"
    )
    assert expected in result.stdout.splitlines(), result.stdout[-3000:]
    assert json.loads((out / "run.json").read_text())["resumed_from"] == str(out / "checkpoints" / "step_2")
    assert losses(out)[4] == pytest.approx(before[4], rel=1e-4)  # steps 3-4 trained again, as before
    assert checkpoint_problem(out / "checkpoints" / "step_4") is None  # saved again, checksums and all
    # the corrupted copy, which a size check cannot tell from a good one, is kept, not replaced
    aside = out / "checkpoints" / "step_4.failed-verification"
    assert (aside / SHARD).read_bytes() == bytes(data)
    assert checkpoint_problem(aside, checksums=False) is None and "SHA-256 differs" in checkpoint_problem(aside)
