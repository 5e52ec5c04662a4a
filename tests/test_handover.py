"""The whole training state crosses growth: a bf16 training checkpoint grown with `optimizer="carry"` gives
fp32 masters and Adam moments mapped through the operator, and a grown engine on another number of ranks
holds exactly those in its partitions (not the bf16-rounded weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bigtrain.ckpt.source import open_checkpoint
from bigtrain.ckpt.zero3 import Zero3Checkpoint
from bigtrain.errors import BigtrainError
from bigtrain.growth import grow_checkpoint
from bigtrain.growth.api import OPTIMIZER_DIR
from tests.trainer_runs import REPO, launch, run_ranks, tiny_overrides

LAYERS = 2  # the tiny model's depth; stacked to 4: target layer i copies source layer i mod 2


@pytest.fixture(scope="module")
def trained(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained 3 bf16 steps on one rank: its run directory (checkpoints/latest)."""
    root = tmp_path_factory.mktemp("handover")
    run = root / "small"
    launch(
        tiny_overrides(
            demo_data,
            run,
            root / "cache",
            **{"train.max_steps": 3, "train.precision": "bf16", "train.eval_every": 0, "train.export": False},
        ),
        1,
    )
    return run


@pytest.fixture(scope="module")
def grown(trained: Path) -> Path:
    out = trained.parent / "grown"
    grow_checkpoint(trained, out, op="stack", layers=2 * LAYERS, optimizer="carry", progress=False)
    return out


def source_checkpoint(run: Path) -> Zero3Checkpoint:
    return Zero3Checkpoint(run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip())


def test_stack_carries_masters_and_moments_copy_by_copy(trained: Path, grown: Path) -> None:
    src = source_checkpoint(trained)
    weights = open_checkpoint(grown)
    moments = {k: open_checkpoint(grown / OPTIMIZER_DIR / k) for k in ("exp_avg", "exp_avg_sq")}
    assert weights.dtype == torch.float32  # the masters, not a bf16 export
    compared = 0
    for name in weights:
        if not name.startswith("model.layers."):
            continue
        i, rest = name.removeprefix("model.layers.").split(".", 1)
        source_name = f"model.layers.{int(i) % LAYERS}.{rest}"
        assert torch.equal(weights[name], src.read(source_name)), name
        assert torch.equal(moments["exp_avg"][name], src.read(source_name, "exp_avg")), name
        torch.testing.assert_close(moments["exp_avg_sq"][name], src.read(source_name, "exp_avg_sq"), rtol=1e-6, atol=0)
        assert moments["exp_avg"][name].abs().sum() > 0, name  # trained: real moments, not zeros
        compared += 1
    assert compared == 2 * LAYERS * 9  # 7 projections + 2 norms per layer
    state = json.loads((grown / OPTIMIZER_DIR / "state.json").read_text())
    assert state["step"] == 3
    # the masters really differ from their bf16 rounding: the hand-over would lose this via the module
    w = weights["model.layers.0.mlp.up_proj.weight"]
    assert not torch.equal(w, w.bfloat16().float())


@pytest.mark.parametrize("ranks", [2])
def test_grown_engine_on_another_world_size_holds_the_carried_state(grown: Path, tmp_path: Path, ranks: int) -> None:
    run_ranks(REPO / "tests" / "handover_ranks.py", [str(grown), str(tmp_path)], ranks)
    saved = Zero3Checkpoint(tmp_path / "step_0")
    assert saved.world_size == ranks
    weights = open_checkpoint(grown)
    moments = {k: open_checkpoint(grown / OPTIMIZER_DIR / k) for k in ("exp_avg", "exp_avg_sq")}
    for name in weights:
        if name == "lm_head.weight":
            continue  # tied
        assert torch.equal(saved.read(name), weights[name]), name  # fp32, not rounded to the bf16 module
        for key, m in moments.items():
            assert torch.equal(saved.read(name, key), m[name]), (name, key)
    assert saved.adam_step() == 3
    assert json.loads((tmp_path / "handover.json").read_text())["optimizer"] == "carried"


def test_carry_needs_a_training_checkpoint(grown: Path, tmp_path: Path) -> None:
    with pytest.raises(BigtrainError, match="holds no optimizer state"):
        grow_checkpoint(grown, tmp_path / "again", op="stack", layers=8, optimizer="carry", progress=False)
    assert not (tmp_path / "again").exists()
