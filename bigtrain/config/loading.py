"""Reading a recipe: YAML, `key=value` overrides (dotted paths), validation; and writing one back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bigtrain.config.base import deep_merge, describe_validation_error
from bigtrain.config.model import check_model
from bigtrain.config.recipe import Recipe
from bigtrain.config.stages import check_stages, describe_stage_error
from bigtrain.errors import RecipeError


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`a.b=1 c=[x,y]` -> nested dict; values are parsed as YAML scalars/lists."""
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"override {item!r}: expected key=value")
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"override {item!r}: {part} is set both as a value and a section")
        try:
            node[leaf] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as e:
            raise RecipeError(f"override {item!r}: not a YAML value ({e.problem})") from None
    return tree


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    return data


def validate_recipe(data: dict[str, Any], source: str) -> Recipe:
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(describe_stage_error(e, data, source) or describe_validation_error(e, source)) from None
    check_model(recipe.model, source)
    check_stages(recipe, source)
    return recipe


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe YAML (or the defaults when path is None), apply overrides, validate."""
    data = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "recipe"
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
    return validate_recipe(data, source)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
