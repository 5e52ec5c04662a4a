"""Open any checkpoint bigtrain accepts as a lazy, read-only mapping of LLaMA parameter names to tensors.

Accepted: an HF directory (`config.json` with `model_type` `llama`, `mixtral` (per-expert tensors, read under
bigtrain's names) or `bigtrain`, safetensors sharded or not: a bigtrain export or a stock transformers
checkpoint); a bigtrain run `output_dir` (its
newest checkpoint, named by `checkpoints/latest`); a DeepSpeed ZeRO-3 save directory (with a
`latest` file) or one of its tag directories, saved with any number of ranks. A training checkpoint
with a manifest must verify (files and sizes, checksums when recorded). Every tensor the config
implies is checked for presence and shape before anything is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, MixtralConfig

from bigtrain.ckpt.manifest import has_manifest, manifest_problem
from bigtrain.ckpt.safetensors_reader import SafetensorsFile
from bigtrain.ckpt.safetensors_writer import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from bigtrain.ckpt.zero3 import Zero3Checkpoint, is_zero3_dir
from bigtrain.errors import BigtrainError
from bigtrain.model.configuration import BigTrainConfig, architecture_problems
from bigtrain.model.mixtral import bigtrain_name, from_mixtral_config
from bigtrain.model.param_shapes import expected_shapes

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
)


def _config_errors() -> tuple[type[Exception], ...]:
    """What transformers raises on a config it refuses: plain errors, and (transformers 5) the strict
    dataclass validation of huggingface_hub, e.g. a head count that does not divide the hidden size."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # an older huggingface_hub: no strict configs
        return (TypeError, ValueError, KeyError, AttributeError)
    return (TypeError, ValueError, KeyError, AttributeError, StrictDataclassError)


def read_config(path: Path) -> tuple[BigTrainConfig, str]:
    """(config, model_type) of a directory's config.json (`llama`, `mixtral` or `bigtrain`)."""
    file = path / "config.json"
    if not file.is_file():
        raise BigtrainError(f"{path}: no config.json")
    try:
        raw = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BigtrainError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise BigtrainError(f"{file}: not a config (a JSON object), got {type(raw).__name__}")
    model_type = raw.get("model_type")
    try:
        if model_type == "llama":
            cfg = BigTrainConfig.from_llama_config(LlamaConfig.from_pretrained(path))
        elif model_type == "bigtrain":
            cfg = BigTrainConfig.from_pretrained(path)
        elif model_type == "mixtral":
            cfg = from_mixtral_config(MixtralConfig.from_pretrained(path))
        else:
            raise BigtrainError(f"{file}: model_type {model_type!r} is not supported (llama, mixtral or bigtrain)")
    except _config_errors() as e:
        reason = e.__cause__ or e  # the strict validators wrap the ValueError that says what is wrong
        raise BigtrainError(f"{file}: invalid config ({str(reason).strip().splitlines()[0]})") from None
    problems = architecture_problems(cfg)
    if problems:
        raise BigtrainError(f"{file}: {problems[0]}")
    return cfg, model_type


@dataclass
class CheckpointSource(Mapping[str, torch.Tensor]):
    """A checkpoint's tensors, read from disk on access (each access reads again: callers keep what they need)."""

    path: Path  # what the user named
    weights_dir: Path  # the directory actually read (HF dir or ZeRO-3 tag dir)
    kind: str  # "hf" | "zero3"
    model_type: str  # "llama" | "bigtrain"
    config: BigTrainConfig
    tokenizer_dir: Path | None
    _read: object = None  # name -> tensor
    _read_rows: object = None  # (name, start, stop) -> rows of the tensor
    _shapes: dict | None = None
    _dtype: torch.dtype = torch.float32
    zero3: Zero3Checkpoint | None = None  # a training checkpoint: its Adam moments can be read too

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._shapes:
            raise KeyError(name)
        return self._read(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of a tensor, read without reading the rest (big embeddings in blocks)."""
        if name not in self._shapes:
            raise KeyError(name)
        return self._read_rows(name, start, stop)

    def optimizer_state(self, key: str) -> OptimizerState:
        """The optimizer's per-parameter state `key` (`exp_avg`, `exp_avg_sq`) as a mapping like this one."""
        if self.zero3 is None:
            raise BigtrainError(
                f"{self.path}: an {self.kind} checkpoint holds no optimizer state (a training checkpoint does)"
            )
        return OptimizerState(self, key)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the stored weights (fp32 for ZeRO-3 master weights)."""
        return self._dtype

    @property
    def nbytes(self) -> int:
        n = 0
        for s in self._shapes.values():
            k = 1
            for x in s:
                k *= x
            n += k
        return n * self._dtype.itemsize


class OptimizerState(Mapping[str, torch.Tensor]):
    """One optimizer state of a training checkpoint, keyed and shaped like its weights, read on access."""

    def __init__(self, source: CheckpointSource, key: str) -> None:
        self.source, self.key = source, key

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.rows(name, 0, self.source.shape(name)[0])

    def __iter__(self) -> Iterator[str]:
        return iter(self.source)

    def __len__(self) -> int:
        return len(self.source)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        if name not in self.source:
            raise KeyError(name)
        return self.source.zero3.read_rows(name, start, stop, self.key)  # type: ignore[union-attr]


def _check(cfg: BigTrainConfig, available: Mapping[str, tuple[int, ...]], where: Path) -> dict:
    shapes = expected_shapes(cfg)
    for name, shape in shapes.items():
        if name not in available:
            raise BigtrainError(f"{where}: missing tensor {name}")
        if tuple(available[name]) != shape:
            raise BigtrainError(f"{where}: {name} has shape {tuple(available[name])}, config implies {shape}")
    return shapes


def _open_hf(path: Path, user_path: Path) -> CheckpointSource:
    cfg, model_type = read_config(path)
    index = path / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise BigtrainError(f"{index}: corrupt index ({e})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise BigtrainError(f"{index}: corrupt index (weight_map is not a map of tensor names to files)")
        files = {}
        for fname in sorted(set(weight_map.values())):
            if not (path / fname).is_file():
                raise BigtrainError(f"{path}: shard {fname} named in the index is missing")
            files[fname] = SafetensorsFile(path / fname)
        by_name = {n: files[f] for n, f in weight_map.items() if n in files[f].entries}
    elif (path / SAFE_WEIGHTS_NAME).is_file():
        one = SafetensorsFile(path / SAFE_WEIGHTS_NAME)
        by_name = dict.fromkeys(one.keys(), one)
    elif any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise BigtrainError(f"{path}: only safetensors weights are read; convert *.bin / *.pt with transformers first")
    else:
        raise BigtrainError(f"{path}: no model.safetensors or {SAFE_WEIGHTS_INDEX_NAME}")
    key = {n: n for n in by_name}  # bigtrain name -> the name in the file
    if model_type == "mixtral":
        if any(n.endswith("experts.gate_up_proj") for n in by_name):
            raise BigtrainError(
                f"{path}: fused Mixtral experts (mlp.experts.gate_up_proj) are not read; save it with per-expert "
                "tensors (block_sparse_moe.experts.N.w1/w2/w3) as bigtrain's export does"
            )
        key = {bigtrain_name(n): n for n in by_name}
        by_name = {b: by_name[n] for b, n in key.items()}
    shapes = _check(cfg, {n: f.shape(key[n]) for n, f in by_name.items()}, path)
    for name in shapes:  # weights are floats: an integer tensor is a broken file, not something to cast
        if not by_name[name].dtype(key[name]).is_floating_point:
            kind = str(by_name[name].dtype(key[name])).removeprefix("torch.")
            raise BigtrainError(f"{path}: {name} is stored as {kind}, weights must be floating point")
    dtypes = {by_name[n].dtype(key[n]) for n in shapes}
    dtype = torch.float32 if len(dtypes) != 1 else dtypes.pop()
    tok = path if any((path / f).is_file() for f in TOKENIZER_FILES[:2]) else None
    return CheckpointSource(
        user_path,
        path,
        "hf",
        model_type,
        cfg,
        tok,
        lambda n: by_name[n].read(key[n]),
        lambda n, a, b: by_name[n].read_rows(key[n], a, b),
        shapes,
        dtype,
    )


def _latest_tag(save_dir: Path) -> Path:
    tag = (save_dir / "latest").read_text().strip()
    tag_dir = save_dir / tag
    if not tag_dir.is_dir():
        raise BigtrainError(f"{save_dir / 'latest'} names {tag!r} but {tag_dir} does not exist")
    return tag_dir


def _open_zero3(tag_dir: Path, user_path: Path, run_dir: Path | None) -> CheckpointSource:
    # a bigtrain training checkpoint carries a manifest: refuse one that lost or cut a file since
    # (one without, from an older bigtrain or plain DeepSpeed, is read as it is: the shard checks below)
    if has_manifest(tag_dir):
        problem = manifest_problem(tag_dir)
        if problem:
            raise BigtrainError(f"checkpoint {tag_dir.name} fails verification: {problem}")
    config_dirs = [tag_dir, tag_dir.parent] + ([run_dir / "hf", run_dir] if run_dir else [])
    cfg_dir = next((d for d in config_dirs if (d / "config.json").is_file()), None)
    if cfg_dir is None:
        raise BigtrainError(f"{tag_dir}: no config.json next to the DeepSpeed checkpoint")
    cfg, model_type = read_config(cfg_dir)
    ckpt = Zero3Checkpoint(tag_dir)
    available = dict(ckpt.shapes)
    for alias, src in ckpt.aliases.items():
        if src in available:
            available[alias] = available[src]
    shapes = _check(cfg, available, tag_dir)
    tok = None
    for d in [tag_dir, *([run_dir / "tokenizer", run_dir / "hf"] if run_dir else [])]:
        if any((d / f).is_file() for f in TOKENIZER_FILES[:2]):
            tok = d
            break
    return CheckpointSource(
        user_path, tag_dir, "zero3", model_type, cfg, tok, ckpt.read, ckpt.read_rows, shapes, torch.float32, ckpt
    )


def open_checkpoint(path: str | Path) -> CheckpointSource:
    """Open an HF dir, a bigtrain run dir, a DeepSpeed save dir (with `latest`) or a ZeRO-3 tag dir."""
    user_path = Path(path)
    if not user_path.exists():
        raise BigtrainError(f"{user_path}: no such checkpoint")
    if not user_path.is_dir():
        raise BigtrainError(f"{user_path}: a checkpoint is a directory")
    p = user_path.resolve()
    if (p / "checkpoints" / "latest").is_file():
        return _open_zero3(_latest_tag(p / "checkpoints"), user_path, p)
    if (p / "latest").is_file() and not is_zero3_dir(p):
        run_dir = p.parent if p.name == "checkpoints" else None
        return _open_zero3(_latest_tag(p), user_path, run_dir)
    if is_zero3_dir(p):
        run_dir = p.parent.parent if p.parent.name == "checkpoints" else None
        return _open_zero3(p, user_path, run_dir)
    if (p / "config.json").is_file():
        return _open_hf(p, user_path)
    if (p / "checkpoints").is_dir():
        raise BigtrainError(f"{user_path}: a run directory without checkpoints/latest (no checkpoint saved yet?)")
    raise BigtrainError(
        f"{user_path}: not a checkpoint (no config.json, no DeepSpeed checkpoint, no checkpoints/latest)"
    )
