"""`bigtrain-data prepare RECIPE [key=value ...] --out DIR`: tokenise a recipe's data once into a
memory-mapped token directory; train from it with `data.token_dir=DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from bigtrain.cli.common import run_cli
from bigtrain.errors import BigtrainError


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bigtrain-data", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="tokenise and pack a recipe's data")
    prep.add_argument("recipe")
    prep.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    prep.add_argument("--out", required=True, help="token directory to write")
    prep.add_argument("--overwrite", action="store_true", help="replace an existing token directory")
    args = p.parse_args(argv)

    def body() -> int:
        from bigtrain.config import load_recipe
        from bigtrain.data.prepare import prepare_token_dir
        from bigtrain.data.tokenizer import load_tokenizer

        recipe = load_recipe(args.recipe, args.overrides)
        out = Path(args.out)
        if out.exists() and any(out.iterdir()) and not args.overwrite:
            raise BigtrainError(f"{out}: exists and is not empty (use --overwrite to replace it)")
        tokenizer = load_tokenizer(recipe.data.tokenizer)
        for tf in prepare_token_dir(recipe.data, tokenizer, out):
            m = tf.meta
            print(f"{tf.path}: {m.num_tokens:,} tokens, {m.num_documents:,} documents, vocab {m.vocab_size}")
        return 0

    run_cli(body)


if __name__ == "__main__":
    main()
