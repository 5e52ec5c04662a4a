"""growth.json: what an operator did, layer by layer; read back by the next stage and by STEP.

Contract (issue 5): a layer with origin "inherited" was trained in the previous stage (STEP freezes it
and adds LoRA); a "new" layer is trained fully. For stack/interleave the first copy of each source
layer is the inherited one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bigtrain.errors import BigtrainError

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
