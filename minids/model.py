"""MiniDeepSeek: embedding -> blocks (first k dense, then MoE) -> norm -> head, plus MTP modules.
With MLA, MoE and MTP switched off in the config it is a plain dense GPT (the course baseline):
one code path, so every comparison in the course is fair.

Dtype policy. Parameters take the model's dtype; two tensors keep their own whatever it is:
- the RoPE table e^{i m theta} is complex64 (a real dtype would drop its imaginary part). It is
  derived from the config, so it is a non-persistent buffer stored as its raw bits (int64, one per
  complex64 value): `Module.to(dtype)` casts floating and complex tensors but never integer ones,
  while device moves still apply. `model.freqs_cis` reads it back as complex64 (no copy).
- the router biases b_i are fp32, as V3 keeps them: balancing steps of gamma = 0.001 vanish in
  bf16 (next to 0.5, bf16 values are 0.004 apart: a step of 0.001 rounds away). They are saved
  in the state dict, so `Module.to(dtype)` casts them: a router whose bias was cast raises a
  ValueError at the next forward, naming the fix. Cast a model with `cast_parameters(model,
  dtype)` (parameters only, buffers untouched); train in bf16 with autocast (the trainer's
  `dtype="bfloat16"`), which keeps the weights fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .attention import KVCache, build_attention
from .config import ModelConfig
from .layers import MLP, RMSNorm, precompute_freqs_cis
from .moe import MoE
from .mtp import MTPModule, mtp_losses


def check_context(n_tokens: int, cfg: ModelConfig) -> None:
    """A sequence (or a prompt) of n_tokens must fit in the context the RoPE table covers."""
    limit = cfg.max_position_embeddings
    if n_tokens > limit:
        raise ValueError(f"a sequence of {n_tokens} tokens is longer than the context "
                         f"max_position_embeddings={limit}; crop the prompt to its last {limit} tokens")


def cast_parameters(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast the parameters to `dtype`; buffers keep theirs (the dtype policy above)."""
    for p in module.parameters():
        p.data = p.data.to(dtype)
    return module


@dataclass
class ModelOutput:
    logits: torch.Tensor                       # (B, T, vocab)
    loss: torch.Tensor | None = None           # what training minimises: main + lambda*MTP + balance
    main_loss: torch.Tensor | None = None      # next-token cross-entropy of the main head
    mtp_loss: torch.Tensor | None = None       # mean over depths of L^k (unweighted)
    aux_loss: torch.Tensor | None = None       # sequence-wise balance loss (alpha included)
    hidden: torch.Tensor | None = None         # (B, T, d) last hidden state before the final norm
    mtp_losses: list = field(default_factory=list)


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(RMSNorm(x)), then x + FFN(RMSNorm(x)); the FFN is a
    dense SwiGLU for the first `first_k_dense_replace` layers and DeepSeekMoE after them."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = build_attention(cfg)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.ffn = MoE(cfg) if cfg.is_moe_layer(layer_id) else MLP(cfg.hidden_size, cfg.intermediate_size)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, freqs_cis, start_pos: int = 0, cache: KVCache | None = None):
        x = x + self.drop(self.attn(self.attn_norm(x), freqs_cis, start_pos, cache))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class MiniDeepSeek(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        L = cfg.num_hidden_layers                      # MTP blocks are numbered after the main ones
        with torch.random.fork_rng(devices=[]):        # building them must not shift the main init
            self.mtp = nn.ModuleList(MTPModule(cfg, Block(cfg, L + k)) for k in range(cfg.num_nextn_predict_layers))
        self.mtp_loss_weight = cfg.mtp_loss_weight     # lambda; the trainer may schedule it
        rope_dim = cfg.qk_rope_head_dim if cfg.is_mla else cfg.head_dim
        freqs_cis = precompute_freqs_cis(rope_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling)
        self.register_buffer("rope_bits", freqs_cis.view(torch.int64), persistent=False)  # see the dtype policy
        self.reset_parameters()

    @property
    def freqs_cis(self) -> torch.Tensor:
        """The RoPE table e^{i m theta_j}: complex64 (max_position_embeddings, rope_dim / 2)."""
        if torch.compiler.is_compiling():   # inductor has no complex kernels: (cos, sin) pairs, (.., rope_dim / 2, 2)
            return self.rope_bits.view(torch.float32).unflatten(-1, (-1, 2))
        return self.rope_bits.view(torch.complex64)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """N(0, 0.02) for matrices and embeddings; output projections of residual branches are
        scaled by 1/sqrt(2 * layers) (GPT-2); norms start at 1; router biases at 0."""
        std = self.config.initializer_range
        residual_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                out_proj = name.endswith(("o_proj.weight", "wo.weight", "down_proj.weight", "down_proj"))
                p.normal_(0.0, residual_std if out_proj else std)
            elif name.endswith("norm.weight"):
                p.fill_(1.0)
        for m in self.moe_layers():
            m.router.bias.zero_()

    # ------------------------------------------------------------------------ forward
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, start_pos: int = 0,
                cache: list[KVCache] | None = None) -> ModelOutput:
        """idx: (B, T) token ids at positions start_pos .. start_pos+T-1; targets: (B, T), -1 = ignore."""
        B, T = idx.shape
        check_context(start_pos + T, self.config)
        if not torch.compiler.is_compiling() and idx.numel() and (idx.min() < 0 or idx.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must be in [0, vocab_size={self.config.vocab_size}); "
                             f"got [{int(idx.min())}, {int(idx.max())}]")
        x = self.embed_tokens(idx)                                   # (B, T, d)
        freqs_cis = self.freqs_cis[start_pos:start_pos + T]
        for i, layer in enumerate(self.layers):
            x = layer(x, freqs_cis, start_pos, cache[i] if cache is not None else None)
        logits = self.lm_head(self.norm(x))                          # (B, T, vocab)
        out = ModelOutput(logits=logits, hidden=x)
        if targets is None:
            return out
        out.main_loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                                        ignore_index=-1)
        loss = out.main_loss
        if len(self.mtp):
            out.mtp_losses = mtp_losses(self, x, idx, targets)
            if out.mtp_losses:
                out.mtp_loss = torch.stack(out.mtp_losses).mean()   # 1/D sum_k L^k  (eq 25)
                loss = loss + self.mtp_loss_weight * out.mtp_loss
        moes = [layer.ffn for layer in self.layers]
        if self.mtp_loss_weight > 0:               # lambda = 0: the MTP path must not train anything
            moes += [module.block.ffn for module in self.mtp]
        aux = [m.aux_loss for m in moes if isinstance(m, MoE) and m.aux_loss is not None]
        if aux:
            out.aux_loss = torch.stack(aux).sum()
            loss = loss + out.aux_loss
        out.loss = loss
        return out

    # ------------------------------------------------------------------------ helpers
    def new_cache(self, max_len: int | None = None) -> list[KVCache]:
        """One KVCache per main layer, then one per MTP block."""
        n = self.config.num_hidden_layers + len(self.mtp)
        return [KVCache(max_len or self.config.max_position_embeddings) for _ in range(n)]

    def moe_layers(self) -> list[MoE]:
        return [m for m in self.modules() if isinstance(m, MoE)]

    def router_loads(self) -> list[torch.Tensor]:
        """Tokens per expert in the last forward, for every MoE layer (main layers first)."""
        return [m.last_load for m in self.moe_layers() if m.last_load is not None]

    def update_router_biases(self) -> None:
        """Aux-loss-free balancing step; call once after every optimizer step."""
        for m in self.moe_layers():
            m.update_bias()

    def num_params(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed_tokens.weight.numel() if exclude_embedding else n
