"""A LLaMA-architecture decoder with per-layer sizes, as a transformers `PreTrainedModel`.

Pre-norm blocks (RMSNorm), rotary position embeddings, grouped-query attention through
transformers' attention functions (SDPA by default, flash-attention when installed), and a
SwiGLU FFN whose width may differ per layer or be absent (attention-only layer), or a Mixture-of-Experts FFN
(moe.py: a router and E SwiGLU experts; its load-balancing and z losses join the training loss). The elementwise kernels
(RMSNorm, RoPE, SwiGLU) are PyTorch or liger-kernel's (`select_kernels`), and the training loss may be computed
without materialising the logits (`select_loss`, see loss.py).

Parameter names are LLaMA's, so a uniform model is a stock `LlamaForCausalLM` state dict.
This file knows nothing of DeepSpeed, data or growth.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, MoeCausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from bigtrain.model.configuration import BigTrainConfig
from bigtrain.model.kernels import TORCH_KERNELS, Kernels, get_kernels
from bigtrain.model.loss import linear_cross_entropy
from bigtrain.model.moe import MoEFeedForward, RoutingStats


class RMSNorm(nn.Module):
    kernels: Kernels = TORCH_KERNELS

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernels.rms_norm(x, self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for positions; computed in float32 and cast to the activations' dtype."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self) -> torch.Tensor:
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float) / self.head_dim
        return 1.0 / (self.theta**exponents)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def eager_attention(
    module: Attention,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention, used when `attn_implementation="eager"` (the mask is additive)."""
    groups = module.num_key_value_groups
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    else:
        s = q.shape[2]
        scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, v).transpose(1, 2).contiguous(), probs


class Attention(nn.Module):
    """Grouped-query self-attention with this layer's own number of query and kv heads."""

    kernels: Kernels = TORCH_KERNELS

    def __init__(self, config: BigTrainConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.layer_num_attention_heads[layer_idx]
        self.num_kv_heads = config.layer_num_key_value_heads[layer_idx]
        self.num_key_value_groups = self.num_heads // self.num_kv_heads  # read by transformers' kernels
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        d, hd = config.hidden_size, self.head_dim
        self.q_proj = nn.Linear(d, self.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, self.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, self.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(self.num_heads * hd, d, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        past_key_values: Cache | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        cos, sin = rope
        q, k = self.kernels.rotary(q, k, cos, sin)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        attend: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention)
        out, _ = attend(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        return self.o_proj(out.reshape(b, s, -1).contiguous())


class SwiGLU(nn.Module):
    kernels: Kernels = TORCH_KERNELS

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.kernels.silu_mul(self.gate_proj(x), self.up_proj(x)))


class DecoderLayer(GradientCheckpointingLayer):
    """x + attn(norm(x)), then x + ffn(norm(x)); a layer with FFN size 0 has neither FFN nor its norm."""

    def __init__(self, config: BigTrainConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        ffn = config.layer_intermediate_sizes[layer_idx]
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps) if ffn else None
        self.mlp: nn.Module | None = None
        if config.layer_is_moe(layer_idx):
            self.mlp = MoEFeedForward(config.hidden_size, config.moe, lambda: SwiGLU(config.hidden_size, ffn))
        elif ffn:
            self.mlp = SwiGLU(config.hidden_size, ffn)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        # the math lives in `block` so torch.compile can wrap it inside the checkpointing wrapper of `forward`
        return self.block(x, rope, attention_mask, past_key_values, **kwargs)

    def block(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, attention_mask, past_key_values, **kwargs)
        if self.mlp is not None:
            x = x + self.mlp(self.post_attention_layernorm(x))
        return x


class BigTrainPreTrainedModel(PreTrainedModel):
    config_class = BigTrainConfig
    config: BigTrainConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def select_kernels(self, name: str) -> None:
        """`torch` or `liger` (resolved by the caller: see kernels.resolve_kernels)."""
        kernels = get_kernels(name)
        for module in self.modules():
            if isinstance(module, (RMSNorm, Attention, SwiGLU)):
                module.kernels = kernels

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # from_pretrained builds on the meta device; the non-persistent RoPE table must be recomputed
        if isinstance(module, RotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())


class BigTrainModel(BigTrainPreTrainedModel):
    def __init__(self, config: BigTrainConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, float(config.rope_parameters["rope_theta"]))
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: object,
    ) -> BaseModelOutputWithPast:
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        # Given position ids may describe packed sequences, which the mask must follow; transformers finds out
        # with a host-side `.all()` on every forward, so ours (one arange, never packed) are not passed.
        mask_position_ids = position_ids
        if position_ids is None:
            start = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)[None] + start
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=mask_position_ids,
        )
        x = inputs_embeds
        rope = self.rotary_emb(x, position_ids)
        for layer in self.layers:
            x = layer(x, rope, mask, past_key_values, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(x), past_key_values=past_key_values)


class BigTrainForCausalLM(BigTrainPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # plain: logits, then cross-entropy; chunked/fused: the loss straight from the hidden states, no logits
    # returned. Under ZeRO-3 the head weight is read outside lm_head's forward: register it as external.
    loss_kind: str = "plain"

    def select_loss(self, kind: str) -> None:
        self.loss_kind = kind

    def __init__(self, config: BigTrainConfig) -> None:
        super().__init__(config)
        self.model = BigTrainModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def moe_blocks(self) -> list[tuple[int, MoEFeedForward]]:
        """(layer, MoE FFN) of every MoE layer."""
        return [(i, layer.mlp) for i, layer in enumerate(self.model.layers) if isinstance(layer.mlp, MoEFeedForward)]

    def moe_losses(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The last forward's load-balancing and z losses, each summed over the MoE layers (None: dense)."""
        blocks = [b for _, b in self.moe_blocks() if b.aux_loss is not None]
        if not blocks:
            return None
        return torch.stack([b.aux_loss for b in blocks]).sum(), torch.stack([b.z_loss for b in blocks]).sum()

    def routing_stats(self) -> dict[int, RoutingStats]:
        """Per MoE layer, the last forward's routing statistics (for metrics)."""
        return {i: b.stats for i, b in self.moe_blocks() if b.stats is not None}

    def with_moe_losses(self, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the training objective, the weighted auxiliary part) of a cross-entropy `loss`: in training, an MoE
        model adds router_aux_loss_coef x load balancing + router_z_loss_coef x z-loss; in eval, nothing."""
        losses = self.moe_losses() if self.training and self.config.moe is not None else None
        if losses is None:
            return loss, None
        moe = self.config.moe
        aux = moe["router_aux_loss_coef"] * losses[0] + moe["router_z_loss_coef"] * losses[1]
        return loss + aux.to(loss.dtype), aux

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs: object,
    ) -> MoeCausalLMOutputWithPast:
        """`loss` is the training objective (cross-entropy, plus the MoE auxiliary losses in training);
        `aux_loss` the auxiliary part alone (None for a dense model or in eval)."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = out.last_hidden_state
        if labels is not None and self.loss_kind != "plain" and not logits_to_keep:
            loss, aux = self.with_moe_losses(linear_cross_entropy(hidden, self.lm_head.weight, labels, self.loss_kind))
            return MoeCausalLMOutputWithPast(loss=loss, aux_loss=aux, logits=None, past_key_values=out.past_key_values)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = aux = None
        if labels is not None:
            # labels are the inputs (HF convention): predict token t+1 from tokens <= t
            loss = nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
            )
            loss, aux = self.with_moe_losses(loss)
        return MoeCausalLMOutputWithPast(loss=loss, aux_loss=aux, logits=logits, past_key_values=out.past_key_values)
