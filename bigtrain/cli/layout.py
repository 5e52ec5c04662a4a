"""`bigtrain-layout RECIPE_OR_MODEL.yaml [key=value ...] [--json] [--plot out.png]`: show a model's layout.

The file is a recipe (with a `model:` section) or just the model fields at top level. Overrides are dotted
recipe paths (`model.layout.scheme=crown`), also for a model-only file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import NoReturn

from bigtrain.cli.common import run_cli
from bigtrain.config import ModelSpec, deep_merge, parse_overrides, read_yaml, validate_recipe
from bigtrain.errors import BigtrainError
from bigtrain.report.layout import format_layout, layout_report, plot_layout

PLOT_FORMATS = (".png", ".svg", ".pdf")


def load_model_spec(path: str, overrides: list[str]) -> ModelSpec:
    """The validated `model:` section of a recipe, or of a file holding only the model fields."""
    data = read_yaml(path)
    if "model" not in data:
        data = {"model": data}
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
    return validate_recipe(data, path).model


def show(args: argparse.Namespace) -> int:
    if args.plot is not None and Path(args.plot).suffix.lower() not in PLOT_FORMATS:
        raise BigtrainError(f"--plot {args.plot}: use a file ending in {', '.join(PLOT_FORMATS)}")
    report = layout_report(load_model_spec(args.recipe, args.overrides))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_layout(report))
    if args.plot is not None:
        plot_layout(report, args.plot)
    return 0


def main(argv: list[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(prog="bigtrain-layout", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="a recipe YAML or a YAML of model fields")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (dotted recipe paths)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--plot", metavar="OUT", help="draw per-layer widths to this .png/.svg/.pdf")
    args = parser.parse_args(argv)
    run_cli(lambda: show(args))


if __name__ == "__main__":
    main()
