"""`train:`: length, batch, optimizer and schedule, precision and engine, logging, evals and checkpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from bigtrain.config.base import Section


class DownstreamConfig(Section):
    """lm-eval tasks scored on rank 0 from the current weights every `every` steps (bigtrain/evaluation/)."""

    every: int = Field(ge=1)
    tasks: list[str] = Field(min_length=1)
    limit: int | None = Field(default=None, ge=1)  # items per task (None: all)
    batch_size: int = Field(default=8, ge=1)


class EvalAfterGrowth(Section):
    """Held-out evals every `every` steps during the first `steps` steps of a stage that starts from grown
    weights (next to the eval before its first update, which every such stage runs)."""

    every: int = Field(default=1, ge=1)
    steps: int = Field(default=10, ge=1)


class TrainConfig(Section):
    max_steps: int | None = None
    tokens: float | None = None  # alternative to max_steps: train on this many tokens
    micro_batch_size: int = 4
    global_batch_size: int | None = None  # default: micro_batch_size * world size (no accumulation)
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = 10
    decay_fraction: float = 0.2  # wsd: share of steps in the final decay
    decay_steps: int | None = Field(default=None, ge=1)  # wsd: the final decay's length in steps (overrides the share)
    # Where this run sits in its LR schedule: step s of the run takes the schedule's step schedule_start + s of
    # schedule_steps (default: the run's own length). A staged recipe with schedule_scope: pipeline sets both
    # per stage (one warm-up and decay over the whole pipeline); a stage-scope small model given a longer
    # schedule_steps stops before its decay, as the G_stack authors' small models do.
    schedule_scope: Literal["stage", "pipeline"] = "stage"
    schedule_steps: int | None = Field(default=None, ge=1)
    schedule_start: int = Field(default=0, ge=0)
    rewarm_steps: int = Field(
        default=0, ge=0
    )  # after a growth: a linear re-warm to the schedule's LR (grow.rewarm_steps)
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 1234
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    ds_config: str = "zero3"  # a name in ds_configs/ or a path to a DeepSpeed JSON
    # auto: on CUDA, the fastest stage whose model states fit the device (0 > 1 > 2 > 3); on CPU, or with an
    # offload/custom template, the template's stage. A number overrides the template's stage (docs/performance.md).
    zero_stage: Literal["auto", 0, 1, 2, 3] = "auto"
    kernels: Literal["auto", "liger", "torch"] = "auto"  # auto: liger on CUDA when installed, else torch
    loss: Literal["auto", "fused", "chunked", "plain"] = "auto"  # auto: fused (liger) on CUDA, else chunked
    compile: bool = False  # torch.compile each decoder layer's block
    activation_checkpointing: bool = False
    checkpoint_every_n_layers: int = 1  # with activation_checkpointing: every n-th layer is recomputed
    log_every: int = 10
    sync_every: int = 10  # host syncs (preemption check) every n steps, and on log steps
    eval_every: int = 0  # 0: only at the end
    eval_batches: int = 8
    eval_after_growth: EvalAfterGrowth | None = None  # dense evals in a grown stage's first steps
    save_every: int = 0  # 0: only at the end
    keep_last: int = 2
    save_failure: Literal["stop", "retry"] = "stop"  # a failed save: stop the run, or train on and retry next interval
    checkpoint_checksums: bool = False  # SHA-256 of every file in the manifest (verified on resume; costs a read)
    # torch.distributed's timeout for every collective (deepspeed.init_distributed). Torch's 10 minutes is
    # shorter than one-rank work others wait on at scale (docs/scale.md: a world-size conversion at 8B).
    dist_timeout_minutes: float = Field(default=30.0, gt=0)
    export: bool = True
    # false: no checkpoint at the end (benchmarks, profiles: a 1B's is 17 GB); the export is still written
    # if `export`, but a rerun cannot see the run finished and trains again from the last periodic checkpoint
    save_final: bool = True
    peak_tflops: float | None = None  # per device, for MFU; None: by detected GPU
    progress: bool = True
    downstream: DownstreamConfig | None = None  # optional lm-eval scores during training (the [eval] extra)

    @model_validator(mode="after")
    def _positive(self) -> TrainConfig:
        for name in ("micro_batch_size", "log_every", "keep_last", "checkpoint_every_n_layers", "sync_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        return self
