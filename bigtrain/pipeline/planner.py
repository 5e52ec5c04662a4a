"""The memory planner (`bigtrain-plan`): every stage of a recipe under DeepSpeed ZeRO-3 (`memory.py`), vanilla
training of the final model, and STEP's best split of it into stages (`stage_search.py`)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from bigtrain.config import Recipe, StepConfig
from bigtrain.errors import BigtrainError
from bigtrain.pipeline.memory import GIB, StageMemory, ZeroSettings, stage_memory
from bigtrain.pipeline.stage_search import search_stage_sizes
from bigtrain.pipeline.stages import resolve_stages
from bigtrain.train.step_lora import read_inherited_layers


@dataclass
class Plan:
    stages: list[StageMemory]
    vanilla: StageMemory
    search: dict[str, Any]
    budget_bytes: int | None
    world_size: int

    def as_json(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "budget_bytes": self.budget_bytes,
            "stages": [s.as_dict() for s in self.stages],
            "vanilla_peak_bytes": self.vanilla.peak_bytes,
            "vanilla": self.vanilla.as_dict(),
            "search": self.search,
        }


def plan_recipe(
    recipe: Recipe,
    world_size: int = 1,
    budget_bytes: int | None = None,
    parts: int | None = None,
    precision: str | None = None,
    source: str = "recipe",
) -> Plan:
    """Every stage's memory, vanilla training of the final model, and the best STEP split into `parts`
    stages (default: as many as the recipe has)."""
    stages = resolve_stages(recipe, source=source)
    out: list[StageMemory] = []
    for st in stages:
        r = st.recipe
        cfg = r.model.build_config()
        inherited: set[int] = set()
        if r.step is not None:
            # a flat STEP recipe (no stages): its init_from's growth record says which layers are inherited
            inherited = set(st.inherited) if st.inherited else read_inherited_layers(r.init_from or "")
        zero = ZeroSettings.from_recipe(r, world_size, precision)
        out.append(stage_memory(cfg, zero, *_batch(r), inherited, r.step, name=st.name))
    final = stages[-1].recipe
    zero = ZeroSettings.from_recipe(final, world_size, precision)
    vanilla = stage_memory(final.model.build_config(), zero, *_batch(final), name="vanilla")
    step_cfg = next((st.recipe.step for st in stages if st.recipe.step is not None), None) or StepConfig()
    k = parts or len(stages)
    if not 1 <= k <= final.model.num_layers:
        raise BigtrainError(f"{k} STEP stages: must be between 1 and the final model's {final.model.num_layers} layers")

    def cost(done: int, new: int) -> float:
        spec = final.model.model_copy(update={"num_layers": done + new})
        return stage_memory(
            spec.build_config(), zero, *_batch(final), set(range(done)), step_cfg if done else None
        ).peak_bytes

    comp, costs = search_stage_sizes(final.model.num_layers, k, cost)
    layers = list(itertools.accumulate(comp))
    search = {
        "parts": k,
        "stages": [
            {"layers": n, "new_layers": c, "peak_bytes": int(p)} for n, c, p in zip(layers, comp, costs, strict=True)
        ],
        "max_peak_bytes": int(max(costs)),
        "reduction_vs_vanilla": 1 - max(costs) / vanilla.peak_bytes,
        "fits_budget": None if budget_bytes is None else max(costs) <= budget_bytes,
        "lora_rank": step_cfg.lora_rank,
    }
    return Plan(out, vanilla, search, budget_bytes, world_size)


def _batch(recipe: Recipe) -> tuple[int, int, bool]:
    return recipe.train.micro_batch_size, recipe.data.seq_len, recipe.train.activation_checkpointing


def format_plan(plan: Plan) -> str:
    """The human table: recipe stages, the searched split, vanilla training of the final model."""

    def gib(b: float) -> str:
        return f"{b / GIB:8.2f}"

    budget = plan.budget_bytes
    head = (
        f"{'stage':<10} {'layers':>6} {'new':>4} {'trainable':>13} {'LoRA':>11} {'weights':>8} {'grads':>8} "
        f"{'optim':>8} {'working':>8} {'activ.':>8} {'peak GiB':>8} {'vs van.':>8}"
    )
    lines = [f"per-rank memory, ZeRO-3 over {plan.world_size} rank(s), GiB", head, "-" * len(head)]
    rows = [*plan.stages, plan.vanilla]
    for s in rows:
        over = "  over budget" if budget is not None and s.peak_bytes > budget else ""
        versus = s.peak_bytes / plan.vanilla.peak_bytes - 1
        lines.append(
            f"{s.name[:10]:<10} {s.layers:>6} {s.new_layers:>4} "
            f"{s.params_trainable:>13,} {s.lora_params:>11,} "
            f"{gib(s.param_bytes)} {gib(s.grad_bytes)} {gib(s.optimizer_state_bytes)} {gib(s.working_bytes)} "
            f"{gib(s.activation_bytes)} {gib(s.peak_bytes)} {versus:>+8.1%}{over}"
        )
    largest = max(s.peak_bytes for s in plan.stages)
    lines.append(
        f"recipe: largest stage peak {largest / GIB:.2f} GiB, {1 - largest / plan.vanilla.peak_bytes:.1%} "
        f"below vanilla ({plan.vanilla.peak_bytes / GIB:.2f} GiB)"
    )
    sr = plan.search
    split = " + ".join(str(s["new_layers"]) for s in sr["stages"])
    fits = "" if sr["fits_budget"] is None else ("; fits the budget" if sr["fits_budget"] else "; OVER the budget")
    lines.append(
        f"best STEP split into {sr['parts']} stage(s): {split} layers, peaks "
        + ", ".join(f"{s['peak_bytes'] / GIB:.2f}" for s in sr["stages"])
        + f" GiB; largest {sr['max_peak_bytes'] / GIB:.2f} GiB, "
        + f"{sr['reduction_vs_vanilla']:.1%} below vanilla{fits}"
    )
    if budget is not None:
        lines.append(f"budget {budget / GIB:.2f} GiB per rank")
    return "\n".join(lines)
