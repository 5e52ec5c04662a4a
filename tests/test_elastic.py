"""Resume on another number of ranks, and extend a finished run: real DeepSpeed ZeRO-3 ranks on CPU.

An uninterrupted 1-rank run per kind (a plain run; a STEP stage grown from it) is the reference. Its
step-2 checkpoint resumes on 2 ranks (1 -> 2), whose later checkpoint (saved by 2 ranks) resumes on 1
rank (2 -> 1); the losses after each resume must equal the reference's. The data order does not depend
on the world size, the global batch is the same (8 = 2 x 4 x 1 rank = 2 x 2 x 2 ranks), so the only
differences are float reduction orders. The plain run's 2 -> 1 leg also extends it: the 2-rank leg
finishes at step 6, the 1-rank leg is the same command with `max_steps` 8 (constant LR, so the longer
reference is the uninterrupted run).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from bigtrain.config import TrainConfig
from bigtrain.train.schedule import extension_note, lr_multiplier, recompute_lr
from tests.trainer_runs import launch, losses, tiny_overrides

TOL = {"rel": 1e-5, "abs": 1e-5}  # 1 vs 2 ranks: reduction order only (measured: <= 1e-6)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("token-cache")


def args(demo_data: Path, out: Path, cache: Path, steps: int, **extra: object) -> list[str]:
    values = {"train.max_steps": steps, "train.save_every": 2, "train.keep_last": 4, "train.eval_every": 0}
    return tiny_overrides(demo_data, out, cache, **{**values, **extra})


def resume_copy(run: Path, step: int, out: Path) -> Path:
    """A new run directory whose only checkpoint is `run`'s step `step` (as if the later ones were lost)."""
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / "checkpoints" / f"step_{step}", out / "checkpoints" / f"step_{step}")
    (out / "checkpoints" / "latest").write_text(f"step_{step}")
    return out


def assert_same_losses(resumed: Path, reference: Path, steps: range) -> None:
    a, b = losses(resumed), losses(reference)
    assert sorted(a) == list(steps)
    for step in a:
        assert a[step] == pytest.approx(b[step], **TOL), (step, a[step], b[step])


def run_logged(out: Path, overrides: list[str], ranks: int) -> None:
    (out / "log.txt").write_text(launch(overrides, ranks=ranks).stdout)


@pytest.fixture(scope="module")
def plain(demo_data: Path, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    constant = {"train.schedule": "constant"}
    ref = tmp_path_factory.mktemp("plain-ref")
    launch(args(demo_data, ref, cache, 8, **constant), ranks=1)
    up = resume_copy(ref, 2, tmp_path_factory.mktemp("plain-1to2"))
    run_logged(up, args(demo_data, up, cache, 6, **constant), ranks=2)
    down = resume_copy(up, 6, tmp_path_factory.mktemp("plain-2to1-extended"))
    run_logged(down, args(demo_data, down, cache, 8, **constant), ranks=1)
    return {"ref": ref, "up": up, "down": down}


@pytest.mark.slow
def test_plain_run_resumes_on_more_ranks(plain: dict[str, Path]) -> None:
    up = plain["up"]
    assert "was saved by 1 ranks; resuming on 2" in (up / "log.txt").read_text()
    converted = up / "checkpoints" / "step_2" / "universal"
    assert (converted / "universal.json").is_file()
    assert (converted / "zero" / "model.embed_tokens.weight" / "exp_avg_sq.pt").is_file()
    assert not list((up / "checkpoints" / "step_2").glob(".tmp-*"))
    assert_same_losses(up, plain["ref"], range(3, 7))
    assert json.loads((up / "run.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_finished_run_extended_on_fewer_ranks(plain: dict[str, Path]) -> None:
    log = (plain["down"] / "log.txt").read_text()
    assert "was saved by 2 ranks; resuming on 1" in log
    assert "extending a finished run from step 6 to 8 at the constant LR" in log
    assert_same_losses(plain["down"], plain["ref"], range(7, 9))
    state = json.loads((plain["down"] / "checkpoints" / "step_8" / "bigtrain_state.json").read_text())
    assert state["finished"] and state["step"] == 8 and state["world_size"] == 1


@pytest.mark.slow
def test_another_global_batch_is_refused(demo_data: Path, cache: Path, plain: dict[str, Path], tmp_path: Path) -> None:
    run = resume_copy(plain["up"], 4, tmp_path / "run")  # saved by 2 ranks with a global batch of 8
    result = launch(args(demo_data, run, cache, 6, **{"train.global_batch_size": 4}), ranks=1, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "train.global_batch_size: " in result.stderr and "global batch of 8" in result.stderr
    assert "set train.global_batch_size=8" in result.stderr
    assert not (run / "checkpoints" / "step_4" / "universal").exists() and not (run / "metrics.jsonl").exists()


def test_extension_recomputes_the_cosine_decay_for_the_new_length() -> None:
    cfg = TrainConfig(lr=1e-2, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=cfg.lr)
    old = LambdaLR(opt, lr_multiplier(cfg, 6))
    for _ in range(6):
        opt.step()
        old.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)  # the end of the 6-step decay: the floor
    new = LambdaLR(opt, lr_multiplier(cfg, 12))  # the extended run's scheduler, its state from the checkpoint
    new.load_state_dict(old.state_dict())
    recompute_lr(new)
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.lr * lr_multiplier(cfg, 12)(6)) and new.last_epoch == 6
    note = extension_note(cfg, 6, 12)
    assert "from step 6 to 12; the cosine decay is recomputed for 12 steps" in note
    assert f"LR {cfg.lr * lr_multiplier(cfg, 12)(6):.3g}" in note


@pytest.fixture(scope="module")
def step_stage(
    demo_data: Path, cache: Path, plain: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """A STEP stage (2 inherited layers frozen + LoRA, 1 new layer) grown from the plain run."""
    from bigtrain.growth import grow_checkpoint

    init = tmp_path_factory.mktemp("step-init") / "init"
    grow_checkpoint(plain["ref"] / "checkpoints" / "step_6", init, op="step", layers=3, init="mean", progress=False)
    extra = {"init_from": init, "step.lora_rank": 4}
    ref = tmp_path_factory.mktemp("step-ref")
    launch(args(demo_data, ref, cache, 6, **extra), ranks=1)
    up = resume_copy(ref, 2, tmp_path_factory.mktemp("step-1to2"))
    launch(args(demo_data, up, cache, 6, **extra), ranks=2)
    down = resume_copy(up, 4, tmp_path_factory.mktemp("step-2to1"))
    launch(args(demo_data, down, cache, 6, **extra), ranks=1)
    return {"ref": ref, "up": up, "down": down}


@pytest.mark.slow
def test_step_stage_resumes_on_more_ranks(step_stage: dict[str, Path]) -> None:
    converted = step_stage["up"] / "checkpoints" / "step_2" / "universal"
    meta = json.loads((converted / "universal.json").read_text())
    frozen = {n for n, p in meta["params"].items() if p["frozen"]}  # the inherited layers (0 and 2 of 3)
    assert frozen and all(".base_layer." in n or n.endswith("layernorm.weight") for n in frozen)
    lora = {n for n in meta["params"] if ".lora_" in n}
    assert lora and not lora & frozen
    assert (converted / "zero" / sorted(lora)[0] / "exp_avg.pt").is_file()
    assert_same_losses(step_stage["up"], step_stage["ref"], range(3, 7))


@pytest.mark.slow
def test_step_stage_resumes_on_fewer_ranks(step_stage: dict[str, Path]) -> None:
    assert_same_losses(step_stage["down"], step_stage["ref"], range(5, 7))
    assert (step_stage["down"] / "hf" / "config.json").is_file()  # the export folds the LoRA as before
