"""Every chapter-02 check passes on the solution and on valid alternatives, fails on the stub,
rejects plausible mistakes and names the ones it lists."""

import math

import numpy as np
import pytest
import torch
from nbutil import Wrong, check_contract, notebook_namespace

from minids.checks import (
    CheckFailed,
    check_batch_experiment,
    check_gqa_step,
    check_kv_cache_size,
    check_max_batch,
    check_repeat_kv,
)

SOL = notebook_namespace("solutions/02_kv_cache_gqa.ipynb")
STUB = notebook_namespace("solutions/02_kv_cache_gqa.ipynb", stubbed=True)

# measured by the solution's experiment cell (2026-11-29, this machine, under load)
MEASURED = {"positions": 56, "tokens_per_s": {1: 222.0, 4: 857.0, 16: 1741.0},
            "cache_bytes": {1: 229_376, 4: 917_504, 16: 3_670_016}}
SOL["results"] = MEASURED


# ------------------------------------------------------------------ repeat_kv
def _rep_expand(kv, n):                          # valid: expand + reshape
    B, S, n_kv, D = kv.shape
    return kv[:, :, :, None].expand(B, S, n_kv, n, D).reshape(B, S, n_kv * n, D)


def _rep_index(kv, n):                           # valid: index with h // n_rep (NumPy indices)
    return kv[:, :, np.arange(kv.size(2) * n) // n]


def _rep_loop(kv, n):                            # valid: a loop and cat
    return torch.cat([kv[:, :, h:h + 1] for h in range(kv.size(2)) for _ in range(n)], dim=2)


# ------------------------------------------------------------------ gqa_step
def _step(q, k, v, ck, cv, tile=False, mask=True, offset=True, scale=None, repeat=False, before=False,
          replace=False):
    K, V = torch.cat([ck, k], 2), torch.cat([cv, v], 2)
    B, H, T, D = q.shape
    n_kv, S = K.size(1), K.size(2)
    rep = H // n_kv
    if repeat or tile:
        heads = torch.arange(H) % n_kv if tile else torch.arange(H) // rep
        Kh, Vh = K[:, heads], V[:, heads]                    # materialises the repeated cache
        if before:
            Kh, Vh = ck[:, heads], cv[:, heads]
        s = q @ Kh.transpose(-2, -1) * (D ** -0.5 if scale is None else scale)
        Sx = Kh.size(2)
        if mask and T > 1:
            s = s.masked_fill(~torch.ones(T, Sx, dtype=torch.bool).tril(Sx - T if offset else 0), float("-inf"))
        out = s.softmax(-1) @ Vh
    else:
        qg = q.reshape(B, n_kv, rep, T, D)
        s = torch.einsum("bgrtd,bgsd->bgrts", qg, K) * (D ** -0.5 if scale is None else scale)
        if mask:
            s = s.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(S - T if offset else 0), float("-inf"))
        out = torch.einsum("bgrts,bgsd->bgrtd", s.softmax(-1), V).reshape(B, H, T, D)
    return (out, k, v) if replace else (out, K, V)


def _step_loops(q, k, v, ck, cv):                # valid: loop over groups and query heads, float64 inside
    K, V = torch.cat([ck, k], 2), torch.cat([cv, v], 2)
    B, H, T, D = q.shape
    n_kv, S = K.size(1), K.size(2)
    rep = H // n_kv
    out = torch.empty(B, H, T, D, dtype=torch.float64)
    mask = torch.ones(T, S, dtype=torch.bool).tril(S - T)
    for h in range(H):
        s = (q[:, h].double() @ K[:, h // rep].double().transpose(-2, -1)) / math.sqrt(D)
        out[:, h] = s.masked_fill(~mask, float("-inf")).softmax(-1) @ V[:, h // rep].double()
    return out.to(q.dtype), K, V


def _step_list(q, k, v, ck, cv):                 # valid: returns a list
    return list(SOL["gqa_step"](q, k, v, ck, cv))


# ------------------------------------------------------------------ cache size, answers
def _size(L, H, n_kv, D, ctx, B=1, nb=2, factor=2, heads=None, bits=False):
    return factor * L * (heads or n_kv) * D * ctx * B * nb * (8 if bits else 1)


ANSWER = {"MHA": 30, "GQA-8": 123, "MQA": 990}

CASES = {
    "repeat_kv": (check_repeat_kv, [
        Wrong(lambda kv, n: kv.repeat(1, 1, n, 1), named="tiles the heads"),
        Wrong(lambda kv, n: kv.repeat_interleave(n, dim=1), named="not the positions"),
        lambda kv, n: kv,
        lambda kv, n: _rep_expand(kv.float(), n),                                  # dtype contract (bf16 in)
    ], [_rep_expand, _rep_index, _rep_loop]),
    "gqa_step": (check_gqa_step, [
        Wrong(lambda *a: _step(*a, tile=True), named="h // (H / n_kv)"),
        Wrong(lambda *a: _step(*a, offset=False), named="LAST T"),
        Wrong(lambda *a: _step(*a, mask=False), named="causal mask is needed"),
        Wrong(lambda *a: _step(*a, scale=1.0), named="1/sqrt(D)"),
        Wrong(lambda *a: _step(*a, replace=True), named="don't replace it"),
        lambda *a: _step(*a, repeat=True),                                         # copies the cache per head
        lambda q, k, v, ck, cv: torch.nn.functional.scaled_dot_product_attention,  # returns a function
    ], [_step_loops, _step_list]),
    "kv_cache_size": (check_kv_cache_size, [
        Wrong(lambda *a: _size(*a, factor=1), named="factor 2"),
        Wrong(lambda L, H, n_kv, D, ctx, B=1, nb=2: _size(L, H, n_kv, D, ctx, B, nb, heads=H), named="query heads"),
        Wrong(lambda L, H, n_kv, D, ctx, B=1, nb=2: _size(1, H, n_kv, D, ctx, B, nb), named="number of layers"),
        Wrong(lambda L, H, n_kv, D, ctx, B=1, nb=2: _size(L, H, n_kv, D, ctx, 1, nb), named="multiply by batch"),
        Wrong(lambda *a: _size(*a, bits=True), named="bytes, not bits"),
        lambda *a: float(_size(*a)) + 0.5,
    ], [lambda *a: np.int64(_size(*[int(x) for x in a])), lambda *a: float(_size(*a)),
        lambda *a: torch.tensor(_size(*[int(x) for x in a]))]),
    "batch_answer": (check_max_batch, [
        Wrong({"MHA": 31, "GQA-8": 124, "MQA": 991}, named="round DOWN"),
        Wrong({"MHA": 37, "GQA-8": 149, "MQA": 1192}, named="weights"),
        Wrong({"MHA": 61, "GQA-8": 247, "MQA": 1981}, named="factor 2"),
        Wrong({"MHA": 33, "GQA-8": 134, "MQA": 1078}, named="GB, not GiB"),
        {"MHA": 30, "GQA-8": 123},
    ], [{"MHA": 30.0, "GQA-8": np.int64(123), "MQA": torch.tensor(990)}]),
    "results": (check_batch_experiment, [
        {**MEASURED, "cache_bytes": {1: 229_376, 4: 229_376, 16: 229_376}},       # one cache for all
        {**MEASURED, "tokens_per_s": {1: 0.0, 4: 857.0, 16: 1741.0}},
        {**MEASURED, "positions": 500},
        {"positions": 56, "tokens_per_s": {1: 222.0}},
    ], [{**MEASURED, "tokens_per_s": {"1": 222, "4": 857.5, "16": np.float32(1741.0)}}]),
}


test_check_passes_on_solution, test_check_fails_on_stub, test_check_rejects_plausible_mistakes = \
    check_contract(CASES, SOL, STUB)


def test_materialising_the_repeated_cache_is_named(capsys):
    with pytest.raises(CheckFailed, match="as large as the cache repeated"):
        check_gqa_step(lambda *a: _step(*a, repeat=True))


def test_forbidden_calls_are_named():
    def sdpa_step(q, k, v, ck, cv):
        K, V = torch.cat([ck, k], 2), torch.cat([cv, v], 2)
        return torch.nn.functional.scaled_dot_product_attention(q, K, V, enable_gqa=True), K, V
    with pytest.raises(CheckFailed, match="forbids"):
        check_gqa_step(sdpa_step)
