"""`hypercloning`: HyperCloning (Samragh et al. 2024, arXiv 2409.12903; apple/ml-hypercloning) for Llama.

Width x n: the grown model's hidden state is n tiled copies of the source's, h' = [h, h, ..., h], and
its logits equal the source's. As the authors' `clone_llama` (hypercloning/llama_cloning.py,
common.py, gemma_cloning.py, read for this; not vendored) does it, every weight is the source's tiled
in blocks, W' = W.repeat(r_out, r_in), divided by r_in (its input repeats), except the embedding (tiled,
not divided: the stream is tiled, so its RMS is unchanged and every RMSNorm sees the same scale); norm
gains are tiled. Query and kv heads tile with the hidden size (head_dim fixed), so query head
t H + i uses kv head t K + i // (H / K), a copy of its source kv head; a source with one kv head keeps
one. FFN width x m independently (`--ffn`). Sizes: `--hidden n d` (an integer multiple), `--ffn m F`,
`--heads` / `--kv-heads` default to n H / n K (1 stays 1) and must be those.

Symmetry breaking (the authors' `snr_db`): `--snr-db s` adds noise at an SNR of s dB to pairs of column
blocks of the cloned q/k/v/o/gate/up/down weights, +N to block 2k and -N to block 2k+1 of each row block
(one head's rows for q/k/v), so the two read identical input copies and the noise cancels: still
function-preserving; with an odd number of input repeats the last block is left clean. N is Gaussian,
rescaled to power mean(block^2) / 10^(s/10), drawn per block from the seeded generator (`--seed`).
Exact in exact arithmetic; in float32 the noise multiplies any rounding difference between the copies
(W+N) x1 + (W-N) x2 = W (x1 + x2) + N (x1 - x2), layer after layer: on a 4-layer test model the logits
move by 1e-6 at s = 0 dB, 1e-3 at -10 dB and O(1) at -20 dB, so keep s >= 0 (`--verify` measures it).

Deviation: the authors untie a tied LM head (the unembedding is the embedding divided by n); bigtrain
keeps the tie and folds 1/n into the final norm's gain, the same logits with the recipe's tie kept.
"""

from __future__ import annotations

import torch

from bigtrain.errors import BigtrainError
from bigtrain.growth.operator import Operator
from bigtrain.growth.width import ROLES, WidthContext
from bigtrain.model.configuration import BigTrainConfig

NOISY = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def clone_sizes(
    cfg: BigTrainConfig, hidden: int | None, ffn: int | None, heads: int | None, kv_heads: int | None
) -> tuple[int, int, int, int]:
    """(hidden, ffn, heads, kv_heads) of a clone: whole multiples, heads tied to the hidden size."""
    d, F, H, K = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads
    D = hidden or d
    if D % d:
        raise BigtrainError(f"--op hypercloning: --hidden {D} is not a whole multiple of {d}")
    n = D // d
    F2 = ffn or F
    if F and F2 % F:
        raise BigtrainError(f"--op hypercloning: --ffn {F2} is not a whole multiple of {F}")
    want = (n * H, n * K if K != 1 else 1)
    if (heads or want[0], kv_heads or want[1]) != want:
        raise BigtrainError(
            f"--op hypercloning: heads tile with the hidden size (head_dim fixed): --heads {want[0]} --kv-heads {want[1]}"
        )
    return D, F2, want[0], want[1]


def ratios(name: str, key: str, ctx: WidthContext) -> list[int]:
    """Per axis of the tensor, how many times it is tiled."""
    src, tgt = ctx.cfg, ctx.target
    j = int(key.split(".")[2]) if key.startswith("model.layers.") else None
    out = []
    for role in ROLES[name]:
        if role == "v":
            out.append(1)
        elif role in ("hw", "hr", "g"):
            out.append(tgt.hidden // src.hidden_size)
        elif role in ("q", "qc"):
            out.append(tgt.layer_heads[j] // src.layer_num_attention_heads[j])
        elif role == "kv":
            out.append(tgt.layer_kv_heads[j] // src.layer_num_key_value_heads[j])
        else:  # ffn, ffnc
            out.append(tgt.layer_ffn[j] // src.layer_intermediate_sizes[j])
    return out


def snr_noise(block: torch.Tensor, snr_db: float, g: torch.Generator) -> torch.Tensor:
    """Gaussian noise of power mean(block^2) / 10^(snr_db / 10)."""
    noise = torch.randn(block.shape, generator=g)
    power = block.pow(2).mean() / 10 ** (snr_db / 10)
    return noise * torch.sqrt(power / noise.pow(2).mean())


def add_pm_noise(w: torch.Tensor, rows: int, cols: int, snr_db: float, g: torch.Generator) -> torch.Tensor:
    """+N on column block 2k, -N on 2k+1, per row block of `rows` rows (blocks are `cols` wide)."""
    for r in range(0, w.shape[0], rows):
        for k in range(w.shape[1] // cols // 2):
            a, b = 2 * k * cols, (2 * k + 1) * cols
            noise = snr_noise(w[r : r + rows, a : a + cols], snr_db, g)
            w[r : r + rows, a : a + cols] += noise
            w[r : r + rows, b : b + cols] -= noise
    return w


def hyperclone(
    name: str, key: str, w: torch.Tensor, ctx: WidthContext, maps: object = None, **_: object
) -> torch.Tensor:
    """One tensor of the clone (the signature of width.widen; no replica maps)."""
    reps = ratios(name, key, ctx)
    w = w.float()
    if len(reps) == 1:  # a norm gain
        out = w.repeat(reps[0])
        if name == "model.norm.weight" and ctx.cfg.tie_word_embeddings:
            out = out / reps[0]  # the tied head is the undivided embedding: the gain takes 1/n
        return out
    if reps == [1, 1]:
        return w
    out = w.repeat(*reps)
    if name == "model.embed_tokens.weight":
        return out  # writes the tiled stream: not divided
    out = out / reps[1]
    if ctx.snr_db is not None and any(p in name for p in NOISY):
        rows = ctx.cfg.head_dim if ROLES[name][0] in ("q", "kv") else w.shape[0]
        out = add_pm_noise(out, rows, w.shape[1], ctx.snr_db, ctx.generator(f"{key}.snr"))
    return out


OPERATOR = Operator(
    "hypercloning",
    "width",
    "HyperCloning: width x n by tiling every weight (hidden state = n copies), optional +-noise",
    "Samragh et al. 2024, arXiv 2409.12903",
    "https://github.com/apple/ml-hypercloning",
    ("hidden", "ffn", "heads", "kv_heads", "snr_db"),
    "yes (--snr-db too)",
    widen=hyperclone,
    replica_maps=False,
    sizes=clone_sizes,
    preserving=lambda cfg, target, split: True,
)
