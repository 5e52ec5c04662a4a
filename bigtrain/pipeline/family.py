"""Model families (Yano et al., COLM 2025): each stage's export is a family member. The LR-by-size rule,
the FLOPs each member cost, and the family table against training every member independently.

FLOPs accounting (PAPERS.md section 2): a stage costs `flops_per_token x tokens`. A member trained
progressively has cost the sum over its lineage (itself and every earlier stage). Trained independently,
the same member would be trained from scratch on as many tokens as its lineage saw (`independent_tokens =
"lineage"`, the default), only on its own stage's tokens (`"stage"`), or on tokens proportional to its
size (`"by-size"`, the reconstruction in PAPERS.md section 2). All three are choices, not the paper's.
A STEP stage's FLOPs per token: frozen matmul weights cost forward + input gradient (4 per weight, no weight
gradient), trainable ones 6, LoRA adds 6 per adapter weight (bigtrain.train.step_lora).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bigtrain.config import StepConfig
from bigtrain.model.configuration import BigTrainConfig
from bigtrain.model.counting import total_params, train_flops_per_token
from bigtrain.pipeline.memory import model_tensors


def step_flops_per_token(cfg: BigTrainConfig, seq_len: int, inherited: set[int], step: StepConfig | None) -> float:
    """Training FLOPs per token of a stage; for STEP, frozen weights skip their weight gradients."""
    full = train_flops_per_token(cfg, seq_len)
    if step is None or not inherited:
        return full
    tensors = model_tensors(cfg, inherited, step)
    # the input embedding is a lookup, not a matmul: freezing it saves no FLOPs
    matmul = [t for t in tensors if t.name.endswith("proj.weight") or t.name == "lm_head.weight"]
    frozen_matmul = sum(t.numel for t in matmul if not t.trainable)
    lora = sum(t.numel for t in tensors if ".lora_" in t.name)
    return full - 2.0 * frozen_matmul + 6.0 * lora


@dataclass
class Member:
    name: str
    params: int
    tokens: float
    flops: float  # this stage alone
    progressive_flops: float  # this member's lineage
    independent_flops: float  # this member trained from scratch
    eval_loss: float | None
    eval_ppl: float | None
    status: str


def read_run(output_dir: str | Path) -> dict[str, Any]:
    path = Path(output_dir) / "run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


IndependentTokens = Literal["lineage", "stage", "by-size"]


def family_flops(
    flops_per_token: list[float],
    stage_flops: list[float],
    stage_tokens: list[float],
    params: list[int],
    independent_tokens: IndependentTokens = "lineage",
) -> tuple[list[float], list[float]]:
    """(progressive FLOPs of each member's lineage, FLOPs of each member trained independently).

    `flops_per_token` is each member's from-scratch (vanilla) cost per token, `stage_flops` what its stage
    really cost. Independent tokens: "lineage" - as many as the member's lineage saw; "stage" - its own
    stage's; "by-size" - proportional to parameters, the largest member getting its lineage's tokens
    (PAPERS.md section 2: 1 + 4 + 16 + 64 = 85 units for 1B..8B against 64 for the largest alone).
    """
    progressive = list(itertools.accumulate(stage_flops))
    lineage = list(itertools.accumulate(stage_tokens))
    if independent_tokens == "lineage":
        tokens = lineage
    elif independent_tokens == "stage":
        tokens = list(stage_tokens)
    else:
        tokens = [lineage[-1] * p / params[-1] for p in params]
    return progressive, [f * d for f, d in zip(flops_per_token, tokens, strict=True)]


def family_table(stages: list[Any], independent_tokens: IndependentTokens = "lineage") -> list[Member]:
    """One row per stage (a `bigtrain.pipeline.stages.Stage`), from the stages' `run.json`; stages not run
    yet are counted with their planned tokens and no loss."""
    rows = []
    for st in stages:
        r = st.recipe
        run = read_run(r.output_dir)
        cfg_dict = run.get("model_config")
        cfg = BigTrainConfig.from_dict(cfg_dict) if cfg_dict else r.model.build_config()
        inherited = set(st.inherited) if r.step is not None else set()
        tokens = float(run.get("tokens") or planned_tokens(r))
        per_token = step_flops_per_token(cfg, r.data.seq_len, inherited, r.step)
        rows.append((st.name, cfg, r.data.seq_len, tokens, per_token * tokens, run))
    progressive, independent = family_flops(
        [train_flops_per_token(cfg, seq) for _, cfg, seq, *_ in rows],
        [flops for *_, flops, _ in rows],
        [tokens for _, _, _, tokens, _, _ in rows],
        [total_params(cfg) for _, cfg, *_ in rows],
        independent_tokens,
    )
    members = []
    for (name, cfg, _, tokens, flops, run), prog, indep in zip(rows, progressive, independent, strict=True):
        final = run.get("final_eval") or {}
        members.append(
            Member(
                name=name,
                params=total_params(cfg),  # the member as exported (LoRA merged)
                tokens=tokens,
                flops=flops,
                progressive_flops=prog,
                independent_flops=indep,
                eval_loss=final.get("eval_loss"),
                eval_ppl=final.get("eval_ppl"),
                status=str(run.get("status", "not run")),
            )
        )
    return members


def planned_tokens(recipe: Any) -> float:
    """Tokens a stage will see (one rank's batch when the global batch is left to the world size)."""
    if recipe.train.tokens is not None:
        return float(recipe.train.tokens)
    gbs = recipe.train.global_batch_size or recipe.train.micro_batch_size
    return float((recipe.train.max_steps or 0) * gbs * recipe.data.seq_len)


def format_family_table(members: list[Member]) -> str:
    head = (
        f"{'member':<10} {'params':>14} {'tokens':>12} {'FLOPs (stage)':>14} {'FLOPs (so far)':>15} "
        f"{'FLOPs indep.':>13} {'eval loss':>9} {'ppl':>9}"
    )
    lines = [head, "-" * len(head)]
    for m in members:
        loss = f"{m.eval_loss:9.4f}" if m.eval_loss is not None else f"{'-':>9}"
        ppl = f"{m.eval_ppl:9.2f}" if m.eval_ppl is not None else f"{'-':>9}"
        lines.append(
            f"{m.name[:10]:<10} {m.params:>14,} {m.tokens:>12.4g} {m.flops:>14.4g} {m.progressive_flops:>15.4g} "
            f"{m.independent_flops:>13.4g} {loss} {ppl}"
        )
    progressive = members[-1].progressive_flops if members else 0.0
    independent = sum(m.independent_flops for m in members)
    saved = 1 - progressive / independent if independent else 0.0
    lines.append(
        f"family: {progressive:.4g} FLOPs progressively vs {independent:.4g} FLOPs training every member "
        f"independently ({saved:.1%} saved)"
    )
    return "\n".join(lines)
