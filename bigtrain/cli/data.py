"""`bigtrain-data prepare RECIPE [key=value ...] [--out DIR] [--workers W] [--shard I/N]`: tokenise a recipe's
data once into sharded, memory-mapped token directories (without --out: into the cache the trainer reads);
`bigtrain-data info DIR`: what a token directory holds. Train from one with `data.token_dir=DIR`."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from bigtrain.cli.common import run_cli
from bigtrain.errors import BigtrainError


def info(path: Path) -> int:
    from bigtrain.data.store import INDEX, SETTINGS, TokenStore, open_tokens

    if not (path / INDEX).is_file() and (path / SETTINGS).is_file():
        settings = json.loads((path / SETTINGS).read_text())
        done = len(list((path / "shards").glob("shard-*.json")))
        print(
            f"{path}: being prepared, {done} of {settings['num_units']} shards done (fingerprint {settings['fingerprint']})"
        )
        return 0
    store = open_tokens(path)
    m = store.meta
    print(f"{path}")
    print(f"  tokens     {m.num_tokens:,}")
    print(f"  documents  {m.num_documents:,}")
    print(f"  dtype      {m.dtype}")
    print(f"  tokenizer  {m.tokenizer} (vocab {m.vocab_size}, hash {getattr(m, 'tokenizer_hash', None)})")
    if isinstance(store, TokenStore):
        bos, eos = m.bos_token_id, m.eos_token_id
        print(f"  documents  marked by BOS={bos} EOS={eos}")
        print(f"  shards     {len(store.shards)} (fingerprint {m.fingerprint})")
        src = store.index["source"]
        what = f"{len(src['files'])} files" if "files" in src else f"dataset {src['dataset']} split {src['split']}"
        print(f"  source     {src['key']}: {what}")
        for f in src.get("files", [])[:5]:
            print(f"             {f[0]}")
        if len(src.get("files", [])) > 5:
            print(f"             ... {len(src['files']) - 5} more")
    else:
        print("  format     single file (tokens.bin, an earlier bigtrain)")
    return 0


def prepare(args: argparse.Namespace) -> int:
    from bigtrain.config import load_recipe
    from bigtrain.data.prepare import parse_part, prepare_token_dir
    from bigtrain.data.store import INDEX, SETTINGS
    from bigtrain.data.tokenizer import load_tokenizer

    part = parse_part(args.shard) if args.shard else (0, 1)
    if args.workers is not None and args.workers < 1:
        raise BigtrainError(f"--workers {args.workers}: must be >= 1")
    recipe = load_recipe(args.recipe, args.overrides)
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and any(out.iterdir()):
        ours = (out / SETTINGS).is_file() or any((d / SETTINGS).is_file() for d in out.iterdir() if d.is_dir())
        if args.overwrite:
            shutil.rmtree(out)
        elif not ours:
            raise BigtrainError(f"{out}: exists and is not empty (use --overwrite to replace it)")
    tokenizer = load_tokenizer(recipe.data.tokenizer)
    cache = Path(recipe.data.cache_dir or Path(recipe.output_dir) / "data")
    for path, store in prepare_token_dir(recipe.data, tokenizer, out, cache, args.workers, part):
        if store is None:
            print(f"{path}: part {part[0]}/{part[1]} done; the index is written when every part is")
        else:
            m = store.meta
            print(f"{path}: {m.num_tokens:,} tokens, {m.num_documents:,} documents, vocab {m.vocab_size}")
            assert (path / INDEX).is_file()
    return 0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bigtrain-data", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="tokenise and pack a recipe's data")
    prep.add_argument("recipe")
    prep.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    prep.add_argument("--out", default=None, help="token directory to write (default: the recipe's data cache)")
    prep.add_argument("--workers", type=int, default=None, help="tokenising processes (default: all cores)")
    prep.add_argument("--shard", default=None, metavar="I/N", help="prepare part I of N (one per machine)")
    prep.add_argument("--overwrite", action="store_true", help="replace an existing token directory")
    inf = sub.add_parser("info", help="what a token directory holds")
    inf.add_argument("dir")
    args = p.parse_args(argv)
    run_cli(lambda: info(Path(args.dir)) if args.command == "info" else prepare(args))


if __name__ == "__main__":
    main()
