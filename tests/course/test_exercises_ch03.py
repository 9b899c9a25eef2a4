"""Every chapter-03 check passes on the solution and on valid alternatives, fails on the stub,
rejects plausible mistakes and names the ones it lists."""

import numpy as np
import pytest
import torch
from nbutil import Wrong, check_contract, notebook_namespace

from minids.checks import (
    CheckFailed,
    check_absorbed_decode_scores,
    check_cache_bytes_v3,
    check_kv_rank_experiment,
    check_merge_cost,
    check_merge_weights,
)
from minids.layers import apply_rotary_emb

SOL = notebook_namespace("solutions/03_mla.ipynb")
STUB = notebook_namespace("solutions/03_mla.ipynb", stubbed=True)

# measured by the solution's experiment cell (2026-11-29, this machine)
MEASURED = {"energy": {"untrained": {4: 0.457, 8: 0.676, 16: 0.878, 32: 0.983, 64: 1.0},
                       "trained": {4: 0.95, 8: 0.99, 16: 0.999, 32: 1.0, 64: 1.0}},
            "rank_for_90": {"untrained": 18, "trained": 3}}
SOL["results"] = MEASURED


# ------------------------------------------------------------------ merge_weights
def _merge(wq_b, wkv_b, wo, H, nope, rope, v, flat_q=False, transpose_qk=False, wo_rows=False):
    q_rank, r, d = wq_b.size(1), wkv_b.size(1), wo.size(0)
    w_uq = wq_b[:H * nope].reshape(H, nope, q_rank) if flat_q else wq_b.reshape(H, nope + rope, q_rank)[:, :nope]
    w_kv = wkv_b.reshape(H, nope + v, r)
    w_uk, w_uv = w_kv[:, :nope], w_kv[:, nope:]
    w_o = wo.reshape(d, v, H).permute(2, 0, 1) if wo_rows else wo.reshape(d, H, v).transpose(0, 1)
    qk = w_uk.transpose(1, 2) @ w_uq if transpose_qk else w_uq.transpose(1, 2) @ w_uk
    return qk, w_o @ w_uv


def _merge_loops(wq_b, wkv_b, wo, H, nope, rope, v):   # valid: a loop over heads, float64, einsum
    qk, ov = [], []
    for h in range(H):
        uq = wq_b[h * (nope + rope): h * (nope + rope) + nope].double()           # (nope, q_rank)
        uk = wkv_b[h * (nope + v): h * (nope + v) + nope].double()                # (nope, r)
        uv = wkv_b[h * (nope + v) + nope: (h + 1) * (nope + v)].double()          # (v, r)
        qk.append(torch.einsum("nq,nr->qr", uq, uk))
        ov.append(wo[:, h * v:(h + 1) * v].double() @ uv)
    return torch.stack(qk).to(wq_b.dtype), torch.stack(ov).to(wq_b.dtype)


# ------------------------------------------------------------------ absorbed_decode_scores
def _scores(q_nope, q_pe, c_kv, k_pe, w_uk, freqs, start, scale, zero_pos=False, rotate_k=False, no_q_rope=False,
            no_offset=False, half_scale=False):
    T, S = q_nope.size(1), c_kv.size(1)
    f = freqs[:T] if zero_pos else freqs[start:start + T]
    qr = q_pe if no_q_rope else apply_rotary_emb(q_pe, f)
    kr = apply_rotary_emb(k_pe[:, :, None], freqs[:S])[:, :, 0] if rotate_k else k_pe
    content = torch.einsum("bthd,hdc,bsc->bhts", q_nope, w_uk, c_kv)
    rope = torch.einsum("bthr,bsr->bhts", qr, kr)
    s = content * scale + rope if half_scale else (content + rope) * scale
    return s.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(0 if no_offset else S - T), float("-inf"))


def _scores_expanded(q_nope, q_pe, c_kv, k_pe, w_uk, freqs, start, scale):   # valid: expands the keys
    T, S = q_nope.size(1), c_kv.size(1)
    k_nope = torch.einsum("bsc,hdc->bshd", c_kv, w_uk)                         # (B, S, H, nope)
    q = torch.cat([q_nope, apply_rotary_emb(q_pe, freqs[start:start + T])], -1)
    k = torch.cat([k_nope, k_pe[:, :, None].expand(-1, -1, w_uk.size(0), -1)], -1)
    s = torch.einsum("bthd,bshd->bhts", q, k) * scale
    return s.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(S - T), float("-inf"))


def _scores_finite(*a):                            # masks with a large negative number instead of -inf
    s = SOL["absorbed_decode_scores"](*a)
    return s.masked_fill(s == float("-inf"), -1e9)


CACHE = {"mla": 70_272, "mha": 3_997_696}
MERGE = {"unmerged": 262_144, "merged": 786_432, "cheaper": "unmerged", "break_even_q_rank": 128 * 512 / 384}

CASES = {
    "merge_weights": (check_merge_weights, [
        Wrong(lambda *a: _merge(*a, flat_q=True), named="head by head, [W^UQ_h; W^QR_h]"),
        Wrong(lambda *a: _merge(*a, wo_rows=True), named="columns of wo"),
        Wrong(lambda wq_b, wkv_b, wo, H, nope, rope, v: (
            _merge(wq_b, wkv_b, wo, H, nope, rope, v)[0],
            wo.reshape(H, -1, v) @ wkv_b.reshape(H, nope + v, -1)[:, nope:]), named="a head owns COLUMNS"),
        lambda *a: _merge(*a, transpose_qk=True),
        lambda *a: tuple(t.double() for t in _merge(*a)),                          # dtype contract
    ], [_merge_loops, lambda *a: [t.numpy() for t in _merge(*[x.contiguous() if torch.is_tensor(x) else x
                                                             for x in a])]]),
    "absorbed_decode_scores": (check_absorbed_decode_scores, [
        Wrong(lambda *a: _scores(*a, zero_pos=True), named="THEIR positions"),
        Wrong(lambda *a: _scores(*a, rotate_k=True), named="already rotated"),
        Wrong(lambda *a: _scores(*a, no_q_rope=True), named="rotate q_pe"),
        Wrong(lambda *a: _scores(*a, no_offset=True), named="LAST T"),
        Wrong(lambda *a: _scores(*a, half_scale=True), named="scale both parts"),
        _scores_finite,
    ], [_scores_expanded]),
    "bytes_answer": (check_cache_bytes_v3, [
        Wrong({"mla": 512 * 61 * 2, "mha": CACHE["mha"]}, named="rope key"),
        Wrong({"mla": (512 + 64 * 128) * 61 * 2, "mha": CACHE["mha"]}, named="shared by all heads"),
        Wrong({"mla": 40_960 * 61 * 2, "mha": CACHE["mha"]}, named="naive"),
        Wrong({"mla": CACHE["mla"], "mha": CACHE["mha"] // 2}, named="key AND a value"),
        {"mla": 576, "mha": 32_768},
    ], [{"mla": np.int64(70_272), "mha": 3_997_696.0}]),
    "merge_answer": (check_merge_cost, [
        Wrong({**MERGE, "unmerged": 196_608}, named="count both steps"),
        Wrong({**MERGE, "cheaper": "merged"}, named="thin"),
        Wrong({**MERGE, "merged": 2 * 786_432}, named="not FLOPs"),
        {**MERGE, "break_even_q_rank": 512},
    ], [{**MERGE, "break_even_q_rank": 171, "cheaper": "Unmerged"}]),
    "results": (check_kv_rank_experiment, [
        {**MEASURED, "rank_for_90": {"untrained": 18, "trained": 12}},                      # inconsistent
        {**MEASURED, "energy": {**MEASURED["energy"], "trained": {4: 0.99, 8: 0.95, 16: 0.999, 32: 1, 64: 1}}},
        {**MEASURED, "energy": {**MEASURED["energy"], "untrained": {4: 0.01, 8: 0.1, 16: 0.3, 32: 0.6, 64: 0.9}}},
        {"energy": MEASURED["energy"]},
    ], [{"energy": {k: {str(r): np.float64(v) for r, v in d.items()} for k, d in MEASURED["energy"].items()},
         "rank_for_90": {"untrained": 18.0, "trained": np.int64(3)}}]),
}


test_check_passes_on_solution, test_check_fails_on_stub, test_check_rejects_plausible_mistakes = \
    check_contract(CASES, SOL, STUB)


def test_transposed_merge_is_named_when_the_shapes_agree(capsys):
    with pytest.raises(CheckFailed):
        check_merge_weights(lambda *a: _merge(*a, transpose_qk=True))
    out = capsys.readouterr().out
    assert "expected shape" in out                       # the first case: (q_lora_rank, r) vs (r, q_lora_rank)


def test_checks_leave_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    check_merge_weights(SOL["merge_weights"])
    check_absorbed_decode_scores(SOL["absorbed_decode_scores"])
    assert torch.equal(torch.get_rng_state(), before)
