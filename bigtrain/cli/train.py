"""Train one stage: `deepspeed bigtrain/train.py [--recipe R.yaml] [key=value ...]` or `bigtrain-train`.

Also runs under torchrun, srun (SLURM_* env) or plain python (a group of one). Exit codes: 0 done,
2 bad input (one line on stderr), 3 saved a checkpoint on a signal (rerun to resume).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="recipe YAML (default: recipes/demo.yaml)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help="set by the deepspeed launcher")
    p.add_argument("overrides", nargs="*", help="key=value overrides of recipe fields (dotted paths)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from bigtrain.train.preemption import EXIT_PREEMPTED, PreemptionFlag

    preemption = PreemptionFlag()  # first: a scheduler's signal during start-up must not kill the rank
    args = parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    from bigtrain.cli.common import USER_ERRORS
    from bigtrain.config import load_recipe

    is_main = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"
    try:
        recipe = load_recipe(args.recipe, args.overrides)  # before any process group: bad recipes fail fast
        from bigtrain.train.preflight import preflight

        preflight(recipe)
        from bigtrain.train.loop import train  # imports DeepSpeed: only once the inputs are known good

        result = train(recipe, preemption=preemption)
    except USER_ERRORS as e:
        if is_main:
            print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    finally:
        if "bigtrain.train.distributed" in sys.modules:  # a process group may exist: close it before exit
            sys.modules["bigtrain.train.distributed"].shutdown_distributed()
    return EXIT_PREEMPTED if result.get("status") == "preempted" else 0


if __name__ == "__main__":
    raise SystemExit(main())
