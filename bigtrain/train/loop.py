"""One training stage: build, resume, loop, save, export. Reads like nanoGPT's loop:
fetch batch, forward, backward, step, log, maybe eval, maybe save."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from bigtrain.ckpt.source import open_checkpoint
from bigtrain.config import Recipe, dump_recipe
from bigtrain.data.dataset import RunData, prepare_run_data
from bigtrain.data.prepare import check_vocab
from bigtrain.data.sampler import make_sampler, resume_notes, tokens_by_source
from bigtrain.errors import BigtrainError
from bigtrain.evaluation.downstream import require_lm_eval
from bigtrain.evaluation.in_training import downstream_scores
from bigtrain.evaluation.in_training import due as downstream_due
from bigtrain.model import BigTrainForCausalLM
from bigtrain.model.counting import palm_flops_per_token, train_flops_per_token
from bigtrain.train import state_bytes
from bigtrain.train.batches import DeviceBatches
from bigtrain.train.checkpoint import TrainState, load_checkpoint, read_state, resume_checkpoint, save_checkpoint
from bigtrain.train.distributed import World, barrier, broadcast_object, init_distributed
from bigtrain.train.evaluate import evaluate
from bigtrain.train.export import export_hf
from bigtrain.train.fast_path import plan_engine, prepare_model, restore_fp32_rope, resumed_zero_stage
from bigtrain.train.metrics import (
    IntervalTimer,
    MetricsLogger,
    detect_peak,
    mfu,
    peak_memory_bytes,
    peak_reserved_bytes,
    write_run_info,
)
from bigtrain.train.model_config import resolve_model_config
from bigtrain.train.optimizer import optimizer_name
from bigtrain.train.preemption import PreemptionFlag
from bigtrain.train.schedule import extension_note, lr_multiplier, recompute_lr
from bigtrain.train.summary import print_stage_summary
from bigtrain.train.weights import initialize_weights, load_weights


def on_main_first(world: World, work: Any) -> Any:
    """Run `work` on rank 0, then on the others (cached results); rank 0's error stops every rank."""
    error = None
    result = None
    if world.is_main:
        try:
            result = work()
        except BigtrainError as e:
            error = str(e)
    error = broadcast_object(error)
    if error:
        raise BigtrainError(error)
    return result if world.is_main else work()


def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No decay on norms (1-D) and embeddings, the usual LLaMA practice."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_vector = len(getattr(p, "ds_shape", p.shape)) < 2
        (no_decay if is_vector or "embed_tokens" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def numel(p: torch.nn.Parameter) -> int:
    return int(getattr(p, "ds_numel", p.numel()))


def train(recipe: Recipe, world: World | None = None, preemption: PreemptionFlag | None = None) -> dict[str, Any]:
    """Run one stage in this process group (started here if needed); returns what run.json records.
    `preemption`: a flag installed earlier by the caller (default: installed now)."""
    started = time.perf_counter()
    preemption = preemption or PreemptionFlag()
    world = world or init_distributed()
    out = Path(recipe.output_dir)
    t = recipe.train
    torch.manual_seed(t.seed)
    if t.downstream:
        require_lm_eval()  # before anything is written
    ckpt = resume_checkpoint(out / "checkpoints", world)  # the newest that verifies
    saved = read_state(ckpt) if ckpt else None
    total_steps = recipe.total_steps(world.size)
    done = saved is not None and saved.finished and saved.step >= total_steps  # else: extend it
    if done and (not t.export or (out / "hf" / "config.json").exists()):
        if world.is_main:
            print(f"bigtrain: {out} already finished at step {saved.step}; nothing to do")
        return {"status": "finished", "step": saved.step, "already_finished": True}

    # --- data ----------------------------------------------------------------------------------
    cache = Path(recipe.data.cache_dir or out / "data")
    data: RunData = on_main_first(world, lambda: prepare_run_data(recipe.data, cache, saved.data if saved else None))

    # --- model + engine -------------------------------------------------------------------------
    model_cfg = resolve_model_config(recipe, data.vocab_size)
    check_vocab(data.train.file, model_cfg.vocab_size)
    ds_config, zero_choice = plan_engine(recipe, world.size, model_cfg, resumed_zero_stage(out, ckpt is not None))
    zero3 = ds_config.get("zero_optimization", {}).get("stage", 0) == 3
    with deepspeed.zero.Init(config_dict_or_path=ds_config, enabled=zero3):
        model = BigTrainForCausalLM(model_cfg)
    if recipe.init_from:
        load_weights(model, open_checkpoint(recipe.init_from), world.rank)
    else:
        initialize_weights(model, t.seed, world.rank)
    if t.activation_checkpointing:
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=t.checkpoint_every_n_layers
        )
    block_transform, step_flops = None, 0.0
    if recipe.step is not None:  # a STEP stage: inherited layers frozen + LoRA, folded back at export
        from bigtrain.train.step_lora import apply_step, merge_block, step_flops_change

        model = apply_step(model, recipe.step, recipe.init_from)
        block_transform = functools.partial(merge_block, scale=recipe.step.scale)
        step_flops = step_flops_change(model)
    fast_path = prepare_model(model, recipe, zero3)
    gbs, accum = recipe.global_batch(world.size)
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=weight_decay_groups(model, t.weight_decay),
        config=ds_config,
        lr_scheduler=lambda opt: LambdaLR(opt, lr_multiplier(t, total_steps)),
    )
    restore_fp32_rope(engine.module)

    # --- resume ----------------------------------------------------------------------------------
    resume_start = time.perf_counter()
    state = load_checkpoint(engine, ckpt, world) if ckpt else TrainState(world_size=world.size, seed=t.seed)
    resume_s = time.perf_counter() - resume_start  # incl. a conversion to another world size (reshard.py)
    state.world_size = world.size
    if state.finished and state.step < total_steps:  # a finished run given more steps: continue it
        state.finished = False
        recompute_lr(engine.lr_scheduler)
        if world.is_main:
            print(extension_note(t, state.step, total_steps))
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.yaml").write_text(dump_recipe(recipe))
    logger = MetricsLogger(out, enabled=world.is_main)
    logger.truncate_after(state.step)
    if world.is_main and not (out / "tokenizer").exists() and not recipe.data.token_dir:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(recipe.data.tokenizer).save_pretrained(out / "tokenizer")

    params_total = sum(numel(p) for p in engine.module.parameters())
    params_trainable = sum(numel(p) for p in engine.module.parameters() if p.requires_grad)
    detected = detect_peak()
    peak_tflops = t.peak_tflops or (detected.tflops if detected else None)
    flops_per_token = train_flops_per_token(model_cfg, recipe.data.seq_len) + step_flops
    flops_per_token_palm = palm_flops_per_token(model_cfg, recipe.data.seq_len) + step_flops
    run_info: dict[str, Any] = {
        "params_total": params_total,
        "params_trainable": params_trainable,
        "world_size": world.size,
        "global_batch_size": gbs,
        "gradient_accumulation_steps": accum,
        "total_steps": total_steps,
        "start_sequence": recipe.data.start_sequence or 0,  # where in the data order this run began
        "resumed_from": str(ckpt) if ckpt else None,
        "resume_s": resume_s if ckpt else None,
        "init_from": recipe.init_from,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "precision": "bf16" if ds_config.get("bf16", {}).get("enabled") else "fp32",
        "zero_stage": ds_config.get("zero_optimization", {}).get("stage", 0),
        "zero_stage_reason": zero_choice["zero_stage_reason"],
        "optimizer": optimizer_name(engine),
        "optimizer_reason": zero_choice["optimizer_reason"],
        **fast_path,
        "flops_per_token": flops_per_token,
        "flops_per_token_palm": flops_per_token_palm,
        "peak_tflops_per_device": peak_tflops,
        "peak_device": "train.peak_tflops" if t.peak_tflops else (detected.device if detected else None),
        "model_config": model_cfg.to_dict(),
    }
    if world.is_main:
        write_run_info(out / "run.json", run_info)

    # --- loop ------------------------------------------------------------------------------------
    sampler = make_sampler(data.train, gbs, recipe.data.seed, recipe.data.start_sequence or 0)
    for line in resume_notes(state.data, sampler, state.step * gbs) if world.is_main else []:
        print(f"bigtrain: {line}", flush=True)
    batches = DeviceBatches(data.train, sampler, world, t.micro_batch_size, accum, total_steps, engine.device)
    bar = tqdm(total=total_steps, initial=state.step, disable=not (world.is_main and t.progress), unit="step")
    timer = IntervalTimer()
    status = "finished"
    last_eval: dict[str, float] = {}
    while state.step < total_steps:
        loss_sum = torch.zeros((), device=engine.device)
        for line in sampler.new_epochs(state.step) if world.is_main else []:
            print(f"bigtrain: step {state.step + 1}: {line}", flush=True)
        for micro_step in range(accum):
            batch = batches.get(state.step, micro_step)
            loss = engine(input_ids=batch, labels=batch).loss
            engine.backward(loss)
            engine.step()
            loss_sum += loss.detach().float()
        state.step += 1
        state.tokens += gbs * recipe.data.seq_len
        state.data = sampler.position(state.step * gbs)
        timer.step()
        bar.update(1)

        record = None
        if state.step % t.log_every == 0 or state.step == total_steps:
            dist.all_reduce(loss_sum)
            loss_total = float(loss_sum)  # the host sync: the interval's device work is done
            elapsed, interval_steps = timer.lap()
            tokens_per_s = interval_steps * gbs * recipe.data.seq_len / elapsed
            record = {
                "step": state.step,
                "loss": loss_total / (accum * world.size),
                "lr": float(engine.get_lr()[0]),
                "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                "tokens": state.tokens,
                **tokens_by_source(sampler, state.step * gbs, recipe.data.seq_len),
                "tokens_per_s": tokens_per_s,
                "step_time_s": elapsed / interval_steps,
                "mfu": mfu(flops_per_token, tokens_per_s, peak_tflops, world.size),
                "mfu_palm": mfu(flops_per_token_palm, tokens_per_s, peak_tflops, world.size),
                "memory_bytes": peak_memory_bytes(),
                "memory_reserved_bytes": peak_reserved_bytes(),
            }
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
        if data.eval is not None and t.eval_every and state.step % t.eval_every == 0 and state.step < total_steps:
            last_eval = evaluate(engine, data.eval, world, t.micro_batch_size, t.eval_batches)
            record = {**(record or {"step": state.step}), **last_eval}
        if downstream_due(t.downstream, state.step, total_steps):
            scores = downstream_scores(
                engine.module, model_cfg, out, state.step, world, t.downstream, recipe.data.tokenizer, block_transform
            )
            record = {**(record or {"step": state.step}), **scores}
        if record:
            logger.log(record)
        # a collective with a host read: every sync_every steps, and on steps that synced anyway (log/eval)
        if (record or state.step % t.sync_every == 0) and preemption.any_rank_received(engine.device):
            save_checkpoint(engine, out, state, model_cfg, world, t, can_retry=False)
            status = "preempted"
            break
        if t.save_every and state.step % t.save_every == 0 and state.step < total_steps:
            save_checkpoint(engine, out, state, model_cfg, world, t)
    bar.close()

    # --- end of stage ------------------------------------------------------------------------------
    if status == "finished":
        if data.eval is not None:
            last_eval = evaluate(engine, data.eval, world, t.micro_batch_size, t.eval_batches)
            logger.log({"step": state.step, **last_eval})
        state.finished = True
        if t.save_final:
            save_checkpoint(engine, out, state, model_cfg, world, t)
        if t.export:
            tokenizer_dir = out / "tokenizer" if (out / "tokenizer").exists() else None
            export_hf(engine.module, model_cfg, out / "hf", tokenizer_dir, world, transform=block_transform)
    run_info.update(
        status=status,
        step=state.step,
        tokens=state.tokens,
        final_eval=last_eval,
        wall_time_s=time.perf_counter() - started,
        memory=state_bytes.per_rank(engine, optimizer)
        | {"peak_bytes": peak_memory_bytes(), "peak_reserved_bytes": peak_reserved_bytes()},
    )
    if world.is_main:
        write_run_info(out / "run.json", run_info)
        print_stage_summary(out, run_info)
    logger.close()
    barrier()
    return run_info
