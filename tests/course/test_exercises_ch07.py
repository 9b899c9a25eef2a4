"""Every chapter-07 check passes on the solution, fails on the stub, and rejects plausible mistakes."""

import pytest
from nbutil import check_contract, notebook_namespace

from minids.checks import (
    CheckFailed,
    check_implied_mfu,
    check_kv_cache_gib,
    check_moe_flops_per_token,
    check_training_gpu_hours,
)

SOL = notebook_namespace("solutions/07_economics.ipynb")
STUB = notebook_namespace("solutions/07_economics.ipynb", stubbed=True)


def _kv_values(cfg):
    if cfg.is_mla:
        return cfg.kv_lora_rank + cfg.qk_rope_head_dim
    return 2 * cfg.num_key_value_heads * cfg.head_dim


def _moe(c, experts, matrices=3, factor=2):
    """factor x (router + experts x SwiGLU-like matrices) for config c."""
    d, inter = c.hidden_size, c.moe_intermediate_size
    return factor * (c.n_routed_experts * d + experts * matrices * d * inter)


CASES = {
    "moe_flops_per_token": (check_moe_flops_per_token, [
        lambda c: _moe(c, c.n_shared_experts + c.n_routed_experts),            # all routed experts
        lambda c: _moe(c, c.n_shared_experts + c.num_experts_per_tok, factor=1),  # MACs, not FLOPs
        lambda c: 2 * c.num_experts_per_tok * 3 * c.hidden_size * c.moe_intermediate_size,  # no router/shared
        lambda c: _moe(c, c.n_shared_experts + c.num_experts_per_tok, matrices=2),  # not SwiGLU
    ]),
    "training_gpu_hours": (check_training_gpu_hours, [
        lambda N, D, mfu, peak: 6 * N * D / (mfu * peak),                # seconds, not hours
        lambda N, D, mfu, peak: 2 * N * D / (mfu * peak) / 3600,         # forward only
        lambda N, D, mfu, peak: 6 * N * D * mfu / peak / 3600,           # MFU multiplied
        lambda N, D, mfu, peak: 6 * N * D / peak / 3600,                 # MFU ignored
    ]),
    "mfu_from_report": (check_implied_mfu, [
        lambda F, h, peak: F / (h * peak),                               # hours used as seconds
        lambda F, h, peak: 100 * F / (h * 3600 * peak),                  # a percentage
        lambda F, h, peak: h * 3600 * peak / F,                          # upside down
    ]),
    "kv_cache_gib": (check_kv_cache_gib, [
        lambda c, T, b=2: c.num_hidden_layers * T * _kv_values(c) * b / 1e9,           # GB, not GiB
        lambda c, T, b=2: T * _kv_values(c) * b / 2**30,                               # one layer
        lambda c, T, b=2: c.num_hidden_layers * T * b / 2**30 * (                      # MLA: no rope key
            c.kv_lora_rank if c.is_mla else _kv_values(c)),
        lambda c, T, b=2: c.num_hidden_layers * T * b / 2**30 * (                      # MHA: keys only
            _kv_values(c) if c.is_mla else c.num_key_value_heads * c.head_dim),
        lambda c, T, b=2: c.num_hidden_layers * T * b / 2**30 * (                      # expanded
            c.num_attention_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim) if c.is_mla
            else 2 * c.num_attention_heads * c.head_dim),
    ]),
}


test_check_passes_on_solution, test_check_fails_on_stub, test_check_rejects_plausible_mistakes = \
    check_contract(CASES, SOL, STUB)


@pytest.mark.parametrize("name, wrong, why", [
    ("moe_flops_per_token", CASES["moe_flops_per_token"][1][0], "only the K chosen"),
    ("training_gpu_hours", CASES["training_gpu_hours"][1][0], "GPU-seconds"),
    ("mfu_from_report", CASES["mfu_from_report"][1][1], "percentage"),
    ("kv_cache_gib", CASES["kv_cache_gib"][1][0], "2\\*\\*30"),
    ("kv_cache_gib", CASES["kv_cache_gib"][1][2], "rope key"),
])
def test_mistake_is_named(name, wrong, why, capsys):
    check, _ = CASES[name]
    with pytest.raises(CheckFailed, match=why):
        check(wrong)
