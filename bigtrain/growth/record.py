"""growth.json: what an operator did, layer by layer; read back by the next stage and by STEP.

Contract (issue 5): a layer with origin "inherited" was trained in the previous stage (STEP freezes it
and adds LoRA); a "new" layer is trained fully. For stack/interleave the first copy of each source
layer is the inherited one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigtrain.errors import BigtrainError

if TYPE_CHECKING:
    from bigtrain.model.configuration import BigTrainConfig

GROWTH_RECORD_NAME = "growth.json"
FORMAT_VERSION = 1


@dataclass
class LayerRecord:
    index: int
    origin: str  # "inherited" | "new"
    source_layer: int | None
    init: str
    params: dict[str, list[str]]  # {"inherited": [...], "new": [...]}, full parameter names


@dataclass
class GrowthRecord:
    op: str
    operators: list[str]
    args: dict[str, Any]
    source: dict[str, Any]
    source_config: dict[str, Any]
    target_config: dict[str, Any]
    function_preserving: bool
    layers: list[LayerRecord]
    non_layer_params: dict[str, list[str]]
    verify: dict[str, Any] | None = None
    format: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def inherited_layers(self) -> list[int]:
        return [r.index for r in self.layers if r.origin == "inherited"]

    def new_layers(self) -> list[int]:
        return [r.index for r in self.layers if r.origin == "new"]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GrowthRecord:
        raw = dict(raw)
        raw["layers"] = [LayerRecord(**r) for r in raw["layers"]]
        return cls(**raw)


def read_growth_record(directory: str | Path) -> GrowthRecord:
    path = Path(directory) / GROWTH_RECORD_NAME
    if not path.is_file():
        raise BigtrainError(f"{path}: no growth record (was this checkpoint written by bigtrain-grow?)")
    try:
        return GrowthRecord.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise BigtrainError(f"{path}: corrupt growth record ({e})") from None


NON_LAYER = ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")


def config_summary(cfg: BigTrainConfig) -> dict[str, Any]:
    return {
        "num_hidden_layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "layer_intermediate_sizes": list(cfg.layer_intermediate_sizes),
        "layer_num_attention_heads": list(cfg.layer_num_attention_heads),
        "layer_num_key_value_heads": list(cfg.layer_num_key_value_heads),
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_word_embeddings,
    }
