"""Compare a source and a grown model's logits on one batch (`bigtrain-grow --verify`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from bigtrain.model import BigTrainConfig, BigTrainForCausalLM

# |logit diff| allowed, relative to max(1, max |source logit|), by the dtype the grown weights are stored in:
# float32 only sees summation-order noise; 16-bit storage rounds every rescaled (net2net) weight.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def load_model(cfg: BigTrainConfig, tensors: Mapping[str, torch.Tensor]) -> BigTrainForCausalLM:
    """A float32 model on CPU holding exactly `tensors` (the LM head tied when the config says so)."""
    model = BigTrainForCausalLM(cfg).float().eval()
    state = {name: tensors[name].float() for name in tensors}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(n != "lm_head.weight" or not cfg.tie_word_embeddings for n in missing):
        raise ValueError(f"state dict does not fit the config: missing {missing}, unexpected {unexpected}")
    return model


def verification_batch(vocab_size: int, seed: int = 0, batch: int = 2, length: int = 64) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logit_difference(
    src_cfg: BigTrainConfig,
    src: Mapping[str, torch.Tensor],
    out_cfg: BigTrainConfig,
    out: Mapping[str, torch.Tensor],
    input_ids: torch.Tensor,
) -> tuple[float, float]:
    """(max |logit diff|, max |source logit|) on `input_ids`."""
    a = load_model(src_cfg, src)(input_ids).logits
    b = load_model(out_cfg, out)(input_ids).logits
    return (a - b).abs().max().item(), a.abs().max().item()
