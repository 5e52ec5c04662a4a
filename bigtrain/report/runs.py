"""Reading runs back: a plain run directory, or a `bigtrain-run` root whose stages are stitched into one curve.

A plain run is a directory with `run.json` and `metrics.jsonl` (what `bigtrain/train/loop.py` writes). A
staged run is a directory whose stage subdirectories are plain runs; their order is the one `bigtrain-run`
recorded in `pipeline.json`, else the order the runner prepared them in (`stage.yaml` times). Tokens,
training FLOPs (each stage's `flops_per_token` x its tokens) and training wall time (the logged step times)
accumulate from the first stage, so a staged run reads as one curve with its growth points marked.

A run whose first stage starts from another run's checkpoint (`init_from`: its export, a training checkpoint,
or a stage of a `bigtrain-run` root, e.g. every width arm grows one shared base) carries that run's compute:
its curve starts at the source run's tokens, FLOPs and wall time, so "equal compute" counts the base once
for every arm that used it, as a from-scratch control of the same total budget does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bigtrain.errors import BigtrainError
from bigtrain.growth.record import GROWTH_RECORD_NAME, read_growth_record

PIPELINE_FILE = "pipeline.json"


@dataclass
class StagePart:
    """One trained run: its run.json record and its metrics, offset by the stages before it."""

    name: str
    path: Path
    info: dict[str, Any]
    metrics: list[dict[str, Any]]
    tokens_before: float = 0.0
    flops_before: float = 0.0
    wall_before: float = 0.0

    @property
    def flops_per_token(self) -> float:
        return float(self.info.get("flops_per_token") or 0.0)

    @property
    def tokens(self) -> float:
        return float(self.info.get("tokens") or 0.0)

    @property
    def wall_s(self) -> float:
        """Training wall time: the logged mean step time over each logging interval (evals excluded)."""
        total, prev = 0.0, 0
        for m in self.metrics:
            if "step_time_s" in m:
                total += m["step_time_s"] * (m["step"] - prev)
                prev = m["step"]
        return total


@dataclass
class Point:
    step: int
    tokens: float
    flops: float
    wall_s: float
    value: float


@dataclass
class Run:
    name: str
    path: Path
    parts: list[StagePart]
    train: list[Point] = field(default_factory=list)  # training loss
    eval: list[Point] = field(default_factory=list)  # held-out loss
    lr: list[Point] = field(default_factory=list)
    grown_eval: list[Point] = field(default_factory=list)  # held-out loss of the grown model before its first update
    inherited: Run | None = None  # the run that wrote this one's init_from: its compute is counted as spent
    inherited_note: str | None = None  # why an init_from's compute is not counted (not found, a cycle)

    @property
    def staged(self) -> bool:
        return len(self.parts) > 1 or self.parts[0].path != self.path

    @property
    def growth_points(self) -> list[tuple[str, float, float, float]]:
        """(stage name, tokens, FLOPs, wall seconds) where each grown stage starts: every stage after the
        first, and the first too when it grew another run's checkpoint."""
        grown = self.parts if self.inherited is not None else self.parts[1:]
        return [(p.name, p.tokens_before, p.flops_before, p.wall_before) for p in grown]

    @property
    def tokens(self) -> float:
        last = self.parts[-1]
        return last.tokens_before + last.tokens

    @property
    def flops(self) -> float:
        last = self.parts[-1]
        return last.flops_before + last.tokens * last.flops_per_token

    @property
    def wall_s(self) -> float:
        last = self.parts[-1]
        return last.wall_before + last.wall_s

    @property
    def final_eval_loss(self) -> float | None:
        final = self.parts[-1].info.get("final_eval") or {}
        if "eval_loss" in final:
            return float(final["eval_loss"])
        return self.eval[-1].value if self.eval else None

    @property
    def peak_memory_bytes(self) -> int | None:
        peaks = [p.info.get("memory", {}).get("peak_bytes") for p in self.parts]
        known = [int(b) for b in peaks if b is not None]
        return max(known) if known else None

    @property
    def model_state_bytes(self) -> int | None:
        known = [b for b in (model_state_bytes(p.info) for p in self.parts) if b is not None]
        return max(known) if known else None


def model_state_bytes(info: dict[str, Any]) -> int | None:
    """Parameters + gradients + optimizer states of one rank, as the trainer measured them (run.json's
    `memory`): what STEP's frozen layers save, which a CPU's peak RSS (framework-dominated) hides."""
    mem = info.get("memory") or {}
    parts = [mem.get(k) for k in ("param_bytes", "grad_bytes", "optimizer_state_bytes")]
    return sum(int(b) for b in parts) if all(b is not None for b in parts) else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_part(name: str, path: Path) -> StagePart:
    info_path = path / "run.json"
    if not info_path.is_file():
        raise BigtrainError(f"{path}: no run.json (not a bigtrain run, or it never started)")
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as e:
        raise BigtrainError(f"{info_path}: not valid JSON ({e.msg}, line {e.lineno})") from e
    return StagePart(name=name, path=path, info=info, metrics=read_metrics(path / "metrics.jsonl"))


def stage_order(root: Path) -> list[str]:
    """Stage names of a `bigtrain-run` root in run order."""
    recorded = root / PIPELINE_FILE
    if recorded.is_file():
        names = json.loads(recorded.read_text())["stages"]
        return [n for n in names if (root / n / "run.json").is_file()]
    dirs = [d for d in root.iterdir() if d.is_dir() and (d / "run.json").is_file()]

    def prepared_at(d: Path) -> float:
        marker = d / "stage.yaml"
        return (marker if marker.exists() else d / "run.json").stat().st_mtime

    return [d.name for d in sorted(dirs, key=prepared_at)]


def find_path(given: str, run_dir: Path) -> Path | None:
    """A path as the training command saw it: absolute, or relative to the current directory or to any
    directory above the run (the repository the recipes were run in)."""
    path = Path(given)
    if path.is_absolute():
        return path if path.exists() else None
    for base in [Path.cwd(), *run_dir.resolve().parents]:
        if (base / path).exists():
            return (base / path).resolve()
    return None


def source_run_dir(init_from: str, run_dir: Path) -> Path | None:
    """The run directory whose training produced `init_from`'s weights: for a grown checkpoint (with a
    growth record, e.g. the `init/` bigtrain-run grows into a stage) the run its source came from, else
    the nearest directory with a run.json at or above `init_from` (an export `hf/`, `checkpoints/step_N`)."""
    path = find_path(init_from, run_dir)
    if path is not None and (path / GROWTH_RECORD_NAME).is_file():
        try:
            source = read_growth_record(path).source.get("path")
        except BigtrainError:
            return None  # a corrupt record: the report shows the run without its source's compute
        if source is None:
            return None
        path = find_path(str(source), run_dir)
    if path is None:
        return None
    for cand in [path, *path.parents][:4]:
        if (cand / "run.json").is_file():
            return cand
    return None


def load_run(path: str | Path, name: str | None = None, inherited: bool = True, _seen: tuple[Path, ...] = ()) -> Run:
    """A run's curves; with `inherited`, offset by the compute of the run its first stage grew from."""
    root = Path(path)
    if not root.is_dir():
        raise BigtrainError(f"{root}: no such run directory")
    if (root / "run.json").is_file():
        parts = [read_part(root.name, root)]
    else:
        names = stage_order(root)
        if not names:
            raise BigtrainError(f"{root}: neither a run (run.json) nor a staged run (stage directories with run.json)")
        parts = [read_part(n, root / n) for n in names]
    run = Run(name=name or root.name, path=root, parts=parts)
    tokens = flops = wall = 0.0
    init_from = parts[0].info.get("init_from")
    if inherited and init_from:
        source = source_run_dir(str(init_from), parts[0].path)
        if source is not None and root.resolve() in [source.resolve(), *source.resolve().parents]:
            pass  # grown from an earlier stage of this run: already counted
        elif source is None:
            run.inherited_note = f"init_from {init_from}: no run directory found; its compute is not counted"
        elif source.resolve() in _seen:
            run.inherited_note = f"init_from {init_from}: a cycle of runs; its compute is not counted"
        else:
            run.inherited = load_run(source, _seen=(*_seen, root.resolve()))
            tokens, flops, wall = run.inherited.tokens, run.inherited.flops, run.inherited.wall_s
    for part in parts:
        part.tokens_before, part.flops_before, part.wall_before = tokens, flops, wall
        prev_step, prev_tokens, elapsed = 0, 0.0, 0.0
        for m in part.metrics:
            step = int(m["step"])
            # tokens at this step: logged with the training record; an eval-only record (the final eval)
            # repeats the step of the record before it
            t = float(m["tokens"]) if "tokens" in m else prev_tokens
            if "step_time_s" in m:
                elapsed += m["step_time_s"] * (step - prev_step)
                prev_step = step
            at = dict(step=step, tokens=tokens + t, flops=flops + t * part.flops_per_token, wall_s=wall + elapsed)
            if "loss" in m and math.isfinite(m["loss"]):
                run.train.append(Point(**at, value=float(m["loss"])))
            if "lr" in m:
                run.lr.append(Point(**at, value=float(m["lr"])))
            if "eval_loss" in m:
                run.eval.append(Point(**at, value=float(m["eval_loss"])))
                if m.get("growth_eval"):
                    run.grown_eval.append(run.eval[-1])
            prev_tokens = t
        tokens += part.tokens
        flops += part.tokens * part.flops_per_token
        wall += part.wall_s
    return run
