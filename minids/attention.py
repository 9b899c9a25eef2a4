"""Causal self-attention: MHA / GQA / MQA with a KV cache, and DeepSeek's Multi-head Latent
Attention (MLA, V3 report eqs 1-11), which can cache per-head keys and values (`naive`) or only a
latent vector and one rope key (`absorb`, `reexpand`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import RMSNorm, apply_rotary_emb, yarn_mscale


class KVCache:
    """What one layer keeps between decoding steps: named tensors of shape (B, T, ...),
    preallocated to `max_len` positions. `update` writes new positions and returns everything
    cached so far; `crop` rolls back (speculative decoding) and zeroes what it drops."""

    def __init__(self, max_len: int):
        if not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len={max_len!r} must be an integer >= 1")
        self.max_len = max_len
        self.length = 0
        self.buffers: dict[str, torch.Tensor] = {}

    def update(self, start_pos: int, **new: torch.Tensor) -> list[torch.Tensor]:
        T = next(iter(new.values())).size(1)
        end = start_pos + T
        if start_pos > self.length:
            raise ValueError(f"start_pos={start_pos} must be <= cached length {self.length}")
        if end > self.max_len:
            raise ValueError(f"sequence of {end} tokens exceeds the cache's max_len={self.max_len}")
        out = []
        for name, t in new.items():
            buf = self.buffers.get(name)
            if buf is None and start_pos > 0:
                raise ValueError(f"cache entry {name!r} is missing (the cache holds {sorted(self.buffers)}): "
                                 "it was filled by an attention with another cache layout (MLA's naive mode "
                                 "caches k, v; absorb and reexpand cache c_kv, k_pe)")
            if (buf is None or buf.shape[0] != t.shape[0] or buf.dtype != t.dtype
                    or buf.device != t.device):
                if start_pos > 0:                    # reallocating would silently lose the prefix
                    raise ValueError(f"cache entry {name!r}: batch size, dtype and device must stay "
                                     f"the same while decoding (got {tuple(t.shape)} {t.dtype} at "
                                     f"start_pos={start_pos})")
                buf = self.buffers[name] = t.new_zeros((t.size(0), self.max_len, *t.shape[2:]))
            buf[:, start_pos:end] = t
            out.append(buf[:, :end])
        self.length = end
        return out

    def crop(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"length={length} must be in [0, {self.length}]")
        for buf in self.buffers.values():
            buf[:, length:self.length] = 0
        self.length = length

    def nbytes(self) -> int:
        """Bytes actually holding cached positions (not the preallocated tail)."""
        return sum(b[:, : self.length].numel() * b.element_size() for b in self.buffers.values())


def causal_mask(T: int, S: int, device) -> torch.Tensor | None:
    """Boolean (T, S) mask for T new queries that follow S - T cached keys; None when T == 1."""
    if T == 1:
        return None
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, S, n_kv, D) -> (B, S, n_kv * n_rep, D): each KV head serves n_rep query heads (GQA)."""
    if n_rep == 1:
        return x
    B, S, n_kv, D = x.shape
    return x[:, :, :, None, :].expand(B, S, n_kv, n_rep, D).reshape(B, S, n_kv * n_rep, D)


def causal_sdpa(q, k, v, scale: float, dropout: float = 0.0) -> torch.Tensor:
    """softmax(q k^T * scale) v with a causal mask, by PyTorch's fused kernel. The T queries are
    the last T of the S positions (S - T are cached). q: (B, T, H, D), k/v: (B, S, H, D) ->
    (B, T, H, Dv)."""
    T, S = q.size(1), k.size(1)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))                       # (B, H, *, D)
    if T == S:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, dropout_p=dropout)
    else:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, S, q.device),
                                           scale=scale, dropout_p=dropout)
    return y.transpose(1, 2)                                               # (B, T, H, Dv)


def _one_query_attention(q, k, v, scale: float) -> torch.Tensor:
    """Decoding (T = 1, nothing to mask): softmax(q k^T * scale) v as one batched matmul per
    sequence, over its heads. It reads the cache where it lies, (S, H, D) per sequence, for any
    head sizes; PyTorch's fused CPU kernel wants the values as wide as the keys (not so in MLA:
    d_h + d_R vs d_v) and otherwise falls back to a path that copies the whole cache every step.
    q: (B, 1, H, D), k: (B, S, H, D), v: (B, S, H, Dv) -> (B, 1, H, Dv)."""
    out = []
    for b in range(q.size(0)):
        scores = torch.bmm(q[b].transpose(0, 1), k[b].permute(1, 2, 0)) * scale        # (H, 1, S)
        attn = scores.float().softmax(dim=-1).to(v.dtype)
        out.append(torch.bmm(attn, v[b].transpose(0, 1)))                               # (H, 1, Dv)
    return torch.stack(out).transpose(1, 2)                                             # (B, 1, H, Dv)


def _grouped_sdpa(q, k, v, scale: float) -> torch.Tensor:
    """GQA decoding without copying the cache n_rep times: the n_rep query heads of a group
    become n_rep * T query rows against the group's one K/V head. q: (B, T, H, D),
    k/v: (B, S, n_kv, D) -> (B, T, H, Dv); the same numbers as repeat_kv + causal_sdpa."""
    B, T, H, D = q.shape
    S, n_kv = k.size(1), k.size(2)
    rep = H // n_kv
    qg = q.view(B, T, n_kv, rep, D).permute(0, 2, 3, 1, 4).reshape(B, n_kv, rep * T, D)
    mask = causal_mask(T, S, q.device)
    if mask is not None:
        mask = mask.repeat(rep, 1)                                         # rows ordered (rep, T)
    y = F.scaled_dot_product_attention(qg, k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                       scale=scale)                        # (B, n_kv, rep*T, Dv)
    return y.view(B, n_kv, rep, T, -1).permute(0, 3, 1, 2, 4).reshape(B, T, H, -1)


class CausalSelfAttention(nn.Module):
    """Multi-head attention; fewer KV heads give GQA (1 < n_kv < n_h) or MQA (n_kv = 1)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = (cfg.num_attention_heads,
                                                        cfg.num_key_value_heads, cfg.head_dim)
        d, H, Hkv, D = cfg.hidden_size, self.n_heads, self.n_kv_heads, self.head_dim
        self.q_proj = nn.Linear(d, H * D, bias=False)
        self.k_proj = nn.Linear(d, Hkv * D, bias=False)
        self.v_proj = nn.Linear(d, Hkv * D, bias=False)
        self.o_proj = nn.Linear(H * D, d, bias=False)
        self.scale = D ** -0.5
        self.dropout = cfg.dropout

    def forward(self, x, freqs_cis, start_pos: int = 0, cache: KVCache | None = None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)            # (B, T, H, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)         # (B, T, Hkv, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        q, k = apply_rotary_emb(q, freqs_cis), apply_rotary_emb(k, freqs_cis)
        if cache is not None:
            k, v = cache.update(start_pos, k=k, v=v)                         # (B, S, Hkv, D)
        n_rep = self.n_heads // self.n_kv_heads
        if n_rep > 1 and cache is not None and not (self.training and self.dropout):
            return self.o_proj(_grouped_sdpa(q, k, v, self.scale).reshape(B, T, -1))
        y = causal_sdpa(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), self.scale,
                             self.dropout if self.training else 0.0)
        return self.o_proj(y.reshape(B, T, -1))


MLA_MODES = ("naive", "absorb", "reexpand")


def mla_cache_values_per_token(cfg: ModelConfig, mode: str | None = None) -> int:
    """Values one MLA layer caches per token in `mode` (default: cfg.mla_mode). naive: every
    head's key and value, H (d_h + d_R) + H d_v (40,960 for V3); absorb and reexpand: the latent
    and the shared rope key, d_c + d_R (576 for V3)."""
    mode = cfg.mla_mode if mode is None else mode
    if mode not in MLA_MODES:
        raise ValueError(f"mode={mode!r} must be one of {MLA_MODES}")
    H = cfg.num_attention_heads
    if mode == "naive":
        return H * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) + H * cfg.v_head_dim
    return cfg.kv_lora_rank + cfg.qk_rope_head_dim


class MLA(nn.Module):
    """Multi-head Latent Attention (DeepSeek-V2/V3). Names follow the V3 reference code:
    wq_a = W^DQ, wq_b = [W^UQ; W^QR], wkv_a = [W^DKV; W^KR], wkv_b = [W^UK; W^UV], wo = W^O.

    Three ways to compute the same function (`mode`, from cfg.mla_mode; tests hold them to 1e-5):
      naive     as the V3 reference's `naive`: expand c_KV into per-head keys and values
                (eqs 2, 4, 5) and cache those, H (d_h + d_R) + H d_v values per token.
      absorb    as the V3 reference's `absorb`: cache c_KV and k_R only (d_c + d_R values), fold
                W^UK into the query and W^UV into the output, never expand the cache.
      reexpand  cache c_KV and k_R like absorb, but expand the WHOLE cache through W^UKV again at
                every step, then attend like naive (Hugging Face's DeepseekV3 does this): the small
                cache, paid for with S d_c H (d_h + d_v) multiply-adds per step over S cached tokens.
    Without a cache (training), naive and reexpand are the same computation."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, H = cfg.hidden_size, cfg.num_attention_heads
        self.n_heads = H
        self.q_lora_rank, self.kv_lora_rank = cfg.q_lora_rank, cfg.kv_lora_rank
        self.nope, self.rope, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        qk = self.nope + self.rope
        if self.q_lora_rank:
            self.wq_a = nn.Linear(d, self.q_lora_rank, bias=False)               # W^DQ
            self.q_norm = RMSNorm(self.q_lora_rank)    # eps 1e-6, not rms_norm_eps: as V3's ref. and HF
            self.wq_b = nn.Linear(self.q_lora_rank, H * qk, bias=False)          # W^UQ, W^QR
        else:
            self.wq = nn.Linear(d, H * qk, bias=False)
        self.wkv_a = nn.Linear(d, self.kv_lora_rank + self.rope, bias=False)     # W^DKV, W^KR
        self.kv_norm = RMSNorm(self.kv_lora_rank)      # eps 1e-6 (fixed, as V3's reference and HF)
        self.wkv_b = nn.Linear(self.kv_lora_rank, H * (self.nope + self.v_dim), bias=False)
        self.wo = nn.Linear(H * self.v_dim, d, bias=False)                       # W^O
        self.scale = qk ** -0.5 * yarn_mscale(cfg.rope_scaling) ** 2
        self.mode = cfg.mla_mode
        self.dropout = cfg.dropout

    def forward(self, x, freqs_cis, start_pos: int = 0, cache: KVCache | None = None):
        if self.mode not in MLA_MODES:
            raise ValueError(f"mode={self.mode!r} must be one of {MLA_MODES}")
        B, T, _ = x.shape
        H, nope, rope, r = self.n_heads, self.nope, self.rope, self.kv_lora_rank
        # queries, eqs 6-9: c_Q = RMSNorm(W^DQ h); [q_C ; q_R] = W^UQ c_Q, W^QR c_Q
        q = self.wq_b(self.q_norm(self.wq_a(x))) if self.q_lora_rank else self.wq(x)
        q = q.view(B, T, H, nope + rope)
        q_nope, q_pe = q.split([nope, rope], dim=-1)            # (B, T, H, nope), (B, T, H, rope)
        q_pe = apply_rotary_emb(q_pe, freqs_cis)                 # eq 8
        # keys and values, eqs 1-3: c_KV = W^DKV h (normalised), k_R = RoPE(W^KR h) for all heads
        kv = self.wkv_a(x)
        c_kv, k_pe = kv.split([r, rope], dim=-1)                 # (B, T, r), (B, T, rope)
        c_kv = self.kv_norm(c_kv)
        k_pe = apply_rotary_emb(k_pe.unsqueeze(2), freqs_cis).squeeze(2)
        if cache is not None and self.mode != "naive":           # the latent cache: c_KV and k_R
            c_kv, k_pe = cache.update(start_pos, c_kv=c_kv, k_pe=k_pe)      # (B, S, r), (B, S, rope)
        if self.mode == "absorb":
            y = self._absorb(q_nope, q_pe, c_kv, k_pe)
        else:
            k, v = self._expand(c_kv, k_pe)                      # reexpand: the whole cache, again
            if cache is not None and self.mode == "naive":       # the expanded cache: every head's k, v
                k, v = cache.update(start_pos, k=k, v=v)          # (B, S, H, nope+rope), (B, S, H, v)
            q = torch.cat([q_nope, q_pe], dim=-1)                # eq 9
            if T == 1 and cache is not None and not (self.training and self.dropout):
                y = _one_query_attention(q, k, v, self.scale)   # eq 10, decoding
            else:
                y = causal_sdpa(q, k, v, self.scale, self.dropout if self.training else 0.0)   # eq 10
        return self.wo(y.reshape(B, T, H * self.v_dim))          # eq 11

    def _expand(self, c_kv, k_pe):
        """Per-head keys and values from the latent (eqs 2, 4, 5): (B, S, H, nope+rope), (B, S, H, v)."""
        B, S, H = c_kv.size(0), c_kv.size(1), self.n_heads
        kv = self.wkv_b(c_kv).view(B, S, H, self.nope + self.v_dim)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)    # (B, S, H, nope), (B, S, H, v)
        k = torch.cat([k_nope, k_pe[:, :, None, :].expand(B, S, H, self.rope)], dim=-1)  # eq 4
        return k, v

    def _absorb(self, q_nope, q_pe, c_kv, k_pe):
        """Never expand the cache: fold W^UK into the query and W^UV into the output.
        q_C . (W^UK c) = (W^UK^T q_C) . c, and sum_s a_s W^UV c_s = W^UV (sum_s a_s c_s)."""
        H, nope = self.n_heads, self.nope
        w = self.wkv_b.weight.view(H, nope + self.v_dim, self.kv_lora_rank)   # (H, nope+v, r)
        w_uk, w_uv = w[:, :nope], w[:, nope:]                     # (H, nope, r), (H, v, r)
        q_lat = torch.einsum("bthd,hdc->bthc", q_nope, w_uk)     # (B, T, H, r)
        scores = (torch.einsum("bthc,bsc->bhts", q_lat, c_kv)
                  + torch.einsum("bthr,bsr->bhts", q_pe, k_pe)) * self.scale    # (B, H, T, S)
        mask = causal_mask(scores.size(-2), scores.size(-1), scores.device)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        attn = scores.float().softmax(dim=-1).to(c_kv.dtype)
        if self.training and self.dropout:
            attn = F.dropout(attn, self.dropout)
        o_lat = torch.einsum("bhts,bsc->bthc", attn, c_kv)      # (B, T, H, r)
        return torch.einsum("bthc,hvc->bthv", o_lat, w_uv)      # (B, T, H, v)


def build_attention(cfg: ModelConfig) -> nn.Module:
    return MLA(cfg) if cfg.is_mla else CausalSelfAttention(cfg)
