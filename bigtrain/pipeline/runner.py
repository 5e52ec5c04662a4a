"""Run the stages of a recipe on this machine: prepare (grow, write `stage.yaml`), launch, resume.

A stage is finished when `<output_dir>/<stage>/hf/config.json` exists (the trainer exports atomically at
the end) and its `run.json` trained as many steps (or tokens) as the recipe now asks; a stage given more is
launched again and the trainer extends it from its last checkpoint (`stages.stage_finished`). Preparing
is idempotent: a grown `init/` already there is reused (growth writes atomically), and
the trainer resumes a stage from its newest checkpoint. So rerunning `bigtrain-run` after an interruption
continues at the stage and step where it stopped.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from bigtrain.ckpt.atomic import write_text_atomic
from bigtrain.config import dump_recipe
from bigtrain.errors import BigtrainError
from bigtrain.pipeline.stages import Stage
from bigtrain.train.distributed import free_port
from bigtrain.train.summary import pipeline_summary

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "train.py"


def find_stage(stages: list[Stage], name: str) -> Stage:
    for st in stages:
        if st.name == name:
            return st
    raise BigtrainError(f"no stage named {name!r} (stages: {', '.join(s.name for s in stages)})")


def stage_yaml(stage: Stage) -> Path:
    return stage.output_dir / "stage.yaml"


def prepare_stage(stage: Stage, stages: list[Stage]) -> Path:
    """Grow the stage's initial weights if it needs them and they are not there yet; write `stage.yaml`."""
    stage.output_dir.mkdir(parents=True, exist_ok=True)
    if stage.grow is not None:
        init = Path(stage.recipe.init_from or "")
        if not (init / "config.json").is_file():
            source = Path(stage.grow_from or "")
            if stage.index > 0 and not stages[stage.index - 1].finished:
                prev = stages[stage.index - 1]
                raise BigtrainError(f"stage {stage.name!r}: stage {prev.name!r} has no export at {prev.export_dir} yet")
            if not source.exists():
                raise BigtrainError(f"stage {stage.name!r}: nothing to grow from at {source}")
            from bigtrain.growth import grow_checkpoint

            grow_checkpoint(
                source, init, op=stage.grow.op, optimizer=stage.grow.optimizer, progress=False, **stage.grow.grow_args()
            )
        else:
            check_grown(stage, init)
    recipe = stage.recipe
    start = data_start(stage, stages)
    if start != recipe.data.start_sequence:
        recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"start_sequence": start})})
    path = stage_yaml(stage)
    write_text_atomic(path, dump_recipe(recipe))
    return path


def data_start(stage: Stage, stages: list[Stage]) -> int | None:
    """`data.start_sequence` of a stage: the recipe's if it sets one; for a later stage, where the stage
    before it ended in the data order (its run.json), so training goes on through the data."""
    data = stage.recipe.data
    if stage.index == 0 or data.start_sequence is not None or data.streaming:
        return data.start_sequence
    prev = stages[stage.index - 1]
    try:
        info = json.loads((prev.output_dir / "run.json").read_text())
        return int(info.get("start_sequence", 0)) + int(info["step"]) * int(info["global_batch_size"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BigtrainError(
            f"stage {stage.name!r}: cannot tell where stage {prev.name!r} ended in the data "
            f"({prev.output_dir / 'run.json'}: {e}); set data.start_sequence in the stage"
        ) from e


def check_grown(stage: Stage, init: Path) -> None:
    """A grown `init/` from an earlier run is reused only if the recipe still asks for the same growth."""
    from bigtrain.growth import read_growth_record

    if stage.grow is None:
        return
    record = read_growth_record(init)
    wanted = {"op": stage.grow.op, **stage.grow.grow_args()}
    done = {"op": record.op, **record.args}
    wanted["optimizer"], done["optimizer"] = stage.grow.optimizer, record.extra.get("optimizer", "fresh")
    changed = [k for k, v in wanted.items() if k in done and done[k] != v]
    if changed:
        k = changed[0]
        raise BigtrainError(
            f"stage {stage.name!r}: {init} was grown with {k}={done[k]!r}, the recipe now says {wanted[k]!r} "
            "(remove that directory to grow again)"
        )


LAUNCHER_ENV = "BIGTRAIN_LAUNCHER"


def launch_command(recipe_path: Path, nproc: int) -> list[str]:
    """One rank: plain Python (a group of one); more: the deepspeed launcher on this node. `$BIGTRAIN_LAUNCHER`
    replaces both with a command of your own that starts `{nproc}` ranks of the script after it, e.g.
    `torchrun --standalone --nproc-per-node {nproc}` (`{port}`: a free port on this host)."""
    custom = os.environ.get(LAUNCHER_ENV)
    if custom:
        fill = {"nproc": nproc, "port": free_port(), "python": sys.executable}  # one port, however often named
        prefix = [a.format(**fill) for a in shlex.split(custom)]
        return [*prefix, str(TRAIN_SCRIPT), "--recipe", str(recipe_path)]
    if nproc == 1:
        return [sys.executable, str(TRAIN_SCRIPT), "--recipe", str(recipe_path)]
    return [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        str(nproc),
        "--master_port",
        str(free_port()),
        str(TRAIN_SCRIPT),
        "--recipe",
        str(recipe_path),
    ]


def detected_devices() -> int:
    import torch

    return max(1, torch.cuda.device_count())


def run_stages(stages: list[Stage], nproc: int | None = None, log: bool = True) -> int:
    """Run every unfinished stage in order; returns the trainer's exit code of a stage that did not finish
    (2 bad input, 3 preempted: rerun to resume), else 0."""
    nproc = nproc or detected_devices()
    root = stages[0].root
    if root is not None:  # a staged recipe (one stage or more): the stage order, for bigtrain-report and -eval
        root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(root / "pipeline.json", json.dumps({"stages": [s.name for s in stages]}) + "\n")
    for st in stages:
        if st.finished:
            if log:
                print(f"[bigtrain-run] stage {st.name}: finished ({st.export_dir})", flush=True)
            continue
        path = prepare_stage(st, stages)
        cmd = launch_command(path, nproc)
        if log:
            print(f"[bigtrain-run] stage {st.name}: {' '.join(cmd)}", flush=True)
        rc = subprocess.run(cmd, check=False).returncode
        if rc != 0:
            return rc
        if st.recipe.train.export and not st.finished:
            raise BigtrainError(f"stage {st.name!r}: training exited cleanly but wrote no export at {st.export_dir}")
    if log and stages:
        root = stages[0].output_dir if len(stages) == 1 else stages[0].output_dir.parent
        print("\n".join(pipeline_summary(root, [(s.name, s.output_dir) for s in stages])), flush=True)
    return 0
