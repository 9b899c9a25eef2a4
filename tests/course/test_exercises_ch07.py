"""Every chapter-07 check passes on the solution and on valid alternatives, fails on the stub, and
rejects plausible mistakes, naming them where the check knows them."""

import contextlib
import io
from decimal import Decimal

import nbformat
import numpy as np
import pytest
from nbutil import ROOT, Wrong, check_contract

from minids.checks import (
    CheckFailed,
    check_economics_numbers,
    check_implied_mfu,
    check_kv_cache_gib,
    check_mfu_experiment,
    check_moe_flops_per_token,
    check_training_cost,
)
from minids.checks.build import CHECK_CALL, strip_solutions

NB = "solutions/07_economics.ipynb"


def _namespace(stubbed: bool) -> dict:
    """The notebook's code without its check calls and without the experiment (it times the CPU;
    nbval runs it, with its check, on the real measurements)."""
    nb = nbformat.read(ROOT / NB, as_version=4)
    ns: dict = {"__name__": "__notebook__"}
    for cell in nb.cells:
        if cell.cell_type != "code" or "experiment" in cell.metadata.get("tags", []) or CHECK_CALL.search(cell.source):
            continue
        src = strip_solutions(cell.source) if stubbed else cell.source
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                exec(compile(src, NB, "exec"), ns)
            except NotImplementedError:
                if not stubbed:
                    raise
    return ns


SOL, STUB = _namespace(False), _namespace(True)


def _v3_cost(mfu):
    return 14.8e12 * 291.85e9 / (mfu * 989e12) / 3600 * 2.0


MEASURED = {"peak_gflops": 26.8, "batch_sizes": [1, 4, 16], "mfu": [0.141, 0.375, 0.494],
            "v3_cost_usd": [_v3_cost(m) for m in (0.141, 0.375, 0.494)]}
SOL["results"] = MEASURED


def _moe(c, experts=None, matrices=3, factor=2, router=True):
    d, inter = c.hidden_size, c.moe_intermediate_size
    n = c.n_shared_experts + c.num_experts_per_tok if experts is None else experts
    return factor * ((c.n_routed_experts * d if router else 0) + n * matrices * d * inter)


def _cost(N, D, mfu, peak, price, gpus, train=6, hours_div=3600, mfu_mult=False, days_gpus=True):
    rate = peak * mfu
    hours = train * N * D / (peak / mfu if mfu_mult else rate) / hours_div
    return {"gpu_hours": hours, "dollars": hours * price, "days": hours / (gpus if days_gpus else 1) / 24}


def _kv(c, T, b=2, B=1, rope=True, layers=True, batch=True, expanded=False, gb=False):
    if c.is_mla:
        per = (c.num_attention_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim) if expanded
               else c.kv_lora_rank + (c.qk_rope_head_dim if rope else 0))
    else:
        per = 2 * c.num_key_value_heads * c.head_dim
    return (B if batch else 1) * (c.num_hidden_layers if layers else 1) * T * per * b / (1e9 if gb else 2 ** 30)


GOOD = {"days_at_40pct": 14.8e12 * 291.85e9 / (0.40 * 989e12) / 2048 / 86400,
        "cost_at_30pct": 14.8e12 * 291.85e9 / (0.30 * 989e12) / 3600 * 2.0,
        "cluster_tokens_per_s": 14.8e12 / (2_664_000 / 2048 * 3600)}


def _answer(**changes):
    return {**GOOD, **changes}


CASES = {
    "moe_flops_per_token": (check_moe_flops_per_token, [
        Wrong(lambda c: _moe(c, experts=c.n_shared_experts + c.n_routed_experts), named="only the K chosen"),
        Wrong(lambda c: _moe(c, factor=1), named="2 FLOPs"),
        Wrong(lambda c: _moe(c, router=False), named="router scores every routed expert"),
        Wrong(lambda c: _moe(c, experts=c.num_experts_per_tok), named="shared experts"),
        Wrong(lambda c: _moe(c, matrices=2), named="three matrices"),
        Wrong(lambda c: _moe(c, factor=6), named="FORWARD FLOPs"),
    ], [lambda c: float(_moe(c)), lambda c: np.int64(_moe(c))]),
    "training_cost": (check_training_cost, [
        Wrong(lambda *a: _cost(*a, hours_div=1), named="GPU-seconds"),
        Wrong(lambda *a: _cost(*a, train=2), named="6 FLOPs per parameter"),
        Wrong(lambda *a: _cost(*a, mfu_mult=True), named="divide by the MFU"),
        Wrong(lambda *a: _cost(*a, days_gpus=False), named="work in parallel"),
        Wrong(lambda N, D, mfu, peak, price, gpus: {**_cost(N, D, mfu, peak, price, gpus),
                                                    "dollars": _cost(N, D, mfu, peak, price, gpus)["days"] * price},
              named="dollars = gpu_hours x price"),
        lambda N, D, mfu, peak, price, gpus: _cost(N, D, mfu, peak, 2.0, gpus),       # ignores the price
        lambda N, D, mfu, peak, price, gpus: (1.0, 2.0, 3.0),
    ], [lambda *a: {k: np.float64(v) for k, v in _cost(*a).items()},
        lambda N, D, mfu, peak, price, gpus: {**_cost(N, D, mfu, peak, price, gpus), "note": "6ND"}]),
    "mfu_from_report": (check_implied_mfu, [
        Wrong(lambda F, h, peak: F / (h * peak), named="3600 seconds"),
        Wrong(lambda F, h, peak: 100 * F / (h * 3600 * peak), named="percentage"),
        Wrong(lambda F, h, peak: h * 3600 * peak / F, named="not the other way round"),
        lambda F, h, peak: F / (h * 3600 * 989e12),                                  # ignores peak_flops
    ], [lambda F, h, peak: float(Decimal(F) / (Decimal(h) * 3600 * Decimal(peak))),
        lambda F, h, peak: np.float32(F / (h * 3600 * peak))]),
    "kv_cache_gib": (check_kv_cache_gib, [
        Wrong(lambda c, T, b=2, B=1: _kv(c, T, b, B, gb=True), named="2**30"),
        Wrong(lambda c, T, b=2, B=1: _kv(c, T, b, B, layers=False), named="num_hidden_layers"),
        Wrong(lambda c, T, b=2, B=1: _kv(c, T, b, B, rope=False), named="rope key"),
        Wrong(lambda c, T, b=2, B=1: _kv(c, T, b, B, expanded=True), named="not the expanded"),
        Wrong(lambda c, T, b=2, B=1: _kv(c, T, b, B, batch=False), named="multiply by batch"),
        Wrong(lambda c, T, b=2, B=1: _kv(c, T, 2, B), named="bytes_per_value"),
    ], [lambda c, T, b=2, B=1: np.float64(_kv(c, T, b, B)),
        lambda c, T, b=2, B=1: B * c.num_hidden_layers * T * (c.kv_lora_rank + c.qk_rope_head_dim if c.is_mla else
                                                              2 * c.num_key_value_heads * c.head_dim) * b / 1024 ** 3]),
    "economics_answer": (check_economics_numbers, [
        Wrong(_answer(days_at_40pct=GOOD["days_at_40pct"] * 2048), named="work in parallel"),
        Wrong(_answer(days_at_40pct=6 * 36.6e9 * 14.8e12 / (0.4 * 989e12) / 2048 / 86400), named="not 6N"),
        Wrong(_answer(cost_at_30pct=2_664_000 * 2.0), named="implied MFU"),
        Wrong(_answer(cost_at_30pct=2_664_000 * 2.0 * 0.30 / 0.455), named="1 / MFU"),
        Wrong(_answer(cluster_tokens_per_s=GOOD["cluster_tokens_per_s"] / 2048), named="per GPU"),
        {k: v for k, v in GOOD.items() if k != "cost_at_30pct"},
    ], [_answer(days_at_40pct=61.7, cost_at_30pct=8.09e6, cluster_tokens_per_s=3.16e6),
        {k: np.float64(v) for k, v in GOOD.items()}]),
    "results": (check_mfu_experiment, [
        {**MEASURED, "mfu": [14.1, 37.5, 49.4]},                                     # percentages
        {**MEASURED, "mfu": [0.5, 0.4, 0.3], "v3_cost_usd": [_v3_cost(m) for m in (0.5, 0.4, 0.3)]},
        {**MEASURED, "v3_cost_usd": [5.3e6, 5.3e6, 5.3e6]},                          # not from the MFUs
        {**MEASURED, "batch_sizes": [16, 4, 1]},
        {**MEASURED, "peak_gflops": 26.8e9},                                         # FLOP/s, not GFLOP/s
        {**MEASURED, "mfu": [0.141, 0.375]},
    ], [{k: np.array(v) for k, v in MEASURED.items()},
        {"peak_gflops": 80.0, "batch_sizes": [2, 8, 32, 64], "mfu": [0.05, 0.2, 0.5, 0.9],
         "v3_cost_usd": [_v3_cost(m) for m in (0.05, 0.2, 0.5, 0.9)]}]),
}

test_check_passes_on_solution, test_check_fails_on_stub, test_check_rejects_plausible_mistakes = \
    check_contract(CASES, SOL, STUB)


def test_the_package_is_forbidden_in_the_coding_tasks(capsys):
    from minids.flops import ffn_params
    with pytest.raises(CheckFailed, match="forbids"):
        check_moe_flops_per_token(lambda c: 2 * ffn_params(c, c.first_k_dense_replace)[1])


def test_implied_mfu_cases_are_possible_runs():
    """Every case's expected MFU is a fraction in (0, 1], as the task promises (a valid answer is
    never asked for an impossible figure)."""
    seen = []
    check_implied_mfu(lambda F, h, peak: seen.append(F / (h * 3600 * peak)) or seen[-1])
    assert seen and all(0 < m <= 1 for m in seen), seen
