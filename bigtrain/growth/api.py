"""`grow_checkpoint`: read any accepted checkpoint, grow it, write an HF directory + growth.json atomically."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bigtrain.ckpt.atomic import atomic_directory
from bigtrain.ckpt.safetensors_writer import StreamingSafetensorsWriter
from bigtrain.ckpt.source import TOKENIZER_FILES, CheckpointSource, open_checkpoint
from bigtrain.errors import BigtrainError
from bigtrain.growth.grow import grow, grow_optimizer_state
from bigtrain.growth.record import GROWTH_RECORD_NAME, GrowthRecord
from bigtrain.growth.verify import TOLERANCE, logit_difference, verification_batch
from bigtrain.model import BigTrainConfig
from bigtrain.model.mixtral import hf_config, hf_name, is_mixtral
from bigtrain.model.param_shapes import expected_shapes

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_SHARD_BYTES = 2 * 1024**3  # output shard size; the streaming writer buffers nothing
OPTIMIZER_DIR = "optimizer"  # a carried optimizer state inside a grown checkpoint
OPTIMIZER_STATE = "state.json"
MOMENTS = ("exp_avg", "exp_avg_sq")


class VerificationError(BigtrainError):
    """The grown model's logits differ from the source's although the operator claims preservation."""


def write_config(cfg: BigTrainConfig, out_dir: Path, dtype: torch.dtype) -> None:
    """A uniform model as a stock LLaMA config (plain transformers loads it), an MoE one Mixtral holds as a
    stock Mixtral config (its tensors under Mixtral's names: `hf_name`), otherwise `bigtrain`."""
    config = hf_config(cfg)[0] if cfg.is_uniform or is_mixtral(cfg) else cfg
    config.dtype = str(dtype).removeprefix("torch.")
    config.save_pretrained(out_dir)


def copy_tokenizer(src: CheckpointSource, out_dir: Path) -> list[str]:
    copied = []
    if src.tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            f = src.tokenizer_dir / name
            if f.is_file():
                shutil.copy2(f, out_dir / name)
                copied.append(name)
    return copied


def _check_output(ckpt_in: Path, ckpt_out: Path, overwrite: bool) -> None:
    src, dst = ckpt_in.resolve(), ckpt_out.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise BigtrainError(f"{ckpt_out}: the output must lie outside the input checkpoint {ckpt_in}")
    if dst.exists() and not dst.is_dir():
        raise BigtrainError(f"{ckpt_out}: exists and is not a directory")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise BigtrainError(f"{ckpt_out}: exists and is not empty (pass --overwrite to replace it)")


def grow_checkpoint(
    ckpt_in: str | Path,
    ckpt_out: str | Path,
    *,
    op: str | Sequence[str],
    overwrite: bool = False,
    verify: bool = False,
    dtype: str | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool | None = None,
    verify_ids: torch.Tensor | None = None,
    optimizer: str = "fresh",
    **op_args: Any,
) -> GrowthRecord:
    """Grow `ckpt_in` into the HF directory `ckpt_out`; op_args as the CLI flags (layers, hidden, ffn,
    heads, kv_heads, init, seed). Returns the growth record also written to `ckpt_out/growth.json`.

    With `verify`, the source and grown models run on `verify_ids` (default: a seeded random batch) and
    a preserving operator whose logits differ beyond tolerance raises `VerificationError`: nothing is
    written then. `progress=None` shows a bar on a terminal only. `optimizer="carry"` (a training
    checkpoint as input) also grows its Adam moments into `ckpt_out/optimizer/` (see `write_moments`).
    """
    ckpt_in, ckpt_out = Path(ckpt_in), Path(ckpt_out)
    src = open_checkpoint(ckpt_in)
    _check_output(ckpt_in, ckpt_out, overwrite)
    if dtype is not None and dtype not in DTYPES:
        raise BigtrainError(f"--dtype {dtype} is not one of {', '.join(DTYPES)}")
    out_dtype = DTYPES[dtype] if dtype else src.dtype
    if optimizer not in ("fresh", "carry"):
        raise BigtrainError(f"--optimizer {optimizer}: one of fresh, carry")
    if optimizer == "carry":
        src.optimizer_state(MOMENTS[0])  # refuses an HF directory before anything is written
        adam_step = src.zero3.adam_step()  # type: ignore[union-attr]
    grown = grow(src.config, src, op, **op_args)
    record = grown.record
    record.source = {"path": str(ckpt_in.resolve()), "kind": src.kind, "weights": str(src.weights_dir)}
    record.extra["dtype"] = str(out_dtype).removeprefix("torch.")
    with atomic_directory(ckpt_out, overwrite=True) as tmp:  # emptiness / --overwrite checked above
        rename = hf_name(grown.config)
        plan = [(rename(name), shape, out_dtype) for name, shape in expected_shapes(grown.config).items()]
        writer = StreamingSafetensorsWriter(tmp, plan, max_shard_bytes=max_shard_bytes)
        disable = None if progress is None else not progress
        for name, blocks in tqdm(grown.blocks, total=grown.num_tensors, desc="grow", unit="tensor", disable=disable):
            for block in blocks:
                writer.write(rename(name), block.to(out_dtype))
        writer.close()
        if optimizer == "carry":
            write_moments(src, tmp / OPTIMIZER_DIR, op, op_args, adam_step, max_shard_bytes)
            record.extra["optimizer"] = "carry"
        write_config(grown.config, tmp, out_dtype)
        record.extra["tokenizer_files"] = copy_tokenizer(src, tmp)
        if verify:
            record.verify = _verify(src, tmp, grown.config, record, verify_ids, out_dtype)
        (tmp / GROWTH_RECORD_NAME).write_text(record.to_json())
    return record


class _Sqrt(Mapping[str, torch.Tensor]):
    """exp_avg_sq grows as its square root (a copy scaled by c has its second moment scaled by c^2)."""

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        self.state = state

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.state[name].clamp_min(0).sqrt()

    def __iter__(self) -> Iterator[str]:
        return iter(self.state)

    def __len__(self) -> int:
        return len(self.state)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self.state.rows(name, start, stop).clamp_min(0).sqrt()  # type: ignore[attr-defined]


def write_moments(
    src: CheckpointSource, out: Path, op: str | Sequence[str], op_args: dict[str, Any], step: int, shard_bytes: int
) -> None:
    """`out/<exp_avg|exp_avg_sq>/` (fp32 safetensors, keyed like the weights) and `out/state.json` (Adam's
    step count): what the next stage's trainer loads as its optimizer state (bigtrain.train.handover)."""
    for key in MOMENTS:
        state = src.optimizer_state(key)
        grown = grow_optimizer_state(src.config, _Sqrt(state) if key == "exp_avg_sq" else state, op, **op_args)
        rename = hf_name(grown.config)
        plan = [(rename(name), shape, torch.float32) for name, shape in expected_shapes(grown.config).items()]
        (out / key).mkdir(parents=True)
        writer = StreamingSafetensorsWriter(out / key, plan, max_shard_bytes=shard_bytes)
        for name, blocks in grown.blocks:
            for block in blocks:
                writer.write(rename(name), block.float().square() if key == "exp_avg_sq" else block.float())
        writer.close()
        write_config(grown.config, out / key, torch.float32)  # each a checkpoint of the grown shape
    (out / OPTIMIZER_STATE).write_text(json.dumps({"step": step, "keys": list(MOMENTS), "source": str(src.path)}))


def _verify(
    src: CheckpointSource,
    out_dir: Path,
    out_cfg: BigTrainConfig,
    record: GrowthRecord,
    ids: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> dict[str, Any]:
    grown = open_checkpoint(out_dir)
    ids = ids if ids is not None else verification_batch(min(src.config.vocab_size, out_cfg.vocab_size))
    diff, scale = logit_difference(src.config, src, out_cfg, grown, ids)
    tol = TOLERANCE[out_dtype] * max(1.0, scale)
    result = {
        "max_abs_logit_diff": diff,
        "max_abs_source_logit": scale,
        "tolerance": tol,
        "tokens": int(ids.numel()),
        "function_preserving": record.function_preserving,
        "passed": diff <= tol or not record.function_preserving,
    }
    if not result["passed"]:
        raise VerificationError(
            f"--verify: {record.op} claims function preservation but max |logit diff| = {diff:.3g} > {tol:.3g}"
        )
    return result


def describe(record: GrowthRecord) -> str:
    """A short human summary of a growth (printed by the CLI)."""
    s, t = record.source_config, record.target_config
    lines = [
        f"{record.op}: {s['num_hidden_layers']} -> {t['num_hidden_layers']} layers, hidden {s['hidden_size']} -> "
        f"{t['hidden_size']}, FFN {s['intermediate_size']} -> {t['intermediate_size']}, heads "
        f"{s['num_attention_heads']}/{s['num_key_value_heads']} -> {t['num_attention_heads']}/{t['num_key_value_heads']}",
        f"inherited layers {record.inherited_layers()}, new layers {record.new_layers()}",
    ]
    if t.get("moe"):
        lines.append(
            f"MoE: {t['moe']['num_experts']} experts of width {t['intermediate_size']}, top-{t['moe']['top_k']}"
        )
    if record.verify:
        v = record.verify
        claim = "claims preservation" if v["function_preserving"] else "not function-preserving"
        lines.append(
            f"verify: max |logit diff| = {v['max_abs_logit_diff']:.3g} ({claim}; tolerance {v['tolerance']:.3g})"
        )
    return "\n".join(lines)
