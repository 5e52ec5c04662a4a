"""STEP (Yano et al., NAACL 2025): freeze the layers inherited from the previous stage, adapt them with LoRA
(peft), train the new layers fully; fold the adapters back into plain LLaMA weights for export.

Which layers are inherited is read from the growth record (`growth.json`) of the stage's `init_from`.
The adapters are injected in place (`peft.inject_adapter_in_model`), so the model keeps its class and its
forward; parameter names only gain `.base_layer` and `.lora_{A,B}.default` parts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from bigtrain.config import StepConfig
from bigtrain.errors import BigtrainError

ADAPTER = "default"
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_index(name: str) -> int | None:
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def trainable_in_step(name: str, inherited: set[int], step: StepConfig) -> bool:
    """Whether a base (LLaMA-named) parameter trains in a STEP stage. LoRA parameters always train."""
    i = layer_index(name)
    if i is not None:
        if i not in inherited:
            return True
        if step.freeze == "attention" and ".self_attn." not in name and not name.endswith("input_layernorm.weight"):
            return True  # the FFN side (MoE experts and router, their norm) trains
        return step.train_inherited_norms and name.endswith("layernorm.weight")
    if name.startswith("model.embed_tokens."):
        return step.train_embeddings
    # The final norm belongs to the output side: it trains with the LM head.
    return step.train_lm_head


def lora_shapes(
    layer_linears: Iterable[tuple[int, str, int, int]], inherited: set[int], step: StepConfig
) -> list[tuple[str, tuple[int, int]]]:
    """(name, shape) of every LoRA tensor, given (layer, LLaMA module name, in, out) of each linear."""
    out: list[tuple[str, tuple[int, int]]] = []
    if not step.lora:  # LLaMA Pro: frozen without adapters
        return out
    for layer, module, fan_in, fan_out in layer_linears:
        if layer in inherited and module.rsplit(".", 1)[-1] in step.lora_targets:
            out.append((f"{module}.lora_A.{ADAPTER}.weight", (step.lora_rank, fan_in)))
            out.append((f"{module}.lora_B.{ADAPTER}.weight", (fan_out, step.lora_rank)))
    return out


def read_inherited_layers(init_from: str | Path) -> set[int]:
    """Indices of the inherited layers, from `growth.json` in `init_from`."""
    from bigtrain.growth.record import read_growth_record

    path = Path(init_from)
    if not (path / "growth.json").is_file():
        raise BigtrainError(f"{path}: no growth.json (STEP needs to know which layers are inherited)")
    return set(read_growth_record(path).inherited_layers())


def apply_step(
    model: nn.Module, step_cfg: StepConfig, init_from: str | Path, inherited: set[int] | None = None
) -> nn.Module:
    """Freeze inherited layers, attach LoRA to their target projections (unless `lora: false`, LLaMA Pro),
    leave the rest trainable.

    Called after the weights are loaded and before `deepspeed.initialize`; works on a ZeRO-3 partitioned
    model (peft reads in/out features from the Linear modules, not from the partitioned weights). The new
    LoRA parameters are ordinary tensors; `deepspeed.initialize` partitions them with the rest.
    """
    if inherited is None:
        inherited = read_inherited_layers(init_from)
    n_layers = len(model.model.layers)  # type: ignore[union-attr]
    if not inherited:
        raise BigtrainError(f"{init_from}: growth.json marks no layer as inherited; STEP has nothing to freeze")
    if max(inherited) >= n_layers:
        raise BigtrainError(f"{init_from}: growth.json names layer {max(inherited)}, the model has {n_layers}")
    if step_cfg.lora:
        targets = matching_targets(model, inherited, step_cfg)
        config = LoraConfig(
            r=step_cfg.lora_rank,
            lora_alpha=step_cfg.lora_alpha if step_cfg.lora_alpha is not None else step_cfg.lora_rank,
            lora_dropout=step_cfg.lora_dropout,
            target_modules=targets,
            bias="none",
        )
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, p in model.named_parameters():
        is_lora = ".lora_" in name
        p.requires_grad_(is_lora or trainable_in_step(base_name(name), inherited, step_cfg))
    if not step_cfg.train_embeddings:
        # A frozen embedding gives the decoder inputs that do not require grad; under ZeRO-3 the backward
        # then reached a frozen layer's weights un-gathered (size-0 tensors; seen with lora: false). The
        # embedding output requiring grad (transformers' enable_input_require_grads) keeps every layer's
        # ZeRO-3 backward hooks in the graph; it only adds the input gradients of the frozen layers below
        # the first trainable one, which the FLOPs count (4 per frozen weight) already assumes.
        model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: out.requires_grad_(True))
    return model


def step_flops_change(model: nn.Module) -> float:
    """Training FLOPs per token a STEP stage differs by from the full-model count: a frozen weight matrix
    skips its weight gradient (4 FLOPs per weight and token, not 6), the LoRA factors train (6 each). The
    input embedding is a lookup, so freezing it saves nothing unless it is also the (tied) LM head."""
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    frozen = lora = 0
    for name, p in model.named_parameters():
        n, shape = int(getattr(p, "ds_numel", p.numel())), tuple(getattr(p, "ds_shape", p.shape))
        if ".lora_" in name:
            lora += n
        elif not p.requires_grad and len(shape) == 2 and (tied or not name.endswith("embed_tokens.weight")):
            frozen += n
    return -2.0 * frozen + 6.0 * lora


def matching_targets(model: nn.Module, inherited: set[int], step_cfg: StepConfig) -> list[str]:
    """Full module names to adapt: the target projections of the inherited layers (fails if none match)."""
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and layer_index(name + ".") in inherited
        and name.rsplit(".", 1)[-1] in step_cfg.lora_targets
    ]
    if not names:
        raise BigtrainError(f"step.targets {step_cfg.lora_targets} match no linear layer of the inherited layers")
    return names


def base_name(name: str) -> str:
    """The LLaMA name of a (possibly peft-wrapped) base parameter."""
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".")


def merge_block(tensors: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """Fold LoRA into base weights (W + scale * B @ A, in float32) and return LLaMA-named tensors.

    `tensors` are full (gathered) tensors named as in `model.named_parameters()` of the adapted model;
    `scale` is the stage's `StepConfig.scale` (alpha / rank).
    """
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if ".lora_" in name:
            continue
        out[base_name(name)] = t
    for name, a in tensors.items():
        if f".lora_A.{ADAPTER}." not in name:
            continue
        module = name.split(".lora_A.")[0]
        b = tensors.get(f"{module}.lora_B.{ADAPTER}.weight")
        base = base_name(f"{module}.base_layer.weight")
        if b is None or base not in out:
            raise BigtrainError(f"merge_block: {module} has lora_A but no lora_B or base weight in this block")
        w = out[base]
        out[base] = (w.float() + scale * (b.float() @ a.float())).to(w.dtype)
    return out
