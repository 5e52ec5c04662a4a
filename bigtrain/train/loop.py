"""One training stage: build, resume, the step loop, finish. The loop reads like nanoGPT's: fetch a batch,
forward, backward, step, log, maybe eval, maybe save."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from bigtrain.config import Recipe, TrainConfig, dump_recipe
from bigtrain.data.sampler import make_sampler, resume_notes, tokens_by_source
from bigtrain.evaluation.downstream import require_lm_eval
from bigtrain.train.batches import DeviceBatches
from bigtrain.train.build import Built, build
from bigtrain.train.checkpoint import TrainState, load_checkpoint, read_state, resume_checkpoint, save_checkpoint
from bigtrain.train.distributed import World, barrier, init_distributed
from bigtrain.train.downstream_eval import downstream_scores
from bigtrain.train.downstream_eval import due as downstream_due
from bigtrain.train.evaluate import evaluate
from bigtrain.train.export import export_hf
from bigtrain.train.handover import load_handover
from bigtrain.train.metrics import (
    IntervalTimer,
    MetricsLogger,
    mfu,
    peak_memory_bytes,
    peak_reserved_bytes,
    write_run_info,
)
from bigtrain.train.moe_metrics import moe_record
from bigtrain.train.preemption import PreemptionFlag
from bigtrain.train.run_record import end_record, start_record
from bigtrain.train.schedule import extension_note, recompute_lr
from bigtrain.train.summary import print_stage_summary


def train(recipe: Recipe, world: World | None = None, preemption: PreemptionFlag | None = None) -> dict[str, Any]:
    """Run one stage in this process group (started here if needed); returns what run.json records.
    `preemption`: a flag installed earlier by the caller (default: installed now)."""
    started = time.perf_counter()
    preemption = preemption or PreemptionFlag()
    world = world or init_distributed(recipe.train.dist_timeout_minutes)
    out = Path(recipe.output_dir)
    torch.manual_seed(recipe.train.seed)
    if recipe.train.downstream:
        require_lm_eval()  # before anything is written
    ckpt = resume_checkpoint(out / "checkpoints", world)  # the newest that verifies
    saved = read_state(ckpt) if ckpt else None
    total_steps = recipe.total_steps(world.size)
    if already_finished(recipe, saved, total_steps, world):
        return {"status": "finished", "step": saved.step, "already_finished": True}  # type: ignore[union-attr]

    run = build(recipe, world, saved, ckpt is not None, total_steps)
    resume_start = time.perf_counter()
    state = (
        load_checkpoint(run.engine, ckpt, world) if ckpt else TrainState(world_size=world.size, seed=recipe.train.seed)
    )
    resume_s = time.perf_counter() - resume_start  # incl. a conversion to another world size (reshard.py)
    # a fresh start from given weights: fp32 masters (and a carried Adam state) straight from the checkpoint
    handover = load_handover(run.engine, recipe.init_from, world) if recipe.init_from and not ckpt else None
    continue_finished(recipe, run, state, world, total_steps)
    logger = open_outputs(recipe, world, state)
    info = start_record(recipe, world, run, total_steps, str(ckpt) if ckpt else None, resume_s, handover)
    if world.is_main:
        write_run_info(out / "run.json", info)

    status, final_eval = loop(recipe, run, state, world, logger, preemption, total_steps, info)
    if status == "finished":
        final_eval = finish(recipe, run, state, world, logger) or final_eval
    info = end_record(info, run, state, status, final_eval, started)
    if world.is_main:
        write_run_info(out / "run.json", info)
        print_stage_summary(out, info)
    logger.close()
    barrier()
    return info


def already_finished(recipe: Recipe, saved: TrainState | None, total_steps: int, world: World) -> bool:
    """Finished, exported (if asked) and not given more steps since: nothing to do."""
    out = Path(recipe.output_dir)
    done = saved is not None and saved.finished and saved.step >= total_steps  # else: extend it
    if done and (not recipe.train.export or (out / "hf" / "config.json").exists()):
        if world.is_main:
            print(f"bigtrain: {out} already finished at step {saved.step}; nothing to do")  # type: ignore[union-attr]
        return True
    return False


def continue_finished(recipe: Recipe, run: Built, state: TrainState, world: World, total_steps: int) -> None:
    state.world_size = world.size
    if state.finished and state.step < total_steps:  # a finished run given more steps: continue it
        state.finished = False
        recompute_lr(run.engine.lr_scheduler)
        if world.is_main:
            print(extension_note(recipe.train, state.step, total_steps))


def open_outputs(recipe: Recipe, world: World, state: TrainState) -> MetricsLogger:
    """recipe.yaml and the tokenizer next to the run; the metrics log, cut back to the resumed step."""
    out = Path(recipe.output_dir)
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.yaml").write_text(dump_recipe(recipe))
        if not (out / "tokenizer").exists() and not recipe.data.token_dir:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(recipe.data.tokenizer).save_pretrained(out / "tokenizer")
    logger = MetricsLogger(out, enabled=world.is_main)
    logger.truncate_after(state.step)
    return logger


def eval_due(t: TrainConfig, step: int, grown: bool) -> bool:
    """Every eval_every steps, and densely in a grown stage's first steps (train.eval_after_growth)."""
    dense = t.eval_after_growth
    if grown and dense is not None and step <= dense.steps and step % dense.every == 0:
        return True
    return bool(t.eval_every) and step % t.eval_every == 0


def loop(
    recipe: Recipe,
    run: Built,
    state: TrainState,
    world: World,
    logger: MetricsLogger,
    preemption: PreemptionFlag,
    total_steps: int,
    info: dict[str, Any],
) -> tuple[str, dict[str, float]]:
    """Train until `total_steps` or a preemption; returns (status, the last held-out eval)."""
    t, engine, data, out = recipe.train, run.engine, run.data, Path(recipe.output_dir)
    gbs, accum = run.global_batch, run.accum
    sampler = make_sampler(data.train, gbs, recipe.data.seed, recipe.data.start_sequence or 0, resume=state.data)
    for line in resume_notes(state.data, sampler, state.step * gbs) if world.is_main else []:
        print(f"bigtrain: {line}", flush=True)
    batches = DeviceBatches(data.train, sampler, world, t.micro_batch_size, accum, total_steps, engine.device)
    bar = tqdm(total=total_steps, initial=state.step, disable=not (world.is_main and t.progress), unit="step")
    timer = IntervalTimer()
    last_eval: dict[str, float] = {}
    grown = bool(recipe.init_from)  # starts from given (grown) weights: see them before the first update
    if data.eval is not None and grown and state.step == 0:
        last_eval = evaluate(engine, data.eval, world, t.micro_batch_size, t.eval_batches)
        logger.log({"step": 0, **last_eval, "growth_eval": True})
    while state.step < total_steps:
        for line in sampler.new_epochs(state.step) if world.is_main else []:
            print(f"bigtrain: step {state.step + 1}: {line}", flush=True)
        loss_sum = torch.zeros((), device=engine.device)
        aux_sum = torch.zeros((), device=engine.device)  # MoE: the weighted auxiliary losses in `loss`
        for micro_step in range(accum):
            batch = batches.get(state.step, micro_step)
            result = engine(input_ids=batch, labels=batch)
            engine.backward(result.loss)
            engine.step()
            loss_sum += result.loss.detach().float()
            if result.aux_loss is not None:
                aux_sum += result.aux_loss.detach().float()
        state.step += 1
        state.tokens += gbs * recipe.data.seq_len
        state.data = sampler.position(state.step * gbs)
        timer.step()
        bar.update(1)

        record = None
        if state.step % t.log_every == 0 or state.step == total_steps:
            record = step_record(recipe, run, state, world, loss_sum - aux_sum, timer, sampler, info)
            if run.model_cfg.is_moe:
                record.update(moe_record(engine.module, aux_sum, run.accum * world.size))
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
        if data.eval is not None and state.step < total_steps and eval_due(t, state.step, grown):
            last_eval = evaluate(engine, data.eval, world, t.micro_batch_size, t.eval_batches)
            record = {**(record or {"step": state.step}), **last_eval}
        if downstream_due(t.downstream, state.step, total_steps):
            scores = downstream_scores(
                engine.module, run.model_cfg, out, state.step, world, t.downstream, recipe.data.tokenizer,
                run.block_transform,
            )  # fmt: skip
            record = {**(record or {"step": state.step}), **scores}
        if record:
            logger.log(record)
        # a collective with a host read: every sync_every steps, and on steps that synced anyway (log/eval)
        if (record or state.step % t.sync_every == 0) and preemption.any_rank_received(engine.device):
            save_checkpoint(engine, out, state, run.model_cfg, world, t, can_retry=False)
            bar.close()
            return "preempted", last_eval
        if t.save_every and state.step % t.save_every == 0 and state.step < total_steps:
            save_checkpoint(engine, out, state, run.model_cfg, world, t)
    bar.close()
    return "finished", last_eval


def step_record(
    recipe: Recipe,
    run: Built,
    state: TrainState,
    world: World,
    loss_sum: torch.Tensor,
    timer: IntervalTimer,
    sampler: Any,
    info: dict[str, Any],
) -> dict[str, Any]:
    """The metrics of a logging step: its loss (the mean over every rank and micro batch of that step), LR, the
    interval's speed and MFU, memory."""
    dist.all_reduce(loss_sum)
    loss_total = float(loss_sum)  # the host sync: the interval's device work is done
    elapsed, steps = timer.lap()
    gbs, seq = run.global_batch, recipe.data.seq_len
    tokens_per_s = steps * gbs * seq / elapsed
    peak = info["peak_tflops_per_device"]
    return {
        "step": state.step,
        "loss": loss_total / (run.accum * world.size),
        "lr": float(run.engine.get_lr()[0]),
        "grad_norm": float(run.engine.get_global_grad_norm() or 0.0),
        "tokens": state.tokens,
        **tokens_by_source(sampler, state.step * gbs, seq),
        "tokens_per_s": tokens_per_s,
        "step_time_s": elapsed / steps,
        "mfu": mfu(info["flops_per_token"], tokens_per_s, peak, world.size),
        "mfu_palm": mfu(info["flops_per_token_palm"], tokens_per_s, peak, world.size),
        "memory_bytes": peak_memory_bytes(),
        "memory_reserved_bytes": peak_reserved_bytes(),
    }


def finish(recipe: Recipe, run: Built, state: TrainState, world: World, logger: MetricsLogger) -> dict[str, float]:
    """The end of a finished stage: the final eval, the last checkpoint, the export. Returns the eval."""
    t, out, final_eval = recipe.train, Path(recipe.output_dir), {}
    if run.data.eval is not None:
        final_eval = evaluate(run.engine, run.data.eval, world, t.micro_batch_size, t.eval_batches)
        logger.log({"step": state.step, **final_eval})
    state.finished = True
    if t.save_final:
        save_checkpoint(run.engine, out, state, run.model_cfg, world, t)
    if t.export:
        tokenizer_dir = out / "tokenizer" if (out / "tokenizer").exists() else None
        export_hf(run.engine.module, run.model_cfg, out / "hf", tokenizer_dir, world, transform=run.block_transform)
    return final_eval
