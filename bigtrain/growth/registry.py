"""The one registry of growth operators: name -> Operator (bigtrain/growth/operator.py).

`GrowSpec.op`, `bigtrain-grow` (and `--list`), `grow()` and the table in docs/growth.md all read it.
"""

from __future__ import annotations

from collections.abc import Sequence

from bigtrain.errors import BigtrainError
from bigtrain.growth import block_expand, depth, dus, hypercloning, middle_stack, mixture, width
from bigtrain.growth.operator import Operator

OPERATORS = (
    *depth.OPERATORS,
    dus.OPERATOR,
    block_expand.OPERATOR,
    middle_stack.OPERATOR,
    *width.OPERATORS,
    mixture.OPERATOR,
    hypercloning.OPERATOR,
)
REGISTRY: dict[str, Operator] = {op.name: op for op in OPERATORS}
DEPTH_OPS = tuple(name for name, op in REGISTRY.items() if op.kind == "depth")
WIDTH_OPS = tuple(name for name, op in REGISTRY.items() if op.kind == "width")


def known() -> str:
    return ", ".join(DEPTH_OPS + WIDTH_OPS)


def split_op(op: str | Sequence[str]) -> list[str]:
    return [p.strip() for p in (op.split("+") if isinstance(op, str) else op) if p.strip()]


def parse_ops(op: str | Sequence[str]) -> tuple[str | None, str | None]:
    """(depth operator, width operator) of "depth+width", either optional; one error line otherwise."""
    names = split_op(op)
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
