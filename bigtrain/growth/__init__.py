"""Growth operators: pure functions (config, tensors) -> (grown config, tensors, record), and
`grow_checkpoint`, which applies them to a checkpoint on disk (docs/growth.md)."""

from bigtrain.growth.api import VerificationError, grow_checkpoint
from bigtrain.growth.grow import Grown, grow, parse_ops
from bigtrain.growth.record import GrowthRecord, LayerRecord, read_growth_record
from bigtrain.growth.registry import REGISTRY

__all__ = [
    "REGISTRY",
    "Grown",
    "GrowthRecord",
    "LayerRecord",
    "VerificationError",
    "grow",
    "grow_checkpoint",
    "parse_ops",
    "read_growth_record",
]
