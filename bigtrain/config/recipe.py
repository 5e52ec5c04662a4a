"""A recipe: the sections, and for a staged recipe its stages."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from bigtrain.config.base import Section, partial
from bigtrain.config.data import DataConfig
from bigtrain.config.grow import GrowSpec
from bigtrain.config.model import ModelSpec
from bigtrain.config.step import StepConfig
from bigtrain.config.train import TrainConfig
from bigtrain.errors import RecipeError

PartialModelSpec = partial(ModelSpec)
PartialTrainConfig = partial(TrainConfig)
PartialDataConfig = partial(DataConfig)


class StageSpec(Section):
    """One stage of a staged recipe: a flat training run that starts from the previous stage grown."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # First stage: partial overrides of the recipe's `model:`. Later stages: sizes come from `grow:`.
    model: PartialModelSpec = Field(default_factory=lambda: PartialModelSpec())
    grow: GrowSpec | None = None
    step: StepConfig | None = None
    train: PartialTrainConfig = Field(default_factory=lambda: PartialTrainConfig())  # over the recipe's `train:`
    data: PartialDataConfig = Field(default_factory=lambda: PartialDataConfig())  # over the recipe's `data:`
    # Max LR: a number, "by-size" (first stage's LR x (P_first / P_this)^lr_size_exponent, P = non-embedding
    # parameters), or None (the stage's train.lr).
    lr: float | Literal["by-size"] | None = None
    lr_size_exponent: float = 0.5
    init_from: str | None = None  # first stage only: an HF dir to start from


class Recipe(Section):
    output_dir: str = "runs/demo"
    init_from: str | None = None
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    step: StepConfig | None = None  # a flat stage with STEP on (init_from holds growth.json)
    stages: list[StageSpec] | None = None  # a staged recipe (see bigtrain/pipeline/stages.py)

    def global_batch(self, world_size: int) -> tuple[int, int]:
        """(global batch size in sequences, gradient accumulation steps) for this world size."""
        micro = self.train.micro_batch_size
        gbs = self.train.global_batch_size or micro * world_size
        if gbs % (micro * world_size):
            raise RecipeError(
                f"train.global_batch_size={gbs} is not divisible by micro_batch_size={micro} x world size {world_size}"
            )
        return gbs, gbs // (micro * world_size)

    def total_steps(self, world_size: int) -> int:
        if self.train.max_steps is not None:
            return self.train.max_steps
        if self.train.tokens is not None:
            gbs, _ = self.global_batch(world_size)
            return max(1, math.ceil(self.train.tokens / (gbs * self.data.seq_len)))
        raise RecipeError("train: give max_steps or tokens")
