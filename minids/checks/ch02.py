"""Checks for chapter 02 (KV cache, MQA, GQA): repeating KV heads, one cached decoding step,
the cache-size formula."""

from __future__ import annotations

import torch

from ..attention import repeat_kv
from ..config import ModelConfig
from ..flops import kv_cache_bytes
from .ch01 import _reference_attention
from .checking import Checker


def check_repeat_kv(repeat_kv_fn) -> None:
    """repeat_kv_fn(kv, n_rep): (B, S, n_kv, D) -> (B, S, n_kv * n_rep, D); query head h reads
    KV head h // n_rep (each KV head serves n_rep consecutive query heads)."""
    with Checker("repeat_kv") as c:
        g = torch.Generator().manual_seed(3)
        for B, S, n_kv, D, rep in [(1, 3, 2, 4, 3), (2, 5, 4, 8, 2), (1, 2, 1, 4, 8), (1, 4, 3, 2, 1)]:
            kv = torch.randn(B, S, n_kv, D, generator=g)
            c.close(repeat_kv_fn(kv, rep), repeat_kv(kv, rep),
                    f"(B, S, n_kv, D) = {(B, S, n_kv, D)}, n_rep={rep}",
                    mistakes=[(kv.repeat(1, 1, rep, 1),
                               "`repeat` tiles the heads (0,1,0,1,...): query head h must read KV head "
                               "h // n_rep, so repeat each KV head n_rep times in place (0,0,1,1,...)")])


def check_attend_with_cache(attend_step) -> None:
    """attend_step(q, k, v, cache_k, cache_v) -> (out, cache_k, cache_v): q, k, v of the ONE new
    token, (B, H, 1, D); caches (B, H, S, D) of the S earlier tokens (S may be 0). Append k and v
    to the caches, attend q over everything cached (scale 1/sqrt(D)), return the output
    (B, H, 1, D) and the grown caches."""
    with Checker("attend_with_cache") as c:
        g = torch.Generator().manual_seed(4)
        for B, H, T, D in [(1, 1, 5, 4), (2, 3, 7, 8)]:
            q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
            ck, cv = torch.zeros(B, H, 0, D), torch.zeros(B, H, 0, D)
            outs = []
            for t in range(T):
                out, ck, cv = attend_step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], ck, cv)
                c.true(tuple(out.shape) == (B, H, 1, D),
                       f"step {t}: the output must have shape {(B, H, 1, D)}, got {tuple(out.shape)}")
                outs.append(out)
            exp = _reference_attention(q, k, v)
            s = q @ k.transpose(-2, -1)
            causal = torch.ones(T, T, dtype=torch.bool).tril()
            c.close(torch.cat(outs, 2), exp,
                    f"{T} steps of (B, H, D) = {(B, H, D)} vs full causal attention",
                    mistakes=[
                        (s.masked_fill(~causal, float("-inf")).softmax(-1) @ v,
                         "scale the scores by 1/sqrt(D)"),
                        (v[:, :, :1].expand(B, H, T, D),
                         "no causal mask is needed for one new token: the cache holds only the past "
                         "(a tril mask of shape (1, S) keeps only the first key)"),
                    ])
            c.close(ck, k, "the key cache after all steps holds every key, in order",
                    mistakes=[(k[:, :, -1:], "append the new key to the cache, don't replace it")])
            c.close(cv, v, "the value cache after all steps holds every value, in order")


def check_kv_cache_size(kv_cache_size) -> None:
    """kv_cache_size(n_layers, n_heads, n_kv_heads, head_dim, context_len, batch, bytes_per_value)
    -> bytes of the whole model's KV cache (an int)."""
    dtypes = {1: "float8", 2: "bfloat16", 4: "float32"}
    with Checker("kv_cache_size") as c:
        for L, H, n_kv, D, ctx, B, nb in [(32, 32, 32, 128, 4096, 1, 2), (32, 32, 8, 128, 4096, 1, 2),
                                          (61, 128, 128, 128, 131072, 1, 2), (4, 4, 1, 32, 64, 12, 4),
                                          (80, 64, 8, 128, 8192, 16, 1)]:
            cfg = ModelConfig(hidden_size=H * D, num_attention_heads=H, num_key_value_heads=n_kv, head_dim=D,
                              num_hidden_layers=L)
            exp = kv_cache_bytes(cfg, ctx, dtypes[nb], batch=B)
            got = kv_cache_size(L, H, n_kv, D, ctx, B, nb)
            c.true(isinstance(got, int) or (torch.is_tensor(got) and got.numel() == 1),
                   f"return one number (an int), got {type(got).__name__}")
            c.close(float(got), float(exp), f"{L} layers, {H} heads, {n_kv} KV heads of {D}, context {ctx}, "
                    f"batch {B}, {nb} bytes/value", atol=0.5, rtol=0.0, mistakes=[
                        (exp / 2, "a token caches a key AND a value: the factor 2 is missing"),
                        (exp * H / n_kv, "use the KV heads (num_key_value_heads), not the query heads"),
                        (exp / L, "every layer has its own cache: multiply by the number of layers"),
                        (exp / B, "every sequence in the batch has its own cache: multiply by batch"),
                        (exp / nb, "multiply the number of values by the bytes per value"),
                    ])
