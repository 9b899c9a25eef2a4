"""Checks for chapter 02 (KV cache, MQA, GQA): repeating KV heads, a GQA decoding step over a cache
that never copies the cache per query head, the cache-size formula; a think question (how many
sequences fit on a GPU); the batch-size experiment."""

from __future__ import annotations

import math

import torch

from .checking import Checker, CheckFailed, Watch

FORBIDDEN = {
    "repeat_kv": ["minids.attention.repeat_kv"],
    "gqa_step": ["torch.nn.functional.scaled_dot_product_attention", "minids.attention.causal_sdpa",
                 "minids.attention._grouped_sdpa", "minids.attention._one_query_attention",
                 "minids.attention.repeat_kv", "torch.repeat_interleave", "torch.Tensor.repeat_interleave",
                 "torch.Tensor.repeat"],
}
POINTS = {"repeat_kv": 1, "gqa_step": 3, "kv_cache_size": 1, "max_batch": 2, "batch_experiment": 2}
NOT_MUTATED = {"batch_experiment": "an experiment (timings): its check is tested on made-up and real "
                                   "measurements instead"}
# Reviewed equivalent mutants of the solutions (python -m minids mutation 02 -v lists the survivors).
_SAME_WHOLE_NUMBER = "gives the same whole numbers (the answer is floored)"
EQUIVALENT_MUTANTS = {
    "gqa_step": {"`torch.ones(T, S, dtype=torch.bool, device=q.device)` -> `torch.ones(T, S, dtype=torch.bool)`":
                 "the checks run on the CPU, the default device"},
    "max_batch": {
        "`room / kv_cache_size(32, 32, n_kv, 128, 4096, 1, 2)` -> `room // kv_cache_size(32, 32, n_kv, 128, 4096, 1, "
        "2)`": "floor(a / b) == floor(a // b) for positive a, b",
        "`32` -> `33` #2": "the number of query heads does not enter the cache size (the point of the question)",
        "`32` -> `31` #2": "the number of query heads does not enter the cache size (the point of the question)",
        "`4096` -> `4097`": _SAME_WHOLE_NUMBER,
        "`32` -> `33` #3": _SAME_WHOLE_NUMBER,
        "`(('MHA', 32), ('GQA-8', 8), ('MQA', 1))` -> `(('GQA-8', 8), ('MHA', 32), ('MQA', 1))`": "the order in "
        "which a dict is filled does not matter",
    },
}

# the baseline preset (4 layers, 4 heads of 32, MHA) caches 2 * 4 * 32 values per token per layer
BASELINE_CACHE_BYTES_PER_TOKEN = 4 * 2 * 4 * 32 * 4          # layers * (k, v) * heads * head dim * float32


# ----------------------------------------------------------------------------------- repeat_kv
def check_repeat_kv(repeat_kv_fn) -> None:
    """repeat_kv_fn(kv, n_rep): (B, S, n_kv, D) -> (B, S, n_kv * n_rep, D); query head h reads
    KV head h // n_rep (each KV head serves n_rep consecutive query heads)."""
    with Checker("repeat_kv") as c:
        g = torch.Generator().manual_seed(3)
        for n, (B, S, n_kv, D, rep, dtype) in enumerate([
                (1, 3, 2, 4, 3, torch.float32), (2, 5, 4, 8, 2, torch.float32), (1, 1, 1, 4, 8, torch.float64),
                (1, 4, 3, 2, 1, torch.float32), (2, 6, 2, 6, 4, torch.bfloat16)]):
            kv = torch.randn(B, S, n_kv, D, generator=g).to(dtype)
            if n == 1:                                       # a non-contiguous view: (B, n_kv, S, D) transposed
                kv = torch.randn(B, n_kv, S, D, generator=g).transpose(1, 2)
            exp = kv[:, :, :, None, :].expand(B, S, n_kv, rep, D).reshape(B, S, n_kv * rep, D)
            got = c.call(repeat_kv_fn, kv, rep, forbidden=FORBIDDEN["repeat_kv"])
            c.close(got, exp, f"(B, S, n_kv, D) = {(B, S, n_kv, D)}, n_rep={rep}, {str(kv.dtype)[6:]}"
                    + (" (non-contiguous)" if n == 1 else ""), atol=0, rtol=0, dtype=kv.dtype, mistakes=[
                        (kv.repeat(1, 1, rep, 1), "`repeat` tiles the heads (0,1,0,1,...): query head h must read "
                         "KV head h // n_rep, so repeat each KV head n_rep times in place (0,0,1,1,...)"),
                        (kv.repeat_interleave(rep, dim=1), "repeat the heads (dim 2), not the positions (dim 1)"),
                        (kv.repeat_interleave(rep, dim=3), "repeat the heads (dim 2), not the features (dim 3)"),
                    ])


# ----------------------------------------------------------------------------------- a GQA step
def _gqa_ref(q, k, v, diag_offset=True, tile=False, scale=None):
    """Full causal attention of the last T of S positions, in float64. q (B, H, T, D),
    k/v (B, n_kv, S, D) -> (B, H, T, D)."""
    B, H, T, D = q.shape
    n_kv, S = k.size(1), k.size(2)
    heads = torch.arange(H) % n_kv if tile else torch.arange(H) // (H // n_kv)
    kk, vv = k.double()[:, heads], v.double()[:, heads]                     # (B, H, S, D)
    s = q.double() @ kk.transpose(-2, -1) * (D ** -0.5 if scale is None else scale)
    mask = torch.ones(T, S, dtype=torch.bool).tril(S - T if diag_offset else 0)
    return s.masked_fill(~mask, float("-inf")).softmax(-1) @ vv


def check_gqa_step(gqa_step) -> None:
    """gqa_step(q, k, v, cache_k, cache_v) -> (out, cache_k, cache_v). q (B, H, T, D): queries of the
    T new tokens; k, v (B, n_kv, T, D): their keys and values; cache_k, cache_v (B, n_kv, S0, D):
    the S0 earlier tokens (S0 may be 0). Append k, v to the caches; new token t (at position S0 + t)
    attends causally to positions 0 .. S0 + t; query head h reads KV head h // (H / n_kv); scores
    scaled by 1/sqrt(D). Returns out (B, H, T, D) and the grown caches (B, n_kv, S0 + T, D). The
    KV heads are never copied once per query head (no tensor as large as the repeated cache)."""
    with Checker("gqa_step") as c:
        g = torch.Generator().manual_seed(4)
        for n, (B, H, n_kv, T, S0, D, dtype) in enumerate([
                (1, 4, 2, 1, 0, 8, torch.float32), (2, 6, 2, 1, 5, 8, torch.float32),
                (1, 8, 1, 3, 4, 16, torch.float32), (2, 4, 4, 2, 3, 8, torch.float32),
                (1, 6, 3, 2, 6, 12, torch.float64), (2, 4, 2, 1, 9, 8, torch.float32)]):
            S = S0 + T
            q = torch.randn(B, H, T, D, generator=g, dtype=dtype)
            k_all = torch.randn(B, n_kv, S, D, generator=g, dtype=dtype)
            v_all = torch.randn(B, n_kv, S, D, generator=g, dtype=dtype)
            if n == 5:                                       # non-contiguous: (B, S, n_kv, D) transposed
                q = torch.randn(B, T, H, D, generator=g).transpose(1, 2)
                k_all = torch.randn(B, S, n_kv, D, generator=g).transpose(1, 2)
                v_all = torch.randn(B, S, n_kv, D, generator=g).transpose(1, 2)
            ck, cv = k_all[:, :, :S0], v_all[:, :, :S0]
            kn, vn = k_all[:, :, S0:], v_all[:, :, S0:]
            w = Watch()
            got = c.call(gqa_step, q, kn, vn, ck, cv, forbidden=FORBIDDEN["gqa_step"], watch=w,
                         hint="scores of one group: (B, n_kv, rep * T, D) @ (B, n_kv, D, S) -> "
                              "(B, n_kv, rep * T, S); view q as (B, n_kv, rep, T, D) first")
            what = (f"(B, H, n_kv, T, S0, D) = {(B, H, n_kv, T, S0, D)}, {str(q.dtype)[6:]}"
                    + (" (non-contiguous)" if n == 5 else ""))
            if not isinstance(got, (tuple, list)) or len(got) != 3:
                raise CheckFailed(f"{what}: return (out, cache_k, cache_v), got {type(got).__name__}")
            out, gk, gv = got
            exp = _gqa_ref(q, k_all, v_all).to(q.dtype)
            mistakes = [(_gqa_ref(q, k_all, v_all, tile=True),
                         "query head h reads KV head h // (H / n_kv): consecutive query heads share a KV head "
                         "(0,0,1,1,...), not h % n_kv (0,1,0,1,...)"),
                        (_gqa_ref(q, k_all, v_all, scale=1.0), "scale the scores by 1/sqrt(D)")]
            if S0 > 0:
                mistakes.append((_gqa_ref(q, k_all, v_all, diag_offset=False), "the new tokens are the LAST T of "
                                 "S0 + T positions: token t sees positions <= S0 + t, i.e. torch.ones(T, S).tril(S0) "
                                 "(a plain tril() on (T, S) hides the cache from the first new token)"))
            if T > 1:
                mistakes.append((_nomask(q, k_all, v_all), "with several new tokens a causal mask is needed: token "
                                 "t must not see the tokens after it"))
            if S0 > 0:
                mistakes.append((_gqa_ref(q, kn, vn), "attend over the cache AND the new tokens: append first"))
            c.close(out, exp, what + ": out", dtype=q.dtype, mistakes=mistakes)
            c.close(gk, k_all, what + ": the key cache after the step", dtype=q.dtype, mistakes=[
                (kn, "append the new keys to the cache, don't replace it"),
                (torch.cat([kn, ck], 2), "append the new keys AFTER the cached ones")])
            c.close(gv, v_all, what + ": the value cache after the step", dtype=q.dtype, mistakes=[
                (vn, "append the new values to the cache, don't replace it")])
            repeated = B * H * S * D * q.element_size()
            if H > n_kv and S0 > 0 and w.observed and w.peak_bytes >= repeated:
                raise CheckFailed(f"{what}: your code made a tensor of {w.peak_bytes:,} bytes, as large as the "
                                  f"cache repeated for every query head ({repeated:,} bytes): let each KV head "
                                  "serve its rep = H / n_kv query heads by viewing q as (B, n_kv, rep * T, D) "
                                  "instead of copying k and v")
            c.passed += 1


def _nomask(q, k, v):
    B, H, T, D = q.shape
    heads = torch.arange(H) // (H // k.size(1))
    s = q.double() @ k.double()[:, heads].transpose(-2, -1) * D ** -0.5
    return s.softmax(-1) @ v.double()[:, heads]


# ----------------------------------------------------------------------------------- cache size
def check_kv_cache_size(kv_cache_size) -> None:
    """kv_cache_size(n_layers, n_heads, n_kv_heads, head_dim, context_len, batch, bytes_per_value)
    -> bytes of the whole model's KV cache (a whole number)."""
    import numpy as np

    with Checker("kv_cache_size") as c:
        for L, H, n_kv, D, ctx, B, nb in [(32, 32, 32, 128, 4096, 1, 2), (32, 32, 8, 128, 4096, 3, 2),
                                          (61, 128, 128, 128, 131072, 1, 2), (4, 4, 1, 32, 64, 12, 4),
                                          (80, 64, 8, 128, 8192, 16, 1), (1, 2, 2, 8, 1, 1, 4)]:
            exp = 2 * L * n_kv * D * ctx * B * nb
            args = (L, H, n_kv, D, ctx, B, nb)
            if L == 80:                                      # NumPy integers work as well
                args = tuple(np.int64(a) for a in args)
            got = c.call(kv_cache_size, *args)
            c.number(got, exp, f"{L} layers, {H} heads, {n_kv} KV heads of {D}, context {ctx}, batch {B}, "
                     f"{nb} bytes/value", integer=True, mistakes=[
                         (exp / 2, "a token caches a key AND a value: the factor 2 is missing"),
                         (exp * H / n_kv, "use the KV heads (num_key_value_heads), not the query heads"),
                         (exp / L, "every layer has its own cache: multiply by the number of layers"),
                         (exp / B, "every sequence in the batch has its own cache: multiply by batch"),
                         (exp / nb, "multiply the number of values by the bytes per value"),
                         (exp * 8, "bytes, not bits: bytes_per_value is already in bytes"),
                     ])


# ----------------------------------------------------------------------------------- think
def _fit(n_kv, budget, factor=2, layers=32, head_dim=128, ctx=4096):
    return math.floor(budget / (factor * layers * n_kv * head_dim * ctx * 2))


def check_max_batch(answer) -> None:
    """answer = {"MHA": n, "GQA-8": n, "MQA": n}: how many 4,096-token sequences fit in the KV cache
    of a 7B-class model (32 layers, 32 query heads of 128, bf16) on an 80 GB GPU (80e9 bytes) that
    also holds the 13.5e9 bytes of weights."""
    with Checker("max_batch") as c:
        c.answer(answer)
        c.keys(answer, ["MHA", "GQA-8", "MQA"], "the answer")
        for name, n_kv in (("MHA", 32), ("GQA-8", 8), ("MQA", 1)):
            budget = 80e9 - 13.5e9
            exp = _fit(n_kv, budget)
            c.number(answer[name], exp, f"{name} ({n_kv} KV heads): sequences that fit", integer=True, mistakes=[
                (exp + 1, "round DOWN: a sequence that only partly fits does not fit"),
                (_fit(n_kv, 80e9), "the weights (13.5e9 bytes) take their share of the 80 GB first"),
                (_fit(n_kv, 80 * 2**30 - 13.5e9), "80 GB is 80e9 bytes (GB, not GiB)"),
                (_fit(n_kv, budget, factor=1), "a token caches a key AND a value: the factor 2 is missing"),
                (_fit(32, budget) if n_kv != 32 else -1, "count the KV heads, not the query heads"),
            ])


# ----------------------------------------------------------------------------------- experiment
def check_batch_experiment(results) -> None:
    """results = {"positions": cached tokens per sequence at the end, "tokens_per_s": {batch: new
    tokens per second (all sequences)}, "cache_bytes": {batch: bytes of the whole model's cache at the
    end}} for batch sizes 1, 4 and 16, decoding with the cache on the baseline preset in float32."""
    with Checker("batch_experiment") as c:
        c.answer(results)
        c.keys(results, ["positions", "tokens_per_s", "cache_bytes"], "the results")
        pos = c.in_range(results["positions"], 2, 64, "cached positions per sequence",
                         why="the baseline's context is 64 tokens")
        tps = {int(k): v for k, v in results["tokens_per_s"].items()}
        cb = {int(k): v for k, v in results["cache_bytes"].items()}
        c.keys(tps, [1, 4, 16], "tokens_per_s (by batch size)")
        c.keys(cb, [1, 4, 16], "cache_bytes (by batch size)")
        for b in (1, 4, 16):
            c.in_range(tps[b], 1.0, 1e7, f"tokens/s at batch {b}")
            exp = b * int(pos) * BASELINE_CACHE_BYTES_PER_TOKEN
            c.number(cb[b], exp, f"cache bytes at batch {b} ({int(pos)} positions of the baseline in float32)",
                     integer=True, mistakes=[
                         (exp / b, "each sequence of the batch has its own cache"),
                         (exp / 2, "bfloat16 would halve it; the model runs in float32 (4 bytes)")])
