"""MixtureGrowth carried over to transformer linear layers — bigtrain's own extension.

MixtureGrowth (Pham et al., WACV 2024, on CNNs) builds each layer's weight from blocks that are linear
combinations of shared parameter templates, W_j = sum_t alpha_{j,t} T_t, and grows width by keeping
the trained blocks on the diagonal and filling the new blocks with *new* combinations of the trained
templates, by default with coefficients orthogonal to the existing ones.

A LLaMA checkpoint has no template bank, so bigtrain takes as templates the same projection in
every source layer that has the same shape (T_t = layer t's q_proj, ...). A layer's own weight is
the combination alpha = e_j (or (e_j + e_k)/2 for a STEP `mean` layer). Growing a projection to a
larger shape keeps the layer's weight in the old rows x old columns; every entry with a new row or
column comes from M = sum_t beta_t T_t, gathered through the same replica maps as the width
operators. `beta` (init): `orthogonal` (default: random, alpha's direction removed, unit norm, so
M has the templates' scale but is not a copy of the layer), `copy` (beta = alpha/|alpha|),
`random` (random unit vector), `zero`. Not function-preserving. Embeddings, LM head and norm gains
replicate existing channels. Cost: one read of each template per grown projection (O(L^2) reads
per model; memory stays at two tensors).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from bigtrain.errors import BigtrainError
from bigtrain.growth.depth import LayerPlan
from bigtrain.growth.operator import Operator
from bigtrain.growth.width import widen
from bigtrain.model.configuration import BigTrainConfig
from bigtrain.model.param_shapes import layer_shapes

MIXTURE_INITS = ("orthogonal", "copy", "random", "zero")


def own_coefficients(plan: LayerPlan, num_templates: list[int]) -> torch.Tensor:
    """alpha: the layer's current weight as a combination of the templates (zero for a fresh layer)."""
    alpha = torch.zeros(len(num_templates))
    if plan.init in ("inherited", "copy", "zero", "mean") and plan.source_layer in num_templates:
        alpha[num_templates.index(plan.source_layer)] = 1.0
        if plan.init == "mean" and plan.mean_with in num_templates:
            alpha[num_templates.index(plan.source_layer)] = 0.5
            alpha[num_templates.index(plan.mean_with)] = 0.5
    return alpha


def new_coefficients(alpha: torch.Tensor, init: str, g: torch.Generator) -> torch.Tensor:
    if init == "zero":
        return torch.zeros_like(alpha)
    if init == "copy":
        return alpha / alpha.norm() if alpha.norm() > 0 else alpha
    beta = torch.randn(alpha.shape, generator=g)
    if init == "orthogonal" and alpha.norm() > 0:
        beta = beta - (beta @ alpha) / (alpha @ alpha) * alpha
    n = beta.norm()
    return beta / n if n > 1e-12 else torch.zeros_like(alpha)


def template_combination(
    name: str,
    plan: LayerPlan,
    cfg: BigTrainConfig,
    tensors: Mapping[str, torch.Tensor],
    init: str,
    generator: Callable[[str], torch.Generator],
) -> torch.Tensor:
    """M = sum_t beta_t T_t for projection `name` of the target layer built by `plan` (source width)."""
    if init not in MIXTURE_INITS:
        raise BigtrainError(f"--op mixture: --init {init} is not one of {', '.join(MIXTURE_INITS)}")
    shape = layer_shapes(cfg, plan.source_layer)[name]
    bank = [t for t in range(cfg.num_hidden_layers) if layer_shapes(cfg, t).get(name) == shape]
    beta = new_coefficients(own_coefficients(plan, bank), init, generator(f"layer{plan.index}.{name}.mixture"))
    out = torch.zeros(shape)
    for t, b in zip(bank, beta.tolist(), strict=True):
        if b:
            out.add_(tensors[f"model.layers.{t}.{name}"].float(), alpha=b)
    return out


OPERATOR = Operator(
    "mixture",
    "width",
    "MixtureGrowth carried to transformer linear layers (bigtrain's extension): new blocks from templates",
    "Pham et al., WACV 2024, arXiv 2311.04251",
    "https://github.com/chaudatascience/mixturegrowth",
    ("hidden", "ffn", "heads", "kv_heads", "init"),
    "no",
    widen=widen,
)
