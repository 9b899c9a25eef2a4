"""Checks for chapter 03 (Multi-head Latent Attention): the latent projections, splitting W^UK and
W^UV out of wkv_b, the absorbed scores and the absorbed output."""

from __future__ import annotations

import torch

from ..attention import MLA, KVCache
from ..config import ModelConfig
from ..layers import precompute_freqs_cis
from .checking import Checker


def _mla(H=4, r=16, nope=8, rope=6, v=10, d=32, seed=5):
    cfg = ModelConfig(hidden_size=d, num_attention_heads=H, kv_lora_rank=r, qk_nope_head_dim=nope,
                      qk_rope_head_dim=rope, v_head_dim=v, max_position_embeddings=32, mla_mode="absorb")
    with torch.random.fork_rng():                # building the layer must not move the learner's RNG
        m = MLA(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():                        # every weight drawn here: the global RNG is untouched
        for p in m.parameters():
            p.normal_(0, 0.3, generator=g) if p.dim() == 2 else p.uniform_(0.5, 1.5, generator=g)
    return cfg, m


def check_mla_latents(mla_latents) -> None:
    """mla_latents(h, wkv_a, kv_norm_weight, kv_lora_rank, freqs_cis) -> (c_kv, k_pe):
    h (B, T, d); wkv_a (kv_lora_rank + rope, d) stacks W^DKV over W^KR; c_kv = RMSNorm(W^DKV h)
    (eps 1e-6) of shape (B, T, kv_lora_rank) (eq 1); k_pe = RoPE(W^KR h) of shape (B, T, rope),
    one rope key shared by all heads (eq 3). These two are what MLA caches."""
    with Checker("mla_latents") as c:
        g = torch.Generator().manual_seed(6)
        for B, T, r, rope in [(1, 5, 16, 6), (2, 9, 24, 8)]:
            cfg, m = _mla(r=r, rope=rope)
            h = torch.randn(B, T, cfg.hidden_size, generator=g)
            freqs = precompute_freqs_cis(rope, T)
            cache = KVCache(T)
            with torch.no_grad():
                m(h, freqs, 0, cache)                              # the package's cache is the truth
                c_exp, k_exp = cache.buffers["c_kv"], cache.buffers["k_pe"]
                c_raw, k_raw = (h @ m.wkv_a.weight.T).split([r, rope], -1)
                got_c, got_k = mla_latents(h, m.wkv_a.weight, m.kv_norm.weight, r, freqs)
            c.close(got_c, c_exp, f"c_kv for (B, T, r) = {(B, T, r)}", mistakes=[
                (c_raw, "normalise c_KV with RMSNorm (times kv_norm_weight), as DeepSeek's code does"),
                (c_raw * torch.rsqrt(c_raw.pow(2).mean(-1, keepdim=True) + 1e-6),
                 "multiply the normalised latent by kv_norm_weight"),
            ])
            c.close(got_k, k_exp, f"k_pe for (B, T, rope) = {(B, T, rope)}", mistakes=[
                (k_raw, "rotate k_pe with RoPE (apply_rotary_emb) at positions 0..T-1"),
            ])


def check_split_wkv_b(split_wkv_b) -> None:
    """split_wkv_b(wkv_b_weight, n_heads, qk_nope_head_dim, v_head_dim) -> (w_uk, w_uv):
    wkv_b_weight (n_heads * (nope + v), kv_lora_rank) holds, head after head, that head's nope
    key rows then its value rows; return w_uk (n_heads, nope, r) and w_uv (n_heads, v, r)."""
    with Checker("split_wkv_b") as c:
        for H, r, nope, v in [(4, 16, 8, 10), (2, 12, 6, 6)]:
            cfg, m = _mla(H=H, r=r, nope=nope, v=v)
            w = m.wkv_b.weight.detach()
            exp = w.view(H, nope + v, r)
            got_uk, got_uv = split_wkv_b(w, H, nope, v)
            c.close(got_uk, exp[:, :nope], f"w_uk for {H} heads, nope={nope}, v={v}", mistakes=[
                (w[:H * nope].view(H, nope, r),
                 "the rows are grouped per head ([k_nope; v] of head 0, then of head 1, ...): "
                 "view as (n_heads, nope + v, r) first, then split the middle dimension"),
            ])
            c.close(got_uv, exp[:, nope:], f"w_uv for {H} heads, nope={nope}, v={v}", mistakes=[
                (w[H * nope:].view(H, v, r), "the rows are grouped per head: view as (n_heads, nope + v, r) "
                 "first, then split the middle dimension"),
            ])
            # and they reproduce the expanded keys and values of the package's naive path
            cl = torch.randn(3, r, generator=torch.Generator().manual_seed(H))
            kv = (cl @ w.T).view(3, H, nope + v)
            c.close(torch.einsum("sc,hdc->shd", cl, got_uk), kv[..., :nope], "W_UK c gives the naive keys")


def _absorb_case(g, B, T, S, H, nope, rope, r, v):
    q_nope, q_pe = torch.randn(B, T, H, nope, generator=g), torch.randn(B, T, H, rope, generator=g)
    c_kv, k_pe = torch.randn(B, S, r, generator=g), torch.randn(B, S, rope, generator=g)
    w_uk, w_uv = torch.randn(H, nope, r, generator=g) / r ** 0.5, torch.randn(H, v, r, generator=g) / r ** 0.5
    return q_nope, q_pe, c_kv, k_pe, w_uk, w_uv


def check_absorbed_scores(absorbed_scores) -> None:
    """absorbed_scores(q_nope, q_pe, c_kv, k_pe, w_uk, scale) -> (B, H, T, S) attention scores
    (before mask and softmax): (q_nope . W_UK c_s + q_pe . k_pe_s) * scale, computed WITHOUT
    expanding the cache: absorb W_UK into the query. Shapes: q_nope (B, T, H, nope),
    q_pe (B, T, H, rope), c_kv (B, S, r), k_pe (B, S, rope), w_uk (H, nope, r)."""
    with Checker("absorbed_scores") as c:
        g = torch.Generator().manual_seed(7)
        for B, T, S, H in [(1, 1, 6, 2), (2, 3, 9, 4)]:
            q_nope, q_pe, c_kv, k_pe, w_uk, _ = _absorb_case(g, B, T, S, H, 8, 4, 12, 6)
            scale = 12 ** -0.5
            k_nope = torch.einsum("bsc,hdc->bshd", c_kv, w_uk)               # naive: expand the keys
            content = torch.einsum("bthd,bshd->bhts", q_nope, k_nope)
            pos = torch.einsum("bthr,bsr->bhts", q_pe, k_pe)
            got = absorbed_scores(q_nope, q_pe, c_kv, k_pe, w_uk, scale)
            c.close(got, (content + pos) * scale, f"(B, T, S, H) = {(B, T, S, H)}", mistakes=[
                (content * scale, "add the rope part q_pe . k_pe (the decoupled key carries position)"),
                (content + pos, "multiply the scores by `scale`"),
                (content * scale + pos, "scale both parts: (content + rope) * scale"),
            ])


def check_absorbed_output(absorbed_output) -> None:
    """absorbed_output(attn, c_kv, w_uv) -> (B, T, H, v): each head's output W_UV (sum_s a_s c_s),
    i.e. attend over the latents first, then apply W_UV once. attn (B, H, T, S) softmaxed weights,
    c_kv (B, S, r), w_uv (H, v, r)."""
    with Checker("absorbed_output") as c:
        g = torch.Generator().manual_seed(8)
        for B, T, S, H in [(1, 1, 6, 2), (2, 3, 9, 4)]:
            _, _, c_kv, _, _, w_uv = _absorb_case(g, B, T, S, H, 8, 4, 12, 6)
            attn = torch.randn(B, H, T, S, generator=g).softmax(-1)
            v = torch.einsum("bsc,hvc->bshv", c_kv, w_uv)                     # naive: expand the values
            exp = torch.einsum("bhts,bshv->bthv", attn, v)
            got = absorbed_output(attn, c_kv, w_uv)
            c.close(got, exp, f"(B, T, S, H) = {(B, T, S, H)}", mistakes=[
                (exp.transpose(1, 2), "return (B, T, H, v), heads after positions"),
                (torch.einsum("bhts,bsc,vc->bthv", attn, c_kv, w_uv[0]), "each head has its own W_UV[h]"),
            ])
