"""Measured peak memory of a staged run's stages against `bigtrain-plan`'s prediction.

    python tools/gpu/compare_plan.py PLAN.json RUN_OUTPUT_DIR [--out table.md]

PLAN.json is `bigtrain-plan RECIPE ... --json`; each stage's run.json (under RUN_OUTPUT_DIR/<stage>/) holds
`memory.peak_bytes` (CUDA max allocated) and `peak_reserved_bytes`. Goal (issue 11): within 10%.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

GIB = 2**30


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plan", type=Path)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    plan = json.loads(args.plan.read_text())
    lines = [
        "| stage | predicted GiB | measured allocated GiB | error | measured reserved GiB | state predicted / measured GiB |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    for st in plan["stages"]:
        info_path = args.run_dir / st["name"] / "run.json"
        if not info_path.exists():
            lines.append(f"| {st['name']} | {st['peak_bytes'] / GIB:.2f} | not run | | | |")
            continue
        mem = json.loads(info_path.read_text()).get("memory", {})
        measured = mem.get("peak_bytes")
        reserved = mem.get("peak_reserved_bytes")
        state = sum(mem.get(k, 0) for k in ("param_bytes", "grad_bytes", "optimizer_state_bytes"))
        err = (st["peak_bytes"] - measured) / measured if measured else None
        rows.append(
            {
                "stage": st["name"],
                "predicted": st["peak_bytes"],
                "measured": measured,
                "reserved": reserved,
                "error": err,
            }
        )
        lines.append(
            f"| {st['name']} | {st['peak_bytes'] / GIB:.2f} | {measured / GIB:.2f} | {100 * err:+.1f}% | "
            f"{(reserved or 0) / GIB:.2f} | {st['state_bytes'] / GIB:.2f} / {state / GIB:.2f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
