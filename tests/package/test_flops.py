"""Accounting (minids/flops.py, minids/cost.py): parameter counts against the model built on the meta device,
FLOPs per token against torch's own FLOP counter, and the V3 report's cost figures."""

import math
import random

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from minids.config import PRESETS, ModelConfig, get_preset
from minids.cost import (
    V3_GPU_HOURS,
    V3_PRETRAIN_SEQ_LEN,
    V3_PRICE_PER_GPU_HOUR,
    V3_TOKENS,
    cost_table,
    dollar_cost,
    gpu_hours,
    implied_mfu,
)
from minids.flops import (
    PEAK_FLOPS,
    attention_flops_per_token,
    flops_6nd,
    flops_per_token,
    matmul_params_per_token,
    meta_param_count,
    param_count,
    peak_flops,
    training_flops,
)
from minids.model import MiniDeepSeek


def random_config(seed: int) -> ModelConfig:
    """A small valid config drawn at random: MHA/GQA/MQA or MLA (with or without q_lora), dense
    or MoE (shared experts, groups, dense first layers), 0-2 MTP modules, tied or not."""
    r = random.Random(seed)
    heads = r.choice([1, 2, 4])
    kw = dict(vocab_size=r.randint(5, 70), hidden_size=8 * r.randint(1, 6),
              intermediate_size=r.randint(4, 50), num_hidden_layers=r.randint(1, 4),
              num_attention_heads=heads, max_position_embeddings=32,
              num_nextn_predict_layers=r.choice([0, 1, 2]), tie_word_embeddings=r.random() < 0.3)
    if r.random() < 0.5:
        kw.update(kv_lora_rank=r.randint(2, 24), q_lora_rank=r.choice([0, r.randint(2, 24)]),
                  qk_nope_head_dim=r.randint(1, 12), qk_rope_head_dim=2 * r.randint(1, 4),
                  v_head_dim=r.randint(1, 12))
    else:
        kw.update(num_key_value_heads=r.choice([h for h in (1, 2, 4) if heads % h == 0]),
                  head_dim=2 * r.randint(1, 8))
    if r.random() < 0.6:
        n_group = r.choice([1, 2])
        n_exp = n_group * r.randint(2, 4)
        kw.update(n_routed_experts=n_exp, n_shared_experts=r.randint(0, 2), n_group=n_group,
                  topk_group=n_group, num_experts_per_tok=r.randint(1, n_exp),
                  moe_intermediate_size=r.randint(2, 20),
                  first_k_dense_replace=r.randint(0, kw["num_hidden_layers"]))
    return ModelConfig(**kw)


RANDOM_SEEDS = range(16)


# ------------------------------------------------------------------------------- parameters
def test_v3_counts_from_the_config():
    p = param_count(get_preset("deepseek-v3"))
    assert round(p.main / 1e9) == 671, p.main                  # the report's 671B
    assert abs(p.main / 1e9 - 671.03) < 0.005, p.main           # HF meta-device count: 671.03B
    assert abs(p.mtp / 1e9 - 11.61) < 0.005, p.mtp             # ... + 11.61B for the MTP module
    assert p.total == p.main + p.mtp
    # "37B activated": 36.63B without the embedding table (DeepSeek's convention), 37.55B with it
    assert round(p.active_non_embedding / 1e9) == 37, p.active_non_embedding
    assert abs(p.active_non_embedding / 37e9 - 1) < 0.011, p.active_non_embedding
    assert abs(p.active / 37e9 - 1) < 0.015, p.active
    assert p.active_non_embedding < 37e9 < p.active
    assert p.embedding == 129280 * 7168


def test_v3_meta_device_count_matches():
    c = get_preset("deepseek-v3")
    assert meta_param_count(c) == param_count(c).total


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_meta_count_equals_analytic(name):
    c = get_preset(name)
    assert meta_param_count(c) == param_count(c).total


@pytest.mark.parametrize("seed", RANDOM_SEEDS)
def test_random_configs_meta_count_equals_analytic(seed):
    c = random_config(seed)
    p = param_count(c)
    assert meta_param_count(c) == p.total, c
    m = MiniDeepSeek(c) if p.total < 200_000 else None
    if m is not None:                                          # the MTP share, too
        assert sum(t.numel() for t in m.mtp.parameters()) == p.mtp


def test_random_configs_cover_the_cases():
    cs = [random_config(s) for s in RANDOM_SEEDS]
    assert any(c.is_mla and c.q_lora_rank for c in cs) and any(c.is_mla and not c.q_lora_rank for c in cs)
    assert any(not c.is_mla and c.num_key_value_heads < c.num_attention_heads for c in cs)
    assert any(c.is_moe and c.n_shared_experts for c in cs) and any(not c.is_moe for c in cs)
    assert any(c.num_nextn_predict_layers for c in cs) and any(c.tie_word_embeddings for c in cs)


def test_active_counts_k_experts_not_all():
    c = get_preset("mini-v3")
    p = param_count(c)
    more = param_count(c.replace(num_experts_per_tok=c.num_experts_per_tok + 1))
    moe_layers = c.num_hidden_layers - c.first_k_dense_replace
    assert more.active - p.active == moe_layers * 3 * c.hidden_size * c.moe_intermediate_size
    assert more.total == p.total


# ------------------------------------------------------------------------------- FLOPs
def _counted_flops(c: ModelConfig, T: int, train: bool) -> int:
    """What torch's FlopCounterMode counts for a batch of 2 sequences of T tokens (attention
    through the math kernel, so its matmuls are visible to the counter; MoE through the loop
    dispatch, which runs each expert on exactly its tokens: the fast one pads to equal loads)."""
    torch.manual_seed(0)
    m = MiniDeepSeek(c.replace(moe_dispatch="loop") if c.is_moe else c)
    x = torch.randint(0, c.vocab_size, (2, T))
    m.train(train)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        if train:
            m(x, x).loss.backward()
        else:
            m(x)
    return fc.get_total_flops()


@pytest.mark.parametrize("seed", [*RANDOM_SEEDS, "baseline", "mini-v3"])
def test_flops_per_token_equals_torch_flop_counter(seed):
    c = get_preset(seed) if isinstance(seed, str) else random_config(seed)
    T = 16
    assert _counted_flops(c, T, train=False) == 2 * T * flops_per_token(c, T, training=False)
    # training: forward + backward of the main model on T tokens; the MTP module at depth k sees
    # only the T - k positions that still have a target (and attends over T - k keys)
    exp = T * flops_per_token(c, T, mtp=False)
    for k in range(1, c.num_nextn_predict_layers + 1):
        one = c.replace(num_nextn_predict_layers=1)
        exp += (T - k) * (flops_per_token(one, T - k, mtp=True) - flops_per_token(one, T - k, mtp=False))
    assert _counted_flops(c, T, train=True) == 2 * exp


def test_training_is_three_forwards_and_causal_halves_attention():
    c = get_preset("deepseek-v3")
    assert flops_per_token(c, 4096) == 3 * flops_per_token(c, 4096, training=False, mtp=True)
    full = attention_flops_per_token(c, 4096)
    assert attention_flops_per_token(c, 4096, causal=True) == full * 4097 / 8192
    assert full == 2 * 61 * 128 * 4096 * (192 + 128)          # MLA: qk 128+64, v 128
    # attention is ~21% of V3's training FLOPs at 4K tokens; the matmuls are the rest
    share = 3 * full / flops_per_token(c, 4096, mtp=False)
    assert 0.19 < share < 0.23, share


def test_matmul_params_are_active_params_without_embedding_and_norms():
    c = get_preset("deepseek-v3")
    p = param_count(c)
    norms = p.active_non_embedding - matmul_params_per_token(c)
    L, d = c.num_hidden_layers, c.hidden_size
    assert norms == L * (2 * d + c.q_lora_rank + c.kv_lora_rank) + d


def test_6nd_rule_is_close_to_the_full_count_without_attention():
    c = get_preset("deepseek-v3")
    p = param_count(c)
    rule = flops_6nd(p.active_non_embedding, 1.0)
    exact = flops_per_token(c, 1, mtp=False) - 3 * attention_flops_per_token(c, 1)
    assert abs(rule / exact - 1) < 1e-3


# ------------------------------------------------------------------------------- cost
def test_v3_table1_dollars_from_function_calls():
    hours = sum(V3_GPU_HOURS.values())
    assert hours == 2_788_000
    assert dollar_cost(hours, V3_PRICE_PER_GPU_HOUR) == pytest.approx(5.576e6, abs=1e-6)
    assert dollar_cost(V3_GPU_HOURS["pre-training"]) == pytest.approx(5.328e6)
    # "training on each trillion tokens requires 180K H800 GPU hours" (V3 report, section 1)
    assert V3_GPU_HOURS["pre-training"] / (V3_TOKENS / 1e12) == pytest.approx(180_000)


def test_v3_implied_mfu_is_sane_and_round_trips():
    c = get_preset("deepseek-v3")
    total = training_flops(c, V3_TOKENS, V3_PRETRAIN_SEQ_LEN)
    mfu = implied_mfu(total, V3_GPU_HOURS["pre-training"], "H800", "bfloat16")
    assert 0.40 < mfu < 0.50, mfu                              # 45.5% of the BF16 peak
    mfu_causal = implied_mfu(training_flops(c, V3_TOKENS, V3_PRETRAIN_SEQ_LEN, causal=True),
                             V3_GPU_HOURS["pre-training"])
    assert 0.35 < mfu_causal < mfu
    mfu_fp8 = implied_mfu(total, V3_GPU_HOURS["pre-training"], "H800", "float8")
    assert mfu_fp8 == pytest.approx(mfu * 989 / 1979)
    assert gpu_hours(total, mfu, "H800") == pytest.approx(V3_GPU_HOURS["pre-training"])


def test_cost_table():
    c = get_preset("deepseek-v3")
    t = cost_table(c, V3_TOKENS, "H800", 0.4, 2.0)
    assert t["seq_len"] == 4096 and t["params_main"] == param_count(c).main
    assert t["cost_usd"] == pytest.approx(2.0 * t["gpu_hours"])
    assert t["gpu_hours"] == pytest.approx(t["total_flops"] / (0.4 * 989e12 * 3600))
    text = str(t)
    assert "671.03B" in text and "H800" in text and "40.0%" in text
    small = cost_table(get_preset("baseline"), 2000 * 12 * 64, "H100", 0.3, 2.0)
    assert small["seq_len"] == 64 and small["tokens"] == 1_536_000
    assert 0 < small["cost_usd"] < 0.01 and "$" in str(small)


def test_peak_table_lookup():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert peak_flops("H800", "fp8") == 1979e12 and peak_flops("H200", "float32") == 67e12
    assert peak_flops("Tesla T4", "float16") == 65e12
    for name in ("H100", "H800", "H200", "A100"):
        assert name in PEAK_FLOPS


@pytest.mark.parametrize("call, names", [
    (lambda: gpu_hours(1e20, 0.0), "mfu"),
    (lambda: gpu_hours(1e20, -0.1), "mfu"),
    (lambda: gpu_hours(1e20, 1.5), "mfu"),
    (lambda: gpu_hours(1e20, math.nan), "mfu"),
    (lambda: gpu_hours(1e20, 0.4, "TPU v9"), "device"),
    (lambda: gpu_hours(1e20, 0.4, "NVIDIA L40S"), "device"),
    (lambda: peak_flops("T4", "bfloat16"), "dtype"),
    (lambda: training_flops(get_preset("baseline"), -1, 64), "tokens"),
    (lambda: training_flops(get_preset("baseline"), 100, 0), "seq_len"),
    (lambda: flops_6nd(1e9, -5), "tokens"),
    (lambda: dollar_cost(-1.0), "hours"),
    (lambda: dollar_cost(10.0, -2.0), "price_per_gpu_hour"),
    (lambda: implied_mfu(1e20, 0), "hours"),
    (lambda: cost_table(get_preset("baseline"), 1e6, mfu=2.0), "mfu"),
])
def test_bad_inputs_name_the_parameter(call, names):
    with pytest.raises(ValueError, match=names) as e:
        call()
    msg = str(e.value)
    assert "must" in msg, msg
