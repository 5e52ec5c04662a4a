"""`bigtrain-run RECIPE [key=value ...] [--nproc N] [--prepare-stage NAME]`: run a (staged) recipe here.

Without a flag, every unfinished stage runs in order (grown from the previous stage's export, launched
through the deepspeed launcher, resumed where it stopped), then the family table is printed. With
`--prepare-stage NAME`, only that stage is prepared (growth + `<output_dir>/<NAME>/stage.yaml`, whose path
is the last line printed) for a scheduler to launch. Overrides apply to every stage.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from bigtrain.cli.common import run_cli
from bigtrain.config import load_recipe
from bigtrain.errors import BigtrainError
from bigtrain.pipeline.family import family_table, format_family_table
from bigtrain.pipeline.runner import find_stage, prepare_stage, run_stages
from bigtrain.pipeline.stages import resolve_stages


def run(args: argparse.Namespace) -> int:
    if args.nproc is not None and args.nproc < 1:
        raise BigtrainError(f"--nproc {args.nproc}: must be >= 1")
    recipe = load_recipe(args.recipe, args.overrides)
    stages = resolve_stages(recipe, args.overrides, source=args.recipe)
    if args.prepare_stage is not None:
        print(prepare_stage(find_stage(stages, args.prepare_stage), stages))
        return 0
    rc = run_stages(stages, args.nproc)
    print(format_family_table(family_table(stages, args.independent_tokens)), flush=True)
    return rc


def main(argv: list[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(prog="bigtrain-run", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="a recipe YAML (flat or with stages:)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, applied to every stage")
    parser.add_argument("--nproc", type=int, default=None, help="ranks per stage (default: detected GPUs, or 1)")
    parser.add_argument("--prepare-stage", metavar="NAME", help="only prepare this stage; print its stage.yaml")
    parser.add_argument(
        "--independent-tokens",
        choices=["lineage", "stage", "by-size"],
        default="lineage",
        help="tokens an independently trained member gets: its lineage's (default), its stage's, or by size",
    )
    args = parser.parse_intermixed_args(argv)
    run_cli(lambda: run(args))


if __name__ == "__main__":
    main()
