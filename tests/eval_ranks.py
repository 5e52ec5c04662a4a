"""Launched by test_eval_ranks.py at 1 rank (plain python) and 2 ranks (`deepspeed --num_gpus 2`): the held-out
loss of one set of seeded weights on the real demo eval split, through ZeRO-3 and `train.evaluate`, for a few
(micro batch, eval_batches) pairs; rank 0 writes them as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import deepspeed

from bigtrain.config import Recipe
from bigtrain.data.dataset import prepare_run_data
from bigtrain.model import BigTrainForCausalLM
from bigtrain.train.build import on_main_first, weight_decay_groups
from bigtrain.train.distributed import init_distributed
from bigtrain.train.evaluate import evaluate
from bigtrain.train.fast_path import plan_engine, prepare_model
from bigtrain.train.model_config import resolve_model_config
from bigtrain.train.weights import initialize_weights

# (micro_batch_size, eval_batches): 3 sequences split 2 + 1 over two ranks; 6 in unequal micro batches; more
# batches than the held-out set has (all of it)
CASES = [(3, 1), (4, 2), (2, 10_000)]


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    demo, cache, out_file = Path(args[0]), Path(args[1]), Path(args[2])
    world = init_distributed()
    train = demo / "shakespeare" / "train"
    recipe = Recipe.model_validate(
        {
            "model": {"hidden_size": 64, "num_layers": 2, "head_dim": 32, "num_heads": 2, "num_kv_heads": 1},
            "data": {
                "train_files": [str(train / f) for f in ("macbeth_gut.txt", "othello_gut.txt")],
                "tokenizer": str(demo / "tokenizer"),
                "seq_len": 64,
                "eval_fraction": 0.05,
            },
            "train": {"micro_batch_size": 1, "precision": "fp32", "zero_stage": 3, "global_batch_size": 2},
        }
    )
    data = on_main_first(world, lambda: prepare_run_data(recipe.data, cache))
    model_cfg = resolve_model_config(recipe, data.vocab_size)
    ds_config, _ = plan_engine(recipe, world.size, model_cfg)
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = BigTrainForCausalLM(model_cfg)
    initialize_weights(model, 1234, world.rank)  # the same weights at any world size
    prepare_model(model, recipe, zero3=True)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=weight_decay_groups(model, 0.1), config=ds_config)
    scores = {f"{m}x{b}": evaluate(engine, data.eval, world, m, b)["eval_loss"] for m, b in CASES}
    if world.rank == 0:
        out_file.write_text(json.dumps({"held_out": data.eval.count, "eval_loss": scores}))


if __name__ == "__main__":
    main()
