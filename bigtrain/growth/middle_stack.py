"""`middle-stack`: MIDAS-style growth (Saunshi et al., NeurIPS 2024, arXiv 2409.19044).

MIDAS grows depth in stages by duplicating a block of b *middle* layers (gradual stacking duplicates
the top block instead). One growth here: `--layers N [--block b]` from L source layers takes the block
of b layers centred in the stack, [s, s + b) with s = (L - b) // 2, and inserts (N - L) / b copies of
it right after it: layers [0, s + b), the copies, then [s + b, L). The first and last layers stay at
the ends (1 <= b <= L - 2); N - L must be a multiple of b; b defaults to N - L (one copy: one MIDAS
stage). The paper's gradual schedule is a staged recipe of such growths (recipes/midas-demo.yaml).
No public code from the authors was found; this is our reading of the paper. The copies are "new",
the source layers "inherited". Not function-preserving.
"""

from __future__ import annotations

from bigtrain.errors import BigtrainError
from bigtrain.growth.depth import LayerPlan, needs_layers
from bigtrain.growth.operator import DepthArgs, Operator
from bigtrain.model.configuration import BigTrainConfig


def middle_block(L: int, n: int, block: int | None) -> tuple[int, int, int]:
    """(first layer of the block, block size, number of copies)."""
    if n < L:
        raise BigtrainError(f"--op middle-stack: target of {n} layers is smaller than the source's {L}")
    b = block if block is not None else n - L
    if n == L and block is None:
        return 0, 0, 0
    if not 1 <= b <= L - 2:
        raise BigtrainError(
            f"--op middle-stack: --block {b} must be in [1, {L - 2}] (the first and last of {L} layers stay at the ends)"
        )
    if (n - L) % b:
        raise BigtrainError(f"--op middle-stack: {n - L} new layers is not a multiple of --block {b}")
    return (L - b) // 2, b, (n - L) // b


def middle_stack_layers(cfg: BigTrainConfig, a: DepthArgs) -> list[LayerPlan]:
    L = cfg.num_hidden_layers
    s, b, copies = middle_block(L, needs_layers(a), a.block)
    order = [(j, "inherited") for j in range(s + b)] + [(j, "copy") for j in range(s, s + b)] * copies
    order += [(j, "inherited") for j in range(s + b, L)]
    return [LayerPlan(i, "inherited" if how == "inherited" else "new", j, how) for i, (j, how) in enumerate(order)]


OPERATOR = Operator(
    "middle-stack",
    "depth",
    "MIDAS: copies of the middle block of b layers inserted right after it",
    "Saunshi et al., NeurIPS 2024, arXiv 2409.19044",
    None,
    ("layers", "block"),
    "no",
    plan=middle_stack_layers,
)
