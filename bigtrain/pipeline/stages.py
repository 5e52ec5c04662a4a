"""Stage resolution: a staged recipe becomes an ordered list of flat, runnable stages.

Each stage is an ordinary single-stage `Recipe` (what `bigtrain/train.py` runs) plus where its weights
come from: the previous stage's last training checkpoint (or its export: `grow.source`), grown by `grow:`
into `<output_dir>/<stage>/init` when the stage has one. `train.schedule_scope: pipeline` cuts one LR
schedule into the stages' slices here (`pipeline_schedule`). Validation happened at load (`bigtrain.config.check_stages`); this only assembles.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bigtrain.config import (
    GrowSpec,
    ModelSpec,
    Recipe,
    RecipeError,
    StageSpec,
    TrainConfig,
    check_stages,
    deep_merge,
    parse_overrides,
    stage_section,
    validate_recipe,
)
from bigtrain.errors import BigtrainError
from bigtrain.growth.grow import grow_config
from bigtrain.pipeline.lr_scaling import lr_by_size


@dataclass(frozen=True)
class Stage:
    index: int
    name: str
    recipe: Recipe  # flat: output_dir is the stage's directory, init_from where its weights come from
    grow: GrowSpec | None
    grow_from: str | None  # what `grow` reads (the previous stage's run dir or export, or the recipe's init_from)
    # indices of the layers this stage inherits from the previous one (a first stage: from its grow source;
    # none without growth), where the stage's growth plan puts them: LLaMA Pro's blocks sit between them
    inherited: tuple[int, ...]
    root: Path | None = None  # a staged recipe's output_dir, above the stage directories (None: a flat recipe)

    @property
    def output_dir(self) -> Path:
        return Path(self.recipe.output_dir)

    @property
    def export_dir(self) -> Path:
        return self.output_dir / "hf"

    @property
    def finished(self) -> bool:
        return stage_finished(self.output_dir, self.recipe.train)


def stage_finished(out: Path, train: TrainConfig) -> bool:
    """A stage is finished when it is exported and its run.json says it trained as long as the recipe now
    asks. A recipe given more steps (or tokens) since is not finished: the trainer extends the run from its
    last checkpoint, as `bigtrain-train` does on the same recipe. Tokens rather than steps for `train.tokens`,
    so the answer does not depend on the world size the stage will run on."""
    if not (out / "hf" / "config.json").is_file():
        return False
    try:
        info = json.loads((out / "run.json").read_text())
        if info.get("status") != "finished":
            return False
        if train.max_steps is not None:
            return int(info["step"]) >= train.max_steps
        return train.tokens is not None and float(info["tokens"]) >= train.tokens
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        # no readable record next to the export: let the trainer look (it does nothing if nothing is left)
        return False


def stage_dir(root: str | Path, name: str) -> Path:
    return Path(root) / name


def resolve_stages(recipe: Recipe, overrides: list[str] | None = None, source: str = "recipe") -> list[Stage]:
    """The stages of `recipe` in order. A flat recipe is one stage named after nothing: `main`.

    `overrides` (the `key=value`s of the command line) are applied to every stage last, so they win over
    stage-specific values; `output_dir` is the root under which each stage gets its own directory, and
    `init_from` what the first stage starts (or grows) from, as the recipe's own `init_from:` is.
    """
    if not recipe.stages:
        return [Stage(0, "main", recipe, None, None, ())]
    models = check_stages(recipe, source)
    forced = parse_overrides(overrides or [])
    per_stage = {k: v for k, v in forced.items() if k not in ("output_dir", "init_from", "stages")}
    root = recipe.output_dir
    first_lr: float | None = None
    stages: list[Stage] = []
    flats: list[tuple[str, dict[str, Any]]] = []
    grow_sources: list[str | None] = []
    for i, (spec, model) in enumerate(zip(recipe.stages, models, strict=True)):
        where = f"{source}: stage {spec.name!r}"
        # command-line train.* overrides win over the stage's own values; a command-line train.lr is the
        # anchor that `lr: by-size` scales and replaces a stage's fixed `lr:`
        forced_train = per_stage.get("train", {})
        train = stage_section(recipe, spec, "train", forced_train)
        if spec.lr == "by-size":
            if first_lr is None:
                raise RecipeError(f"{where}: lr: by-size scales the first stage's lr, the first stage cannot use it")
            train["lr"] = lr_by_size(first_lr, models[0], model, spec.lr_size_exponent)
        elif spec.lr is not None and "lr" not in forced_train:
            train["lr"] = spec.lr
        if first_lr is None:
            first_lr = float(train["lr"])
        out = stage_dir(root, spec.name)
        prev_export = str(stage_dir(root, recipe.stages[i - 1].name) / "hf") if i else None
        origin = prev_export if i else (forced.get("init_from") or spec.init_from or recipe.init_from)
        init_from = str(out / "init") if spec.grow is not None else origin
        grow_sources.append(grow_source(recipe, i, origin))
        flat: dict[str, Any] = {
            "output_dir": str(out),
            "init_from": init_from,
            "model": model.model_dump(mode="json"),
            "data": stage_section(recipe, spec, "data"),
            "train": train,
            "step": spec.step.model_dump(mode="json") if spec.step else None,
        }
        flat = deep_merge(flat, {k: v for k, v in per_stage.items() if k != "train"})
        # one token cache for every stage (keyed by content): no stage tokenises what another already did
        flat["data"]["cache_dir"] = flat["data"].get("cache_dir") or str(Path(root) / "data")
        if i + 1 < len(recipe.stages) and flat["train"].get("export") is False:
            nxt = recipe.stages[i + 1].name
            raise RecipeError(f"{where}: train.export is false but stage {nxt!r} starts from its export")
        if spec.grow is not None and spec.grow.rewarm_steps is not None:
            flat["train"]["rewarm_steps"] = spec.grow.rewarm_steps
        flats.append((where, flat))
    if recipe.train.schedule_scope == "pipeline":
        pipeline_schedule([flat for _, flat in flats], [where for where, _ in flats])
    for i, (spec, (where, flat)) in enumerate(zip(recipe.stages, flats, strict=True)):
        stage_recipe = validate_recipe(flat, where)
        grow = seeded_by_run(spec.grow, stage_recipe.train.seed)
        stages.append(
            Stage(
                index=i,
                name=spec.name,
                recipe=stage_recipe,
                grow=grow,
                grow_from=grow_sources[i],
                inherited=inherited_layers(models[i - 1] if i else source_model(recipe, spec), grow),
                root=Path(root),
            )
        )
    return stages


def seeded_by_run(grow: GrowSpec | None, seed: int) -> GrowSpec | None:
    """A growth without its own `seed:` draws (replica maps, splits, noise, new layers) from the stage's
    `train.seed`: one seed names a replicate, so the seeds of a sweep vary the growth too."""
    if grow is None or grow.seed is not None:
        return grow
    return grow.model_copy(update={"seed": seed})


def source_model(recipe: Recipe, spec: StageSpec) -> ModelSpec | None:
    """What a first stage grows from: nothing, or, when it grows its init_from, the recipe's `model:` (which
    describes the source then)."""
    if spec.grow is None:
        return None
    return ModelSpec.model_validate(deep_merge(recipe.model.model_dump(), spec.model.model_dump(exclude_none=True)))


def inherited_layers(source: ModelSpec | None, grow: GrowSpec | None) -> tuple[int, ...]:
    """The target layers that `grow` fills with `source`'s trained layers, from the growth plan alone (no
    tensors are read or made): for stacking the first L, for block expansion the ones between the new
    blocks. A plan that cannot be made here (the grow step itself will say why) counts the first L."""
    if source is None:
        return ()
    if grow is None:
        return tuple(range(source.num_layers))
    try:
        record = grow_config(source.build_config(), grow.op, **grow.grow_args())
    except (BigtrainError, ValueError):
        return tuple(range(source.num_layers))
    return tuple(record.inherited_layers())


def grow_source(recipe: Recipe, i: int, origin: str | None) -> str | None:
    """What stage i's `grow:` reads: the previous stage's run directory (its last training checkpoint: fp32
    masters and Adam moments) or its export. A STEP stage hands over its export, where LoRA is folded in."""
    spec = recipe.stages[i]  # type: ignore[index]
    if spec.grow is None:
        return None
    if i == 0 or spec.grow.source == "export":
        return origin
    prev = recipe.stages[i - 1]  # type: ignore[index]
    where = f"stage {spec.name!r}: grow.source: checkpoint"
    if prev.step is not None:
        if spec.grow.optimizer == "carry":
            raise RecipeError(
                f"{where}: stage {prev.name!r} is a STEP stage; its LoRA state cannot be carried "
                "(grow.optimizer: fresh, or grow.source: export)"
            )
        return origin
    if stage_section(recipe, prev, "train").get("save_final") is False:
        raise RecipeError(f"{where}: stage {prev.name!r} has train.save_final: false (no last checkpoint)")
    return str(stage_dir(recipe.output_dir, prev.name))


def fixed_steps(train: dict[str, Any], seq_len: int, where: str) -> int:
    """A stage's length in steps, whatever the number of ranks (pipeline scope needs it before any launch)."""
    if train.get("max_steps") is not None:
        return int(train["max_steps"])
    if train.get("tokens") is not None and train.get("global_batch_size"):
        return max(1, math.ceil(float(train["tokens"]) / (int(train["global_batch_size"]) * seq_len)))
    raise RecipeError(
        f"{where}: train.schedule_scope: pipeline needs every stage's length fixed before launch: give "
        "train.max_steps, or train.tokens with train.global_batch_size"
    )


def pipeline_schedule(flats: list[dict[str, Any]], wheres: list[str]) -> None:
    """One warm-up and one decay over the whole pipeline: stage i runs steps [start_i, start_i + n_i) of a
    schedule sum(n) long; the first stage's warm-up; a WSD decay inside the last stage only."""
    steps = [fixed_steps(f["train"], int(f["data"]["seq_len"]), w) for f, w in zip(flats, wheres, strict=True)]
    total, first, last = sum(steps), flats[0]["train"], flats[-1]["train"]
    decay = last.get("decay_steps") or max(1, round(float(last.get("decay_fraction", 0.2)) * total))
    start = 0
    for flat, n in zip(flats, steps, strict=True):
        flat["train"].update(
            schedule_start=start,
            schedule_steps=total,
            warmup_steps=first.get("warmup_steps", 10),
            decay_steps=min(decay, steps[-1]),
        )
        start += n
