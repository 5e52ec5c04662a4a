"""Data preparation and loading throughput, in one run on the same files.

1. tokens/s of `prepare_store` with 1 worker against a plain `tokenizers` batch-encode loop that writes
   the same tokens (BOS + ids + EOS per document, uint16) to one file (goal: >= 0.9x);
2. tokens/s with 1..W worker processes (W: the cores here, or --max-workers);
3. the data loader's share of a training step: fetching one global batch from a 2-source mixture
   (sampler + memory-mapped reads) against one forward/backward/AdamW step of the demo model in plain
   PyTorch on this machine (goal: < 1%);
4. projected hours to prepare 20B tokens on one 64-core node and on 64 such nodes.

    .venv/bin/python tools/bench/bench_data.py [--files 'data/shakespeare/train/*.txt'] [--repeat 2]

Each timing is the best of --repeat runs (the machine may be shared: say so when recording figures).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # 1 worker = 1 core, for both sides

from bigtrain.config import DataConfig
from bigtrain.data.prepare import default_workers, prepare_store, train_sources
from bigtrain.data.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[2]


def baseline(tokenizer_json: Path, files: list[str], bos: int, eos: int, out: Path) -> int:
    """What one would write by hand: `tokenizers` batch encoding, specials added, one flat file."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    n = 0
    with open(out, "wb") as f:
        for i in range(0, len(files), 256):
            docs = [Path(p).read_text(encoding="utf-8") for p in files[i : i + 256]]
            flat: list[int] = []
            for e in tok.encode_batch(docs, add_special_tokens=False):
                flat += [bos, *e.ids, eos]
            f.write(np.asarray(flat, dtype=np.uint16).tobytes())
            n += len(flat)
    return n


def best(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def loader_share(tokenizer, files: list[str], work: Path, steps: int) -> dict:
    import torch

    from bigtrain.config import load_recipe
    from bigtrain.data.dataset import prepare_run_data
    from bigtrain.data.sampler import make_sampler
    from bigtrain.model import BigTrainForCausalLM

    recipe = load_recipe(REPO / "recipes" / "demo.yaml", [])
    half = len(files) // 2
    cfg = DataConfig(
        sources=[{"name": "a", "files": files[:half], "weight": 3}, {"name": "b", "files": files[half:], "weight": 1}],
        tokenizer=recipe.data.tokenizer,
        seq_len=recipe.data.seq_len,
    )
    data = prepare_run_data(cfg, work / "cache")
    micro = recipe.train.micro_batch_size
    sampler = make_sampler(data.train, micro, 0)
    model = BigTrainForCausalLM(recipe.model.build_config(len(tokenizer)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    fetch, step = [], []
    for s in range(steps):
        t0 = time.perf_counter()
        batch = data.train.batch(sampler.micro_batch_indices(s, 0, 0, 1, micro))
        t1 = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        t2 = time.perf_counter()
        fetch.append(t1 - t0)
        step.append(t2 - t1)
    f, st = float(np.median(fetch[1:])), float(np.median(step[1:]))
    return {
        "batch": f"{micro} x {recipe.data.seq_len} tokens, demo model ({recipe.model.hidden_size} hidden, "
        f"{recipe.model.num_layers} layers), CPU",
        "fetch_ms": f * 1e3,
        "step_ms": st * 1e3,
        "share": f / (f + st),
        "fetch_us_per_sequence": f / micro * 1e6,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", default=str(REPO / "data" / "shakespeare" / "train" / "*.txt"))
    p.add_argument("--tokenizer", default=str(REPO / "data" / "tokenizer"))
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--max-workers", type=int, default=default_workers())
    p.add_argument("--steps", type=int, default=6, help="training steps for the loader share")
    args = p.parse_args()
    files = sorted(glob.glob(args.files))
    tok = load_tokenizer(args.tokenizer)
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        mb = sum(os.path.getsize(f) for f in files) / 2**20
        print(f"{len(files)} files, {mb:.1f} MiB; tokenizer {args.tokenizer}; {default_workers()} cores here")
        t_base, n_base = best(
            lambda: baseline(
                Path(args.tokenizer) / "tokenizer.json", files, tok.bos_token_id, tok.eos_token_id, work / "b.bin"
            ),
            args.repeat,
        )
        source = train_sources(DataConfig(train_files=files))[0]

        def ours(workers: int):
            def run():
                target = work / f"w{workers}"
                shutil.rmtree(target, ignore_errors=True)
                return prepare_store(source, tok, target, workers=workers, log=False)

            return run

        rows = {}
        for w in range(1, args.max_workers + 1):
            t, store = best(ours(w), args.repeat)
            rows[w] = store.meta.num_tokens / t
        store1 = prepare_store(source, tok, work / "w1", workers=1, log=False)
        same = bool(np.array_equal(store1.read(0, store1.meta.num_tokens), np.fromfile(work / "b.bin", np.uint16)))
        base_tps = n_base / t_base
        print(f"baseline (tokenizers batch-encode loop, 1 core): {base_tps:,.0f} tokens/s  ({n_base:,} tokens)")
        for w, tps in rows.items():
            print(
                f"prepare_store, {w} worker(s): {tps:,.0f} tokens/s  ({tps / base_tps:.2f}x baseline, "
                f"{tps / rows[1]:.2f}x 1 worker)"
            )
        print(f"identical tokens to the baseline: {same}")
        share = loader_share(tok, files, work, args.steps)
        print(
            f"loader: {share['fetch_ms']:.2f} ms per batch of {share['batch']}; step {share['step_ms']:.0f} ms; "
            f"share {share['share'] * 100:.3f}%  ({share['fetch_us_per_sequence']:.0f} us per sequence)"
        )
        per_core = rows[1]
        eff = (rows[max(rows)] / rows[1]) / max(rows)  # measured scaling efficiency, applied to 64 cores
        node = per_core * 64 * eff
        hours = 20e9 / node / 3600
        print(
            f"projection for 20B tokens: one 64-core node ~{hours:.1f} h; 64 nodes ~{hours / 64 * 60:.1f} min "
            f"({per_core:,.0f} tokens/s per core, scaling efficiency {eff:.2f} measured at {max(rows)} workers)"
        )
        print(
            json.dumps(
                {
                    "baseline_tps": base_tps,
                    "workers_tps": rows,
                    "identical": same,
                    "loader": share,
                    "hours_20b_one_node": hours,
                    "hours_20b_64_nodes": hours / 64,
                }
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
