"""A staged recipe checked at load: every stage's model derived, growth and sections validated."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from bigtrain.config.base import deep_merge, describe_validation_error
from bigtrain.config.data import DataConfig
from bigtrain.config.grow import GROW_SIZES, SIZE_FIELDS
from bigtrain.config.model import ModelSpec, check_model
from bigtrain.config.recipe import Recipe, StageSpec
from bigtrain.config.step import MLP_PROJECTIONS
from bigtrain.config.train import TrainConfig
from bigtrain.errors import RecipeError


def describe_stage_error(err: ValidationError, data: dict[str, Any], source: str) -> str | None:
    """A schema error inside `stages:` named by the stage's name rather than its list index."""
    loc = err.errors()[0]["loc"]
    if len(loc) < 3 or loc[0] != "stages" or not isinstance(loc[1], int):
        return None
    entry = (data.get("stages") or [None] * (loc[1] + 1))[loc[1]]
    name = entry.get("name") if isinstance(entry, dict) else None
    where = f"{source}: stage {name!r}" if name else f"{source}: stage #{loc[1] + 1}"
    drop = 2
    if len(loc) > 3 and loc[2] in ("model", "train", "data"):  # a key of a stage's section: named like the section's
        where, drop = f"{where}: {loc[2]}", 3
    return describe_validation_error(ValidationError.from_exception_data(err.title, [_relocated(err, drop)]), where)


def _relocated(err: ValidationError, drop: int) -> Any:
    first = err.errors()[0]
    return {"type": first["type"], "loc": first["loc"][drop:], "input": first.get("input"), "ctx": first.get("ctx", {})}


def check_stages(recipe: Recipe, source: str) -> list[ModelSpec]:
    """Validate a staged recipe now (not inside a rank hours later); returns each stage's model."""
    if recipe.stages is None:
        if recipe.step is not None and recipe.init_from is None:
            raise RecipeError(f"{source}: step: needs init_from (a grown checkpoint with growth.json)")
        return [recipe.model]
    if recipe.step is not None:
        raise RecipeError(f"{source}: step: belongs inside a stage when stages: is given")
    if not recipe.stages:
        raise RecipeError(f"{source}: stages: is empty")
    seen: set[str] = set()
    models: list[ModelSpec] = []
    for i, stage in enumerate(recipe.stages):
        where = f"{source}: stage {stage.name!r}"
        if stage.name in seen:
            raise RecipeError(f"{where}: the name is used by an earlier stage")
        seen.add(stage.name)
        models.append(_stage_model(recipe, i, models[-1] if models else None, where))
        prev_name = recipe.stages[i - 1].name if i else None
        _check_stage_growth(stage, models[-1], models[-2] if i else None, prev_name, recipe, where)
        _check_stage_sections(recipe, stage, where)
    return models


def _stage_model(recipe: Recipe, i: int, prev: ModelSpec | None, where: str) -> ModelSpec:
    stage = recipe.stages[i]  # type: ignore[index]
    if prev is None:
        base = recipe.model.model_dump()
        data = deep_merge(base, stage.model.model_dump())
        if stage.grow is not None:
            data = deep_merge(data, stage.grow.sizes())
    else:
        given = stage.model.model_dump()
        sized = {k: v for k, v in given.items() if k in SIZE_FIELDS}
        grown = deep_merge(prev.model_dump(), stage.grow.sizes() if stage.grow else {})
        if stage.grow is not None and stage.grow.op == "upcycle":  # each expert is d_f / G wide
            grown["intermediate_size"] = prev.intermediate_size // (stage.grow.granularity or 1)
        for key, value in sized.items():
            if grown.get(key) != value:
                how = f"grow: gives {grown.get(key)}" if stage.grow else "there is no grow: to get there"
                raise RecipeError(
                    f"{where}: model.{key}={value} has no model source (previous stage has "
                    f"{prev.model_dump().get(key)}, {how})"
                )
        data = deep_merge(grown, given)
    try:
        spec = ModelSpec.model_validate(data)
    except ValidationError as e:
        raise RecipeError(describe_validation_error(e, f"{where}: model")) from None
    check_model(spec, f"{where}")
    return spec


def _check_stage_growth(
    stage: StageSpec,
    spec: ModelSpec,
    prev: ModelSpec | None,
    prev_name: str | None,
    recipe: Recipe,
    where: str,
) -> None:
    grow = stage.grow
    if prev is None:
        if grow is not None and not (stage.init_from or recipe.init_from):
            raise RecipeError(f"{where}: grow: has no model source to grow from (the first stage needs init_from)")
        if stage.step is not None and not (stage.init_from or recipe.init_from):
            raise RecipeError(f"{where}: step: needs a model source (init_from with growth.json)")
    elif stage.init_from is not None:
        raise RecipeError(f"{where}: init_from: only the first stage may set it (later stages start from the last)")
    if grow is not None and prev is not None and grow.op == "upcycle":
        if prev.moe is not None:
            raise RecipeError(f"{where}: grow: upcycle needs a dense model, stage {prev_name!r}'s is already MoE")
        g = grow.granularity or 1
        if prev.intermediate_size % g:
            raise RecipeError(
                f"{where}: grow: granularity {g} does not divide intermediate_size {prev.intermediate_size}"
            )
    elif grow is not None and prev is not None:
        before, after = prev.model_dump(), spec.model_dump()
        for field in GROW_SIZES.values():
            b, a = before[field], after[field]
            if field == "num_kv_heads":  # None means "as many as query heads"
                b, a = b or before["num_heads"], a or after["num_heads"]
            if a < b:
                raise RecipeError(f"{where}: grow: would shrink {field} from {b} (stage {prev_name!r}) to {a}")
        if after == before:
            raise RecipeError(f"{where}: grow: op {grow.op!r} names no size larger than stage {prev_name!r}'s")
        from bigtrain.growth.registry import DEPTH_OPS, WIDTH_OPS  # the one list of operators

        ops = grow.op.split("+")
        if spec.num_layers > prev.num_layers and not any(op in DEPTH_OPS for op in ops):
            raise RecipeError(f"{where}: grow: layers={spec.num_layers} needs a depth op ({', '.join(DEPTH_OPS)})")
        widened = any(after[f] != before[f] for f in GROW_SIZES.values() if f != "num_layers")
        if widened and not any(op in WIDTH_OPS for op in ops):
            raise RecipeError(f"{where}: grow: a wider model needs a width op ({', '.join(WIDTH_OPS)})")
    upcycled = grow is not None and grow.op == "upcycle"
    if stage.step is not None and upcycled and stage.step.freeze != "attention":
        raise RecipeError(f"{where}: step: after upcycle, give step.freeze: attention (the experts must train)")
    if stage.step is not None and prev is not None and not upcycled:
        if grow is None or spec.num_layers <= prev.num_layers:
            raise RecipeError(f"{where}: step: needs grow: to add layers (STEP trains the new layers)")
        cfg = spec.build_config()
        inherited_ffn = any(cfg.layer_intermediate_sizes[: prev.num_layers])
        if not inherited_ffn and stage.step.lora:
            for t in stage.step.targets:
                if t in MLP_PROJECTIONS:
                    raise RecipeError(f"{where}: step.targets: {t!r} matches nothing (no inherited layer has an FFN)")


def stage_section(recipe: Recipe, stage: StageSpec, name: str, forced: dict[str, Any] | None = None) -> dict[str, Any]:
    """A stage's `train:` or `data:`: the recipe's section, the stage's partial one over it, then `forced`
    (command-line overrides) over both. The one place a stage's settings are merged (here for validation at
    load, in `bigtrain.pipeline.stages` for the flat recipe it runs)."""
    base = getattr(recipe, name).model_dump(mode="json")
    return deep_merge(deep_merge(base, getattr(stage, name).model_dump(mode="json")), forced or {})


def _check_stage_sections(recipe: Recipe, stage: StageSpec, where: str) -> None:
    for name, cls in (("train", TrainConfig), ("data", DataConfig)):
        merged = stage_section(recipe, stage, name)
        try:
            cls.model_validate(merged)
        except ValidationError as e:
            raise RecipeError(describe_validation_error(e, f"{where}: {name}")) from None
