"""The recipe schema, as a package: one module per section (`model`, `data`, `train`, `step`, `grow`),
the recipe and its stages (`recipe`, `stages`), reading and writing (`loading`). The typed config *is*
the schema: a recipe YAML is validated against these classes, with trailing `key=value` overrides
(dotted paths) applied first. Every problem becomes one `RecipeError` line naming the file and the key."""

from bigtrain.config.base import Section, deep_merge, describe_validation_error
from bigtrain.config.data import DataConfig, SourceConfig
from bigtrain.config.grow import GROW_SIZES, HANDOVER_FIELDS, SIZE_FIELDS, GrowSpec
from bigtrain.config.loading import dump_recipe, load_recipe, parse_overrides, read_yaml, validate_recipe
from bigtrain.config.model import LayoutConfig, ModelSpec, check_model
from bigtrain.config.recipe import Recipe, StageSpec
from bigtrain.config.stages import check_stages, describe_stage_error, stage_section
from bigtrain.config.step import MLP_PROJECTIONS, PROJECTIONS, StepConfig
from bigtrain.config.train import DownstreamConfig, EvalAfterGrowth, TrainConfig
from bigtrain.errors import RecipeError

__all__ = [
    "DEPTH_OPS",
    "GROW_SIZES",
    "HANDOVER_FIELDS",
    "MLP_PROJECTIONS",
    "PROJECTIONS",
    "SIZE_FIELDS",
    "WIDTH_OPS",
    "DataConfig",
    "DownstreamConfig",
    "EvalAfterGrowth",
    "GrowSpec",
    "LayoutConfig",
    "ModelSpec",
    "Recipe",
    "RecipeError",
    "Section",
    "SourceConfig",
    "StageSpec",
    "StepConfig",
    "TrainConfig",
    "check_model",
    "check_stages",
    "deep_merge",
    "describe_stage_error",
    "describe_validation_error",
    "dump_recipe",
    "load_recipe",
    "parse_overrides",
    "read_yaml",
    "stage_section",
    "validate_recipe",
]


def __getattr__(name: str) -> object:
    """DEPTH_OPS / WIDTH_OPS live in the operator registry (bigtrain/growth/registry.py); read lazily, so
    importing the schema does not import the growth code."""
    if name in ("DEPTH_OPS", "WIDTH_OPS"):
        from bigtrain.growth import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'bigtrain.config' has no attribute {name!r}")
