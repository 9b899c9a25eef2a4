"""Every chapter-06 check passes on the solution, fails on the stub, and rejects plausible mistakes."""

import pytest
from nbutil import check_contract, notebook_namespace

from minids.attention import MLA, CausalSelfAttention
from minids.config import get_preset
from minids.checks import (
    CheckFailed,
    check_block_parts,
    check_equal_flops_width,
    check_ffn_active_params,
    check_training_flops_per_token,
)
from minids.flops import flops_per_token, matmul_params_per_token
from minids.layers import MLP
from minids.moe import MoE

SOL = notebook_namespace("solutions/06_mini_deepseek_v3.ipynb")
STUB = notebook_namespace("solutions/06_mini_deepseek_v3.ipynb", stubbed=True)


def _all_experts(cfg, i):                       # counts every routed expert, not the K chosen
    d = cfg.hidden_size
    if not cfg.is_moe_layer(i):
        return 3 * d * cfg.intermediate_size
    return cfg.n_routed_experts * d + (cfg.n_shared_experts + cfg.n_routed_experts) * 3 * d * cfg.moe_intermediate_size


def _every_layer_moe(cfg, i):                   # ignores first_k_dense_replace
    d = cfg.hidden_size
    if not cfg.is_moe:
        return 3 * d * cfg.intermediate_size
    experts = cfg.n_shared_experts + cfg.num_experts_per_tok
    return cfg.n_routed_experts * d + experts * 3 * d * cfg.moe_intermediate_size


def _no_router(cfg, i):
    d = cfg.hidden_size
    if not cfg.is_moe_layer(i):
        return 3 * d * cfg.intermediate_size
    return (cfg.n_shared_experts + cfg.num_experts_per_tok) * 3 * d * cfg.moe_intermediate_size


def _attention_main_layers_only(cfg, T):
    v = cfg.v_head_dim if cfg.is_mla else cfg.head_dim
    att = 2 * cfg.num_hidden_layers * cfg.num_attention_heads * T * (cfg.qk_head_dim + v)
    return 3 * (2 * matmul_params_per_token(cfg, mtp=True) + att)


def _rounding_width(cfg, target, T):           # the nearest width, which may fall short of the target
    f1 = flops_per_token(cfg.replace(intermediate_size=1), T)
    f2 = flops_per_token(cfg.replace(intermediate_size=2), T)
    return round(1 + (target - f1) / (f2 - f1))


def _width_main_layers_only(cfg, target, T):   # forgets the MTP block's FFN
    f0 = flops_per_token(cfg, T)
    return round(cfg.intermediate_size + (target - f0) / (18 * cfg.hidden_size * cfg.num_hidden_layers))


def _always_mha_moe(cfg, i):
    ffn = MoE(cfg) if cfg.is_moe else MLP(cfg.hidden_size, cfg.intermediate_size)
    return CausalSelfAttention(cfg.replace(kv_lora_rank=0)) if not cfg.is_mla else MLA(cfg), ffn


def _no_mla(cfg, i):
    c = cfg.replace(kv_lora_rank=0, q_lora_rank=0)
    return CausalSelfAttention(c), (MoE(cfg) if cfg.is_moe_layer(i) else MLP(cfg.hidden_size, cfg.intermediate_size))


CASES = {
    "ffn_active_params": (check_ffn_active_params, [_all_experts, _every_layer_moe, _no_router]),
    "training_flops_per_token": (check_training_flops_per_token, [
        lambda cfg, T: flops_per_token(cfg, T, training=False),
        lambda cfg, T: flops_per_token(cfg, T, mtp=False),
        _attention_main_layers_only,
    ]),
    "equal_flops_width": (check_equal_flops_width, [_rounding_width, _width_main_layers_only]),
    "block_parts": (check_block_parts, [_always_mha_moe, _no_mla]),
}


test_check_passes_on_solution, test_check_fails_on_stub, test_check_rejects_plausible_mistakes = \
    check_contract(CASES, SOL, STUB)


def test_mistakes_are_named():
    with pytest.raises(CheckFailed, match="only K routed experts"):
        check_ffn_active_params(_all_experts)
    with pytest.raises(CheckFailed, match="3 x the forward"):
        check_training_flops_per_token(CASES["training_flops_per_token"][1][0])
    with pytest.raises(CheckFailed, match="MTP module"):
        check_training_flops_per_token(CASES["training_flops_per_token"][1][1])


def test_presets_used_by_the_checks_exist():
    for name in ("baseline", "baseline+mla", "baseline+moe", "baseline+mtp", "mini-v3"):
        get_preset(name)
