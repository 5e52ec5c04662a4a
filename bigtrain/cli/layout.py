"""`bigtrain-layout RECIPE_OR_MODEL.yaml [key=value ...] [--json] [--plot out.png]`: show a model's layout.

The file is a recipe (with a `model:` section) or just the model fields at top level. Overrides are dotted
recipe paths (`model.layout.scheme=crown`), also for a model-only file. A model that leaves `vocab_size`
to the tokenizer gets the size the trainer would give it: the recipe's `data.tokenizer` (a model-only file:
the default one, or 32,000 assumed, and said, when that is not at hand).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import NoReturn

from bigtrain.cli.common import run_cli
from bigtrain.config import Recipe, deep_merge, parse_overrides, read_yaml, validate_recipe
from bigtrain.data.tokenizer import tokenizer_vocab_size
from bigtrain.errors import BigtrainError
from bigtrain.report.layout import format_layout, layout_report, plot_layout
from bigtrain.train.model_config import model_vocab_size

PLOT_FORMATS = (".png", ".svg", ".pdf")


def load_recipe_file(path: str, overrides: list[str]) -> tuple[Recipe, bool]:
    """The validated recipe, and whether the file is one (else it holds only the model fields)."""
    data = read_yaml(path)
    is_recipe = "model" in data
    if not is_recipe:
        data = {"model": data}
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
    return validate_recipe(data, path), is_recipe


def vocab_of(recipe: Recipe, is_recipe: bool) -> tuple[int | None, str | None]:
    """(embedding rows, where they come from) as the trainer sizes them; (None, None) when the recipe sets
    `model.vocab_size`, or a model-only file's default tokenizer is not at hand (32,000 assumed)."""
    if recipe.model.vocab_size is not None:
        return None, None
    try:
        tokens = tokenizer_vocab_size(recipe.data)
    except BigtrainError:
        if is_recipe:  # the trainer would stop here too
            raise
        return None, None
    vocab = model_vocab_size(recipe.model, tokens)
    rounded = ", rounded up to a multiple of 64" if vocab != tokens else ""
    return vocab, f"the {tokens:,} tokens of {recipe.data.tokenizer}{rounded}"


def show(args: argparse.Namespace) -> int:
    if args.plot is not None and Path(args.plot).suffix.lower() not in PLOT_FORMATS:
        raise BigtrainError(f"--plot {args.plot}: use a file ending in {', '.join(PLOT_FORMATS)}")
    recipe, is_recipe = load_recipe_file(args.recipe, args.overrides)
    report = layout_report(recipe.model, *vocab_of(recipe, is_recipe))
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
