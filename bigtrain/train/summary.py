"""The end of a run says what happened: a few lines on rank 0 (a stage) and at the end of `bigtrain-run`.

Numbers come from what the run records (`run.json`, `metrics.jsonl`), so the lines printed here and the
ones `bigtrain-report` computes later agree.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def format_eval(final_eval: dict[str, float] | None) -> str:
    if not final_eval or "eval_loss" not in final_eval:
        return "no held-out eval (no eval data)"
    loss = float(final_eval["eval_loss"])
    return f"held-out loss {loss:.4f}, perplexity {math.exp(min(loss, 50.0)):.2f}"


def report_command(runs: list[Path]) -> str:
    out = runs[0] / "report"
    return "bigtrain-report " + " ".join(shlex.quote(str(r)) for r in runs) + f" --out {shlex.quote(str(out))}"


def stage_summary(out: Path, info: dict[str, Any], title: str = "run") -> list[str]:
    """Lines for one trained run (a stage) from its run.json record."""
    status = info.get("status", "?")
    lines = [
        f"[bigtrain] {title} {status} at step {info.get('step', '?')}: {out}",
        f"  {format_eval(info.get('final_eval'))}",
        f"  tokens {int(info.get('tokens', 0)):,}, training FLOPs {info.get('tokens', 0) * info.get('flops_per_token', 0):.3g}, "
        f"wall time {format_duration(float(info.get('wall_time_s', 0.0)))}",
    ]
    export = out / "hf"
    if (export / "config.json").is_file():
        lines.append(f"  export   {export}")
    lines.append(f"  metrics  {out / 'metrics.jsonl'}")
    lines.append(f"  tb       tensorboard --logdir {out / 'tb'}")
    if status == "preempted":
        lines.append("  rerun the same command to resume")
    lines.append(f"  report   {report_command([out])}")
    return lines


def print_stage_summary(out: Path, info: dict[str, Any]) -> None:
    print("\n".join(stage_summary(out, info)), flush=True)


def read_run_info(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "run.json"
    return json.loads(path.read_text()) if path.is_file() else None


def pipeline_summary(root: Path, stage_dirs: list[tuple[str, Path]]) -> list[str]:
    """Lines for a whole `bigtrain-run`: one per stage, then the totals over every stage."""
    lines = [f"[bigtrain-run] summary: {root}"]
    tokens = flops = wall = 0.0
    last: dict[str, Any] | None = None
    for name, d in stage_dirs:
        info = read_run_info(d)
        if info is None:
            lines.append(f"  {name:<12} not run")
            continue
        tokens += info.get("tokens", 0)
        flops += info.get("tokens", 0) * info.get("flops_per_token", 0)
        wall += float(info.get("wall_time_s", 0.0))
        lines.append(
            f"  {name:<12} {info.get('status', '?'):<9} step {info.get('step', '?'):>6}  "
            f"{format_eval(info.get('final_eval'))}  tokens {int(info.get('tokens', 0)):,}"
        )
        last = info
    lines.append(
        f"  total        tokens {int(tokens):,}, training FLOPs {flops:.3g}, wall time {format_duration(wall)}"
    )
    if last is not None:
        lines.append(f"  final        {format_eval(last.get('final_eval'))}")
    lines.append(f"  report       {report_command([root])}")
    return lines
