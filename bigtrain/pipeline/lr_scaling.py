"""The max LR of a larger stage or family member, from the first one's (`lr: by-size`)."""

from __future__ import annotations

from bigtrain.config import ModelSpec
from bigtrain.model.counting import non_embedding_params


def lr_by_size(first_lr: float, first: ModelSpec, this: ModelSpec, exponent: float = 0.5) -> float:
    """Max LR by size (the default rule, an option per stage: `lr: by-size`, `lr_size_exponent`):
    lr_1 * (P_1 / P)^exponent with P the non-embedding parameters; 0.5 makes lr proportional to
    1/sqrt(params), anchored at the first member. It decreases with size, as the paper asks."""
    p1 = non_embedding_params(first.build_config())
    p = non_embedding_params(this.build_config())
    return first_lr * (p1 / p) ** exponent
