"""bigtrain-grow CKPT_IN CKPT_OUT --op OP [sizes]: grow a checkpoint into a larger HF directory + growth.json.
`bigtrain-grow --list` prints the operators (bigtrain/growth/registry.py).

Exit codes: 0 grown; 1 --verify found a preserving operator that did not preserve the logits
(nothing written); 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys

from bigtrain.cli.common import run_cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bigtrain-grow",
        description="Grow a checkpoint (HF dir, stock LLaMA, bigtrain run dir or DeepSpeed ZeRO-3 dir) "
        "in depth and/or width with one depth and/or one width operator, composed with '+', e.g. "
        "stack+net2net, or into a Mixture-of-Experts (--op upcycle); --list shows them all.",
    )
    p.add_argument("ckpt_in", nargs="?", help="checkpoint to grow (never modified)")
    p.add_argument("ckpt_out", nargs="?", help="output HF directory (must not exist or be empty, unless --overwrite)")
    p.add_argument("--op", help="operator, or depth+width, e.g. stack, net2net, step+net2net (see --list)")
    p.add_argument("--list", action="store_true", help="print the operators (name, kind, options, reference) and exit")
    p.add_argument("--layers", type=int, help="target number of layers (depth operators)")
    p.add_argument("--hidden", type=int, help="target hidden size (width operators)")
    p.add_argument("--ffn", type=int, help="target reference FFN size; each layer's scales in proportion")
    p.add_argument("--heads", type=int, help="target reference query heads; each layer's scales in proportion")
    p.add_argument("--kv-heads", type=int, help="target reference kv heads (default: keep the query/kv ratio)")
    p.add_argument("--init", help="step: mean|copy|zero (default mean); mixture: orthogonal|copy|random|zero")
    p.add_argument("--seed", type=int, default=0, help="seed of the unit maps and random inits (default 0)")
    p.add_argument(
        "--split",
        choices=("asymmetric", "noise", "even"),
        help="net2net/aki replicas: asymmetric (LEMON, default: unequal exact split), noise (Net2Net), even (FPI)",
    )
    p.add_argument("--split-spread", type=float, help="asymmetric: fractions from U(1-s, 1+s), normalised (0.5)")
    p.add_argument("--noise-std", type=float, help="noise: relative std of the replicas' perturbation (0.01)")
    p.add_argument(
        "--placement",
        choices=("upper", "after-each"),
        help="step/zero-depth/random-depth: new layers in the upper gaps (default) or after each layer "
        "(zero-depth: a zeroed copy of each layer, G_zero)",
    )
    p.add_argument("--drop", type=int, help="dus: layers dropped from each of the two copies (SOLAR: 8 of 32)")
    p.add_argument("--block", type=int, help="middle-stack: layers in the replicated middle block (default N - L)")
    p.add_argument("--snr-db", type=float, help="hypercloning: SNR in dB of the function-keeping noise (default none)")
    p.add_argument("--experts", type=int, help="upcycle: copies of each FFN (E)")
    p.add_argument("--top-k", type=int, help="upcycle: experts per token (K; K*G with --granularity)")
    p.add_argument("--granularity", type=int, help="upcycle: shards per FFN copy, E*G experts of width d_f/G (1)")
    p.add_argument("--drop-ratio", type=float, help="upcycle: Drop-Upcycling, re-initialised share of each expert (0)")
    p.add_argument(
        "--router-init",
        choices=("normal", "zeros"),
        help="upcycle: router N(0, initializer_range) (default) or zeros (uniform routing)",
    )
    p.add_argument(
        "--optimizer",
        choices=("fresh", "carry"),
        default="fresh",
        help="carry: also grow a training checkpoint's Adam moments into CKPT_OUT/optimizer/ (default fresh)",
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="output dtype (default: the input's)")
    p.add_argument("--max-shard-mb", type=int, default=2048, help="output shard size in MiB (2048)")
    p.add_argument("--verify", action="store_true", help="compare source and grown logits on a batch")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty CKPT_OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if args.list:
        from bigtrain.growth.registry import table

        print(table())
        raise SystemExit(0)
    if args.ckpt_in is None or args.ckpt_out is None or args.op is None:
        p.error("CKPT_IN, CKPT_OUT and --op are required (or --list)")

    def body() -> int:
        from bigtrain.growth.api import VerificationError, describe, grow_checkpoint

        try:
            record = grow_checkpoint(
                args.ckpt_in,
                args.ckpt_out,
                op=args.op,
                overwrite=args.overwrite,
                verify=args.verify,
                dtype=args.dtype,
                max_shard_bytes=args.max_shard_mb * 1024**2,
                progress=False if args.no_progress else None,
                optimizer=args.optimizer,
                layers=args.layers,
                hidden=args.hidden,
                ffn=args.ffn,
                heads=args.heads,
                kv_heads=args.kv_heads,
                init=args.init,
                seed=args.seed,
                split=args.split,
                split_spread=args.split_spread,
                noise_std=args.noise_std,
                placement=args.placement,
                drop=args.drop,
                block=args.block,
                snr_db=args.snr_db,
                experts=args.experts,
                top_k=args.top_k,
                granularity=args.granularity,
                drop_ratio=args.drop_ratio,
                router_init=args.router_init,
            )
        except VerificationError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(describe(record))
        print(f"wrote {args.ckpt_out}")
        return 0

    run_cli(body)


if __name__ == "__main__":
    main()
