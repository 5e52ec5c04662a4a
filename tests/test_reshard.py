"""The world-size conversion spread over ranks (issue 21): each rank writes a disjoint, byte-balanced share
of the universal layout, and the files are byte for byte those of a conversion in one process; a failure
on one rank stops every rank with its message and leaves nothing half-written to be used.

The checkpoint is synthetic, in DeepSpeed's ZeRO-3 layout as `ckpt/zero3.py` reads it (two parameter
groups, a tied alias, a frozen parameter, sizes that do not divide by the world size); the real trainer's
conversions are `tests/test_elastic.py`'s.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from bigtrain.ckpt.zero3 import Zero3Checkpoint
from bigtrain.errors import BigtrainError
from bigtrain.train.reshard import META, TMP, conversion_units, convert, shares, tensor_bytes, universal_dir
from tests.trainer_runs import REPO, run_ranks

SAVED_BY = 3
GROUPS = [  # trainable parameters, per optimizer parameter group
    {"module.embed.weight": (37, 8), "module.layers.0.proj.weight": (8, 8), "module.layers.1.proj.weight": (8, 8)},
    {"module.norm.weight": (8,), "module.layers.0.norm.weight": (5,)},
]
FROZEN = {"module.layers.1.base.weight": (7, 3)}


def write_zero3(ckpt: Path, world: int = SAVED_BY, seed: int = 0) -> None:
    """A ZeRO-3 checkpoint saved by `world` ranks: each rank's flat fp32 groups and Adam moments hold
    ceil(numel / world) elements of every parameter (the last rank's zero-padded), frozen fragments alike."""
    gen = torch.Generator().manual_seed(seed)
    full = {
        key: {n: torch.randn(math.prod(s), generator=gen) for g in GROUPS for n, s in g.items()}
        for key in ("fp32", "exp_avg", "exp_avg_sq")
    }
    frozen = {n: torch.randn(math.prod(s), generator=gen) for n, s in FROZEN.items()}

    def part(t: torch.Tensor, r: int) -> torch.Tensor:
        per = math.ceil(t.numel() / world)
        return torch.cat([t, torch.zeros(per * world - t.numel())])[r * per : (r + 1) * per].clone()

    ckpt.mkdir(parents=True)
    for r in range(world):
        flat = {key: [torch.cat([part(v[n], r) for n in g]) for g in GROUPS] for key, v in full.items()}
        state = {i: {"step": 3, "exp_avg": flat["exp_avg"][i], "exp_avg_sq": flat["exp_avg_sq"][i]} for i in range(2)}
        groups = [{"lr": 1e-3, "weight_decay": wd, "params": [i]} for i, wd in enumerate((0.1, 0.0))]
        osd = {
            "zero_stage": 3,
            "partition_count": world,
            "fp32_flat_groups": flat["fp32"],
            "optimizer_state_dict": {"state": state, "param_groups": groups},
        }
        torch.save({"optimizer_state_dict": osd}, ckpt / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
        model = {
            "param_shapes": GROUPS,
            "frozen_param_shapes": FROZEN,
            "frozen_param_fragments": {n: part(t, r) for n, t in frozen.items()},
            "shared_params": {"module.head.weight": "module.embed.weight"},
            "lr_scheduler": {"last_epoch": 3},
            "global_steps": 3,
            "global_samples": 24,
            "skipped_steps": 0,
            "ds_config": {"train_batch_size": 8},
        }
        torch.save(model, ckpt / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt")


def files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    write_zero3(tmp_path / "step_3")
    return tmp_path / "step_3"


@pytest.mark.parametrize("ranks", [1, 2, 3, 5, 64])
def test_shares_are_disjoint_and_balanced_by_bytes(ckpt: Path, ranks: int) -> None:
    src = Zero3Checkpoint(ckpt)
    plan = shares(src, ranks)
    assert len(plan) == ranks
    assert sorted(u for share in plan for u in share) == sorted(conversion_units(src))  # each file exactly once
    loads = [sum(tensor_bytes(src, name) for name, _ in share) for share in plan]
    biggest = max(tensor_bytes(src, name) for name, _ in conversion_units(src))
    assert max(loads) <= sum(loads) / ranks + biggest  # greedy, largest first: at most one file above the mean
    assert plan == shares(Zero3Checkpoint(ckpt), ranks)  # every rank computes the same plan on its own


def test_one_process_conversion_holds_every_tensor(ckpt: Path) -> None:
    out, _ = convert(ckpt)
    src = Zero3Checkpoint(ckpt)
    for name, key in conversion_units(src):
        saved = torch.load(out / "zero" / name / f"{key}.pt", weights_only=False)["param"]
        assert torch.equal(saved, src.read(name, key)), (name, key)
    assert not (ckpt / TMP).exists() and (out / META).is_file()
    assert convert(ckpt)[1] == 0.0  # done once, reused


@pytest.mark.parametrize("ranks", [2])
def test_conversion_on_two_ranks_is_byte_identical_to_one(ckpt: Path, tmp_path: Path, ranks: int) -> None:
    spread = tmp_path / "spread" / "step_3"
    shutil.copytree(ckpt, spread)
    reference, _ = convert(ckpt)
    run_ranks(REPO / "tests" / "reshard_ranks.py", [str(spread), str(tmp_path)], ranks)
    assert [(tmp_path / f"rank_{r}.txt").read_text()[:3] for r in range(ranks)] == ["ok "] * ranks
    got, want = files(universal_dir(spread)), files(reference)
    assert sorted(got) == sorted(want) and len(want) == 2 + 5 * 3 + 1  # optimizer_state, META, 5 x 3 + 1 tensors
    for name in want:
        if name == META:  # it names its source checkpoint, the only difference
            a, b = json.loads(got[name]), json.loads(want[name])
            assert (a.pop("source"), b.pop("source")) == (str(spread), str(ckpt)) and a == b
        else:
            assert got[name] == want[name], name
    assert not (spread / TMP).exists()


def test_a_failure_on_one_rank_stops_both_and_leaves_nothing(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BIGTRAIN_TEST_FAIL_RANK", "1")
    run_ranks(REPO / "tests" / "reshard_ranks.py", [str(ckpt), str(tmp_path)], 2)
    for r in range(2):
        line = (tmp_path / f"rank_{r}.txt").read_text()
        assert line == f"{ckpt}: converting for 2 ranks failed on rank 1 ([Errno 28] No space left on device)", r
    assert not universal_dir(ckpt).exists() and not (ckpt / TMP).exists()
    monkeypatch.delenv("BIGTRAIN_TEST_FAIL_RANK")
    run_ranks(REPO / "tests" / "reshard_ranks.py", [str(ckpt), str(tmp_path)], 2)  # the next start converts
    assert (universal_dir(ckpt) / META).is_file()


def test_a_checkpoint_without_optimizer_state_is_refused_before_writing(ckpt: Path) -> None:
    for f in ckpt.glob("*_optim_states.pt"):
        sd = torch.load(f, weights_only=False)
        sd["optimizer_state_dict"]["optimizer_state_dict"]["state"] = {}
        torch.save(sd, f)
    with pytest.raises(BigtrainError, match="holds no optimizer state"):
        convert(ckpt)
    assert not universal_dir(ckpt).exists()
