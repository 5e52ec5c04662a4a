"""Layout schemes: per-layer FFN width and head counts derived from the isotropic reference.

Only `uniform` so far; the other schemes (ffn-concentrate, lws, reverse, framed, crown) are issue #3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bigtrain.config import ModelSpec


def derive_layers(spec: ModelSpec) -> tuple[list[int], list[int], list[int]]:
    """(FFN sizes, query heads, kv heads), one entry per layer."""
    n = spec.num_layers
    kv = spec.num_kv_heads or spec.num_heads
    if spec.layout.scheme != "uniform":
        raise ValueError(f"layout scheme {spec.layout.scheme!r} is not implemented yet")
    return [spec.intermediate_size] * n, [spec.num_heads] * n, [kv] * n
