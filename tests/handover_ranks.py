"""Launched by test_handover.py on N ranks: build the grown model's bf16 ZeRO-3 engine from a grown checkpoint
as the trainer does (load_weights, deepspeed.initialize, load_handover) and save it at once, so the test can
read back what every rank's partitions hold: fp32 masters, Adam moments, step."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import deepspeed

from bigtrain.ckpt.source import open_checkpoint
from bigtrain.config import Recipe
from bigtrain.model import BigTrainForCausalLM
from bigtrain.train.build import weight_decay_groups
from bigtrain.train.distributed import init_distributed
from bigtrain.train.fast_path import plan_engine
from bigtrain.train.handover import load_handover
from bigtrain.train.weights import load_weights


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    init_dir, out_dir = Path(args[0]), Path(args[1])
    world = init_distributed()
    source = open_checkpoint(init_dir)
    recipe = Recipe.model_validate({"train": {"precision": "bf16", "zero_stage": 3, "micro_batch_size": 1}})
    ds_config, _ = plan_engine(recipe, world.size, source.config)
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = BigTrainForCausalLM(source.config)
    load_weights(model, source, world.rank)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=weight_decay_groups(model, 0.1), config=ds_config)
    info = load_handover(engine, init_dir, world)
    engine.save_checkpoint(str(out_dir), tag="step_0")
    if world.rank == 0:
        (out_dir / "handover.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main()
