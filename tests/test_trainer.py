"""The core trainer, end to end: real DeepSpeed ZeRO-3 runs on CPU (gloo), real text, real tokenizer.

Three runs of the same 12-step recipe are shared by the tests below:
- `two_ranks`: 2 ranks through the deepspeed launcher, global batch 8 = micro 2 x accum 2 x 2 ranks;
- `one_rank`: 1 rank, same global batch = micro 2 x accum 4;
- `interrupted`: 2 ranks, killed with SIGKILL after its step-4 checkpoint, then the same command again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.trainer_runs import launch, losses, metrics, tiny_overrides, wait_until_caught

STEPS = 12


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("token-cache")


def overrides(demo_data: Path, out: Path, cache: Path) -> list[str]:
    return tiny_overrides(demo_data, out, cache, **{"train.max_steps": STEPS, "train.save_every": 4})


@pytest.fixture(scope="module")
def two_ranks(demo_data: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("two-ranks")
    # the README's command: `deepspeed bigtrain/train.py`, through the real launcher
    launch(overrides(demo_data, out, cache_dir), ranks=2, real_launcher=True)
    return out


@pytest.fixture(scope="module")
def one_rank(demo_data: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one-rank")
    launch(overrides(demo_data, out, cache_dir), ranks=1)
    return out


@pytest.fixture(scope="module")
def interrupted(demo_data: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("interrupted")
    args = overrides(demo_data, out, cache_dir)
    proc = launch(
        args, ranks=2, background=True, real_launcher=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    marker = out / "checkpoints" / "step_4" / "bigtrain_state.json"
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # a crash: no chance to save or clean up
    proc.wait()
    assert marker.exists(), "the run never reached its first checkpoint"
    assert not (out / "hf").exists(), "the run finished before it could be interrupted"
    # debris of a save that crashed half-way must be ignored on resume
    (out / "checkpoints" / ".tmp-step_12").mkdir()
    (out / "checkpoints" / ".tmp-step_12" / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"partial")
    launch(args, ranks=2)
    return out


def test_loss_goes_down_on_real_text(two_ranks: Path) -> None:
    curve = losses(two_ranks)
    assert sorted(curve) == list(range(1, STEPS + 1))
    assert curve[STEPS] < curve[1] - 1.0, curve
    evals = [m["eval_loss"] for m in metrics(two_ranks) if "eval_loss" in m]
    assert len(evals) >= 3 and evals[-1] < evals[0], evals


def test_metrics_and_run_info(two_ranks: Path) -> None:
    last = [m for m in metrics(two_ranks) if "loss" in m][-1]
    for key in ("step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "memory_bytes"):
        assert key in last
    assert last["tokens"] == STEPS * 8 * 64
    info = json.loads((two_ranks / "run.json").read_text())
    assert info["world_size"] == 2 and info["gradient_accumulation_steps"] == 2
    assert info["params_total"] == info["params_trainable"] > 2_000_000
    assert info["status"] == "finished" and info["zero_stage"] == 3
    assert info["memory"]["optimizer_state_bytes"] > 0 and info["versions"]["deepspeed"]
    assert list((two_ranks / "tb").iterdir()), "no TensorBoard events"


def test_two_ranks_equal_one_rank(two_ranks: Path, one_rank: Path) -> None:
    a, b = losses(two_ranks), losses(one_rank)
    assert a.keys() == b.keys()
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=2e-4, abs=2e-4), (step, a[step], b[step])


def test_resumed_equals_uninterrupted(two_ranks: Path, interrupted: Path) -> None:
    info = json.loads((interrupted / "run.json").read_text())
    assert info["resumed_from"] and Path(info["resumed_from"]).name in {"step_4", "step_8"}
    a, b = losses(two_ranks), losses(interrupted)
    assert a.keys() == b.keys(), "metrics.jsonl should read as one run"
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5, abs=1e-5), (step, a[step], b[step])
    assert not (interrupted / "checkpoints" / ".tmp-step_12").exists() or (interrupted / "hf").exists()


def test_checkpoints_are_pruned_and_latest_moves_last(two_ranks: Path) -> None:
    root = two_ranks / "checkpoints"
    steps = sorted(d.name for d in root.iterdir() if d.name.startswith("step_"))
    assert steps == ["step_12", "step_8"]  # keep_last=2
    assert (root / "latest").read_text() == "step_12"
    state = json.loads((root / "step_12" / "bigtrain_state.json").read_text())
    assert state["step"] == 12 and state["finished"] and state["tokens"] == STEPS * 8 * 64


def test_rerun_of_a_finished_run_does_nothing(demo_data: Path, cache_dir: Path, two_ranks: Path) -> None:
    before = (two_ranks / "metrics.jsonl").read_text()
    result = launch(overrides(demo_data, two_ranks, cache_dir), ranks=1)
    assert "already finished" in result.stdout
    assert (two_ranks / "metrics.jsonl").read_text() == before


LOGITS_SCRIPT = """
import sys, torch
from transformers import AutoTokenizer, LlamaForCausalLM
model = LlamaForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
ids = AutoTokenizer.from_pretrained(sys.argv[1])(sys.argv[2], return_tensors="pt").input_ids[:, :48]
with torch.no_grad():
    torch.save({"ids": ids, "logits": model(ids).logits}, sys.argv[3])
assert not any(name.startswith("bigtrain") for name in sys.modules), "bigtrain was imported"
"""


def test_export_is_a_stock_llama_with_the_trained_weights(two_ranks: Path, sample_text: str, tmp_path: Path) -> None:
    hf = two_ranks / "hf"
    config = json.loads((hf / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert (hf / "tokenizer.json").exists()
    # plain transformers, bigtrain not imported
    out = tmp_path / "logits.pt"
    subprocess.run([sys.executable, "-c", LOGITS_SCRIPT, str(hf), sample_text, str(out)], check=True, cwd=tmp_path)
    stock = torch.load(out)
    # the same model rebuilt from the ZeRO-3 training checkpoint's fp32 master weights
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from bigtrain.model import BigTrainConfig, BigTrainForCausalLM

    ckpt = two_ranks / "checkpoints"
    model = BigTrainForCausalLM(BigTrainConfig.from_pretrained(ckpt / "step_12")).eval()
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="step_12")
    state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    model.load_state_dict(state)
    with torch.no_grad():
        ours = model(stock["ids"]).logits
    torch.testing.assert_close(ours, stock["logits"], rtol=1e-5, atol=1e-5)


def test_signal_during_startup_saves_at_the_first_step_and_exits_3_and_init_from_an_export(
    demo_data: Path, cache_dir: Path, two_ranks: Path, tmp_path: Path
) -> None:
    """SIGUSR1 (Slurm's pre-timeout signal) arriving while the trainer still imports is not lost; the run
    starts from the two-rank run's export (init_from), so it also checks that a run initialised from an
    export starts from its weights (one run for both: each launch is ~20 s of start-up)."""
    out = tmp_path / "preempted"
    args = tiny_overrides(demo_data, out, cache_dir, init_from=two_ranks / "hf", **{"train.max_steps": 4})
    proc = launch(args, ranks=1, background=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until_caught(proc.pid)  # the handler is set before the heavy imports: the signal still comes mid-start-up
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 3, err[-2000:]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "preempted" and info["step"] == 1
    assert (out / "checkpoints" / "step_1" / "bigtrain_state.json").exists()
    launch(args, ranks=1)  # the same command finishes the run
    assert sorted(losses(out)) == [1, 2, 3, 4]
    # init_from: the first step (trained before the signal was acted on) starts from the trained weights
    assert losses(out)[1] < losses(two_ranks)[1] - 1.0, "a run initialised from trained weights starts lower"
    assert json.loads((out / "run.json").read_text())["init_from"] == str(two_ranks / "hf")
