"""`train.downstream: {every: N, tasks: [...]}`: lm-eval scores from the current weights during training.

Under ZeRO-3 no rank holds the whole model, so the weights go through the trainer's own export (a
collective gather, STEP's LoRA folded in) into `<output_dir>/eval/step_<N>/hf`; rank 0 scores that export
and removes it. The scores join the step's metrics record (`downstream_<task>`) and TensorBoard.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bigtrain.config import DownstreamConfig
from bigtrain.errors import BigtrainError
from bigtrain.train.distributed import World, barrier, broadcast_object
from bigtrain.train.export import export_hf


def due(cfg: DownstreamConfig | None, step: int, total_steps: int) -> bool:
    return cfg is not None and step % cfg.every == 0 and step < total_steps


def downstream_scores(
    module: Any,
    model_cfg: Any,
    out: Path,
    step: int,
    world: World,
    cfg: DownstreamConfig,
    tokenizer: str,
    transform: Any = None,
) -> dict[str, float]:
    """Collective (every rank calls it); rank 0 gets `{downstream_<task>: score}`, the others `{}`."""
    from bigtrain.evaluation.downstream import score

    export = out / "eval" / f"step_{step}" / "hf"
    tokenizer_dir = out / "tokenizer" if (out / "tokenizer").exists() else None
    export_hf(module, model_cfg, export, tokenizer_dir, world, transform=transform)
    scores: dict[str, float] = {}
    error = None
    if world.is_main:
        try:
            result = score(export, cfg.tasks, cfg.limit, cfg.batch_size, tokenizer=tokenizer_dir or tokenizer)
            scores = {f"downstream_{k}": v for k, v in result["scores"].items()}
        except Exception as e:  # every rank must leave together, whatever lm-eval raised
            error = f"train.downstream at step {step}: {type(e).__name__}: {e}"
        finally:
            shutil.rmtree(export.parent, ignore_errors=True)
    error = broadcast_object(error) if world.size > 1 else error
    if error:
        raise BigtrainError(str(error))
    barrier()
    return scores
