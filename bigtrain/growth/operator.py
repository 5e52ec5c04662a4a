"""The growth operator object: what `bigtrain-grow --list`, `GrowSpec.op`, the docs and `grow()` know
about one operator. Each operator module (depth.py, width.py, mixture.py, dus.py, ...) defines its
objects; bigtrain/growth/registry.py collects them into one dict.

Depth operators are *plans* (target layer -> source layer and init; the per-tensor work is shared, see
depth.py). Width operators are per-tensor transforms `widen(name, key, w, ctx, maps, ...)`
(width.py's, or an operator's own). Every random draw goes through the seeded per-key generator and
every initialisation choice (`init`, `split`, `noise_std`, `snr_db`) is an explicit argument, so a
caller can grow other tensors than weights (optimizer moments) with the new entries' init chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from bigtrain.model.configuration import BigTrainConfig


@dataclass(frozen=True)
class LayerPlan:
    """One target layer of a depth growth: where it comes from and how it starts."""

    index: int
    origin: str  # "inherited" (trained in the previous stage) | "new"
    source_layer: int | None  # the layer copied / whose sizes it takes
    init: str  # inherited | copy | mean | zero | identity | random
    mean_with: int | None = None  # the upper neighbour for init "mean"


# grow() keyword -> (value type, help): the operators' options beyond the target sizes. The CLI flag is
# the keyword with '-' for '_'.
OPTIONS: dict[str, tuple[type, str]] = {
    "layers": (int, "target number of layers"),
    "init": (str, "how new layers / entries start"),
    "placement": (str, "where new layers go: upper | after-each"),
    "drop": (int, "layers dropped from each copy (dus)"),
    "block": (int, "layers in the replicated middle block (middle-stack)"),
    "hidden": (int, "target hidden size"),
    "ffn": (int, "target reference FFN size"),
    "heads": (int, "target reference query heads"),
    "kv_heads": (int, "target reference kv heads"),
    "split": (str, "how replicas share: asymmetric | noise | even"),
    "split_spread": (float, "asymmetric: fractions from U(1-s, 1+s)"),
    "noise_std": (float, "noise: relative std of the replicas' perturbation"),
    "snr_db": (float, "hypercloning: signal-to-noise ratio (dB) of the +-noise on cloned blocks"),
    "experts": (int, "upcycle: copies of each FFN (experts before granularity)"),
    "top_k": (int, "upcycle: experts per token (before granularity)"),
    "granularity": (int, "upcycle: shards per FFN copy (E*G experts of width d_f/G, top-k K*G)"),
    "drop_ratio": (float, "upcycle: Drop-Upcycling's re-initialised fraction of each expert's dimensions"),
    "router_init": (str, "upcycle: normal | zeros"),
}
WIDTH_SIZES = ("hidden", "ffn", "heads", "kv_heads")


@dataclass(frozen=True)
class DepthArgs:
    """The arguments a depth plan sees (None: not given)."""

    op: str
    layers: int | None = None
    init: str | None = None
    placement: str = "upper"
    drop: int | None = None
    block: int | None = None


@dataclass(frozen=True)
class Operator:
    name: str
    kind: Literal["depth", "width", "moe"]  # moe: dense -> Mixture-of-Experts (upcycle.py), used alone
    summary: str  # one line
    paper: str  # authors, venue, arXiv id
    code: str | None  # the authors' code, where public
    options: tuple[str, ...]  # grow() keywords (OPTIONS) it takes
    preserves: str  # "yes" | "no" | the condition under which it does (human text; the record computes it)
    # depth: (source config, arguments) -> one LayerPlan per target layer
    plan: Callable[[BigTrainConfig, DepthArgs], list[LayerPlan]] | None = None
    # width: the per-tensor transform, widen(name, key, w, ctx, maps, upper=None, templates=None) -> tensor
    widen: Callable[..., Any] | None = None
    # width: whether the transform reads the per-layer replica maps (width.layer_maps)
    replica_maps: bool = True
    # width: (source config, hidden, ffn, heads, kv_heads) -> the sizes to grow to (defaults, checks)
    sizes: Callable[..., tuple[int | None, int | None, int | None, int | None]] | None = None
    # width: (source config, WidthTarget, split) -> whether this growth preserves the function; None:
    # width.width_preserves_function
    preserving: Callable[..., bool] | None = None

    @property
    def reference(self) -> str:
        return f"{self.paper}; code: {self.code}" if self.code else self.paper
