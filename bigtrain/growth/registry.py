"""The one registry of growth operators: name -> Operator (bigtrain/growth/operator.py).

`GrowSpec.op`, `bigtrain-grow` (and `--list`), `grow()` and the table in docs/growth.md all read it.
"""

from __future__ import annotations

from collections.abc import Sequence

from bigtrain.errors import BigtrainError
from bigtrain.growth.block_expand import OPERATOR as BLOCK_EXPAND
from bigtrain.growth.depth import OPERATORS as DEPTH_OPERATORS
from bigtrain.growth.dus import OPERATOR as DUS
from bigtrain.growth.hypercloning import OPERATOR as HYPERCLONING
from bigtrain.growth.middle_stack import OPERATOR as MIDDLE_STACK
from bigtrain.growth.mixture import OPERATOR as MIXTURE
from bigtrain.growth.operator import Operator
from bigtrain.growth.upcycle import OPERATOR as UPCYCLE
from bigtrain.growth.width import OPERATORS as WIDTH_OPERATORS

OPERATORS = (*DEPTH_OPERATORS, DUS, BLOCK_EXPAND, MIDDLE_STACK, *WIDTH_OPERATORS, MIXTURE, HYPERCLONING, UPCYCLE)
REGISTRY: dict[str, Operator] = {op.name: op for op in OPERATORS}
DEPTH_OPS = tuple(name for name, op in REGISTRY.items() if op.kind == "depth")
WIDTH_OPS = tuple(name for name, op in REGISTRY.items() if op.kind == "width")
MOE_OPS = tuple(name for name, op in REGISTRY.items() if op.kind == "moe")  # used alone, never with '+'


def known() -> str:
    return ", ".join(DEPTH_OPS + WIDTH_OPS + MOE_OPS)


def split_op(op: str | Sequence[str]) -> list[str]:
    return [p.strip() for p in (op.split("+") if isinstance(op, str) else op) if p.strip()]


def parse_ops(op: str | Sequence[str]) -> tuple[str | None, str | None]:
    """(depth operator, width operator) of "depth+width", either optional; one error line otherwise."""
    names = split_op(op)
    if any(n in MOE_OPS for n in names):
        raise BigtrainError(f"--op {op}: {', '.join(MOE_OPS)} is used alone, not composed with '+'")
    depth_ops = [n for n in names if n in DEPTH_OPS]
    width_ops = [n for n in names if n in WIDTH_OPS]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown or not names:
        raise BigtrainError(f"unknown operator {(unknown or [op])[0]!r} (known: {known()})")
    if len(depth_ops) > 1 or len(width_ops) > 1:
        raise BigtrainError(f"--op {op}: at most one depth and one width operator")
    return (depth_ops[0] if depth_ops else None), (width_ops[0] if width_ops else None)


def taking(option: str) -> list[str]:
    """The operators that take `option`."""
    return [name for name, op in REGISTRY.items() if option in op.options]


def table() -> str:
    """The operator table of `bigtrain-grow --list` and docs/growth.md (markdown)."""
    rows = [
        "| op | kind | what | function-preserving | options | reference |",
        "|---|---|---|---|---|---|",
    ]
    for op in REGISTRY.values():
        options = " ".join(f"`--{o.replace('_', '-')}`" for o in op.options)
        rows.append(f"| `{op.name}` | {op.kind} | {op.summary} | {op.preserves} | {options} | {op.reference} |")
    return "\n".join(rows)
