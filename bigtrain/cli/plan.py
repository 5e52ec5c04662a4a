"""`bigtrain-plan RECIPE [key=value ...] --budget-gb 40 [--world-size N] [--stages K] [--json]`: predict the
per-rank peak memory of every stage, and search STEP's stage sizes against vanilla training."""

from __future__ import annotations

import argparse
import json
from typing import NoReturn

from bigtrain.cli.common import run_cli
from bigtrain.config import load_recipe
from bigtrain.errors import BigtrainError
from bigtrain.pipeline.planner import GIB, format_plan, plan_recipe


def plan(args: argparse.Namespace) -> int:
    if args.world_size < 1:
        raise BigtrainError(f"--world-size {args.world_size}: must be >= 1")
    recipe = load_recipe(args.recipe, args.overrides)
    budget = int(args.budget_gb * GIB) if args.budget_gb is not None else None
    result = plan_recipe(recipe, args.world_size, budget, args.stages, args.precision, source=args.recipe)
    print(json.dumps(result.as_json(), indent=1) if args.json else format_plan(result))
    return 0


def main(argv: list[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(prog="bigtrain-plan", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="a recipe YAML (flat or with stages:)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (dotted recipe paths)")
    parser.add_argument("--budget-gb", type=float, default=None, help="per-rank memory budget in GiB")
    parser.add_argument("--world-size", type=int, default=1, help="ranks ZeRO-3 partitions over (default 1)")
    parser.add_argument("--stages", type=int, default=None, help="STEP stages to search (default: the recipe's)")
    parser.add_argument(
        "--precision",
        choices=["bf16", "fp16", "fp32"],
        default=None,
        help="default: the recipe's; auto is bf16",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_intermixed_args(argv)
    run_cli(lambda: plan(args))


if __name__ == "__main__":
    main()
