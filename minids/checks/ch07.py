"""Checks for chapter 07 (the economics), all derived from config fields and first principles
(the package's FLOP and cost functions are off limits in the coding tasks): FLOPs of a MoE layer,
GPU-hours, dollars and days of a run, the MFU a reported figure implies, KV-cache memory of MLA
against MHA; a think question on Table 1; and the experiment that measures this CPU's MFU and
prices V3 with it."""

from __future__ import annotations

import torch

from ..config import ModelConfig, get_preset
from ..flops import ffn_params, peak_flops
from .checking import Checker, CheckFailed, as_tensor

_PACKAGE = ["minids.flops", "minids.cost", "minids.flops.flops_per_token", "minids.flops.matmul_params_per_token",
            "minids.flops.ffn_params", "minids.flops.param_count", "minids.flops.flops_6nd",
            "minids.flops.training_flops", "minids.flops.kv_cache_values_per_token", "minids.flops.kv_cache_bytes",
            "minids.cost.dollar_cost", "minids.cost.implied_mfu", "minids.cost.cost_table"]
# (not "minids.cost.gpu_hours" by name: the grader's source scan flags any name equal to a listed function's,
# and gpu_hours is a parameter of the MFU task; the module entry "minids.cost" still covers it)
FORBIDDEN = {"moe_flops_per_token": _PACKAGE, "training_cost": _PACKAGE, "implied_mfu": _PACKAGE,
             "kv_cache_gib": _PACKAGE}
POINTS = {"moe_flops_per_token": 1, "training_cost": 1, "implied_mfu": 1, "kv_cache_gib": 1,
          "economics_numbers": 2, "mfu_experiment": 2}
NOT_MUTATED = {"mfu_experiment": "an experiment: it times this CPU; its check is tested on made-up and real "
                                 "measurements instead"}
_FLOOR = ("a floor division of numbers in the thousands or more moves the answer by < 0.1%, inside the 0.5% "
          "tolerance a hand calculation needs")
_E = "14800000000000.0 * 291850000000.0"                # the mutation tool's spelling of 14.8e12 * 291.85e9
_FLOORED = [f"`{_E} / (0.4 * 989000000000000.0) / 2 *...` -> `{_E} / (0.4 * 989000000000000.0) // 2 ...`",
            f"`{_E} / (0.4 * 989000000000000.0)` -> `{_E} // (0.4 * 989000000000000.0)`",
            f"`{_E} / (0.3 * 989000000000000.0) / (60...` -> `{_E} / (0.3 * 989000000000000.0) // (6...`",
            f"`{_E} / (0.3 * 989000000000000.0)` -> `{_E} // (0.3 * 989000000000000.0)`",
            "`14800000000000.0 / (2664000.0 / 2 ** 11 * 60 * 60)` -> "
            "`14800000000000.0 // (2664000.0 / 2 ** 11 * 60 * 60)`",
            "`2664000.0 / 2 ** 11` -> `2664000.0 // 2 ** 11`"]
EQUIVALENT_MUTANTS: dict[str, dict[str, str]] = {"economics_numbers": dict.fromkeys(_FLOORED, _FLOOR)}

V3_PRETRAIN_HOURS = 2_664_000          # V3 report, Table 1 (H800 GPU-hours of pre-training)
V3_TOKENS = 14.8e12                    # V3 report, section 4.2
V3_FLOPS_PER_TOKEN = 291.85e9          # chapter 07: training FLOPs per token at 4,096 keys, MTP included
H800_BF16 = 989e12                     # dense BF16 peak, FLOP/s


def _num(got, what: str) -> float:
    t = as_tensor(got, what)
    if t.numel() != 1 or t.dtype == torch.bool:
        raise CheckFailed(f"{what}: expected one number, got {got!r}")
    return float(t.reshape(()).item())


# ----------------------------------------------------------------------------------- task 1
def _moe_configs() -> list[tuple[str, ModelConfig]]:
    return [
        ("DeepSeek-V3", get_preset("deepseek-v3")),
        ("mini-v3", get_preset("mini-v3")),
        ("mini-v3, no shared expert, top-3", get_preset("mini-v3", n_shared_experts=0, num_experts_per_tok=3)),
        ("mini-v3, two shared experts of 40", get_preset("mini-v3", n_shared_experts=2, moe_intermediate_size=40)),
        ("mini-v3, 16 routed experts, top-1", get_preset("mini-v3", n_routed_experts=16, num_experts_per_tok=1,
                                                         n_group=4, topk_group=2)),
        ("mini-v3 at width 96", get_preset("mini-v3", hidden_size=96)),
    ]


def check_moe_flops_per_token(moe_flops_per_token) -> None:
    """moe_flops_per_token(cfg) -> forward FLOPs per token of ONE DeepSeekMoE FFN layer: the
    router's scores for every routed expert, the shared experts and the K chosen routed experts
    (each a SwiGLU with three d x moe_intermediate_size matrices); 2 FLOPs per weight. From the
    config fields alone (not minids.flops)."""
    with Checker("moe_flops_per_token") as c:
        for name, cfg in _moe_configs():
            d, I, E = cfg.hidden_size, cfg.moe_intermediate_size, cfg.n_routed_experts
            K, S = cfg.num_experts_per_tok, cfg.n_shared_experts
            exp = 2 * ffn_params(cfg, cfg.first_k_dense_replace)[1]         # the package's count
            got = c.call(moe_flops_per_token, cfg, forbidden=FORBIDDEN["moe_flops_per_token"])
            c.number(_num(got, name), exp, name, rtol=1e-9, mistakes=[
                (2 * (E * d + (S + E) * 3 * d * I), "a token runs only the K chosen routed experts, not all of them"),
                (E * d + (S + K) * 3 * d * I, "one weight costs 2 FLOPs (a multiply and an add)"),
                (2 * (S + K) * 3 * d * I, "the router scores every routed expert too: E x d weights"),
                (2 * (E * d + K * 3 * d * I), "the shared experts run on every token"),
                (2 * (E * d + (S + K) * 2 * d * I), "a SwiGLU expert has three matrices: gate, up and down"),
                (2 * (K * d + (S + K) * 3 * d * I), "the router scores all E routed experts, not just the K chosen"),
                (6 * (E * d + (S + K) * 3 * d * I), "the FORWARD FLOPs: 2 per weight (training would be 6)"),
            ])


# ----------------------------------------------------------------------------------- task 2
def _cost(N, D, mfu, peak, price, gpus, train=6.0, per_hour=3600.0):
    hours = train * N * D / (mfu * peak) / per_hour
    return {"gpu_hours": hours, "dollars": hours * price, "days": hours / gpus / 24}


def check_training_cost(training_cost) -> None:
    """training_cost(active_params, tokens, mfu, peak_flops, price_per_gpu_hour, n_gpus) ->
    {"gpu_hours", "dollars", "days"}: 6 x active_params FLOPs per token, at a fraction `mfu` of one
    GPU's `peak_flops` (FLOP/s), priced per GPU-hour; `days` is the wall-clock time on n_gpus GPUs
    working in parallel. Not allowed: minids.flops, minids.cost."""
    with Checker("training_cost") as c:
        for N, D, mfu, device, price, gpus in [
                (36.6e9, 14.8e12, 0.35, "H800", 2.0, 2048), (1e9, 20e9, 0.5, "A100", 1.5, 8),
                (824_960, 1_536_000, 0.1, "H100", 3.0, 1), (7e9, 2e12, 0.45, "B200", 2.5, 512),
                (70e9, 1.4e12, 0.6, "H800", 1.0, 64)]:
            peak = peak_flops(device)
            exp = _cost(N, D, mfu, peak, price, gpus)
            what = f"N={N:.3g}, D={D:.3g}, MFU {mfu}, {device} ({peak:.3g} FLOP/s), ${price}/GPU-hour, {gpus} GPUs"
            got = c.call(training_cost, N, D, mfu, peak, price, gpus, forbidden=FORBIDDEN["training_cost"])
            c.keys(got, ["gpu_hours", "dollars", "days"], what)
            c.number(_num(got["gpu_hours"], "gpu_hours"), exp["gpu_hours"], f"{what}: gpu_hours", rtol=1e-6, mistakes=[
                (exp["gpu_hours"] * 3600, "that is GPU-seconds: divide by 3600 for hours"),
                (exp["gpu_hours"] / 3, "training costs 6 FLOPs per parameter per token (2 forward + 4 backward)"),
                (exp["gpu_hours"] * mfu * mfu, "divide by the MFU: a lower utilisation needs MORE hours"),
                (exp["gpu_hours"] * mfu, "use the achieved throughput mfu x peak, not the peak alone"),
                (exp["gpu_hours"] / gpus, "GPU-hours count every GPU: do not divide by n_gpus here"),
            ])
            c.number(_num(got["dollars"], "dollars"), exp["dollars"], f"{what}: dollars", rtol=1e-6, mistakes=[
                (exp["days"] * price, "the price is per GPU-hour: dollars = gpu_hours x price"),
                (exp["dollars"] / gpus, "the price is per GPU-hour: multiply ALL the GPU-hours by it"),
            ])
            c.number(_num(got["days"], "days"), exp["days"], f"{what}: days", rtol=1e-6, mistakes=[
                (exp["gpu_hours"] / 24, "n_gpus GPUs work in parallel: wall-clock days = gpu_hours / n_gpus / 24"),
                (exp["gpu_hours"] / gpus, "days, not hours: divide by 24"),
            ])


# ----------------------------------------------------------------------------------- task 3
def check_implied_mfu(mfu_from_report) -> None:
    """mfu_from_report(total_flops, gpu_hours, peak_flops) -> the fraction of the peak (in (0, 1]
    for a possible run) that a run of total_flops FLOPs must have achieved to finish in gpu_hours
    GPU-hours: total_flops / (gpu_hours x 3600 x peak_flops). Not allowed: minids.flops, minids.cost."""
    with Checker("implied_mfu") as c:
        for flops, hours, device, dtype in [(4.319e24, 2_664_000, "H800", "bfloat16"),
                                            (4.319e24, 2_664_000, "H800", "float8"),
                                            (1.86e23, 119_000, "H800", "bfloat16"),
                                            (8.1e12, 0.01, "A100", "bfloat16"),
                                            (3.0e21, 4_000, "H100", "bfloat16")]:
            peak = peak_flops(device, dtype)
            exp = flops / (hours * 3600 * peak)
            what = f"{flops:.3g} FLOPs in {hours:,} {device} GPU-hours ({dtype} peak {peak:.3g} FLOP/s)"
            got = c.call(mfu_from_report, flops, hours, peak, forbidden=FORBIDDEN["implied_mfu"])
            c.number(_num(got, what), exp, what, rtol=1e-6, mistakes=[
                (exp * 3600, "hours are 3600 seconds: multiply the hours by 3600 before dividing"),
                (1 / exp, "MFU = work done / work possible, not the other way round"),
                (exp * 100, "return a fraction (0.45), not a percentage (45)"),
            ])


# ----------------------------------------------------------------------------------- task 4
def _kv_reference_gib(cfg: ModelConfig, context_len: int, bytes_per_value: int, batch: int) -> float:
    # per token per layer: MLA caches c_KV and the shared rope key; MHA/GQA a key and a value per KV head
    per_token = (cfg.kv_lora_rank + cfg.qk_rope_head_dim if cfg.is_mla
                 else 2 * cfg.num_key_value_heads * cfg.head_dim)
    return batch * cfg.num_hidden_layers * context_len * per_token * bytes_per_value / 2 ** 30


def check_kv_cache_gib(kv_cache_gib) -> None:
    """kv_cache_gib(cfg, context_len, bytes_per_value, batch) -> GiB (2**30 bytes) of the KV cache of
    `batch` sequences of context_len tokens over all cfg.num_hidden_layers layers: MLA caches
    kv_lora_rank + qk_rope_head_dim values per token and layer; MHA/GQA/MQA a key and a value of
    head_dim for each of num_key_value_heads heads. Not allowed: minids.flops, minids.cost."""
    v3 = get_preset("deepseek-v3")
    v3_mha = v3.replace(kv_lora_rank=0, q_lora_rank=0, num_key_value_heads=128, head_dim=128)
    v3_gqa = v3_mha.replace(num_key_value_heads=8)
    with Checker("kv_cache_gib") as c:
        for name, cfg, T, b, B in [("V3 (MLA), 128K, bf16, 1 sequence", v3, 128 * 1024, 2, 1),
                                   ("V3 with MHA, 128K, bf16, 1 sequence", v3_mha, 128 * 1024, 2, 1),
                                   ("V3 with GQA (8 KV heads), 32K, fp8, 4 sequences", v3_gqa, 32 * 1024, 1, 4),
                                   ("mini-v3 (MLA), 64, fp32, 8 sequences", get_preset("mini-v3"), 64, 4, 8),
                                   ("baseline with MQA, 1K, bf16, 16 sequences",
                                    get_preset("baseline", num_key_value_heads=1), 1024, 2, 16),
                                   ("V3 (MLA, rope key 32), 4K, fp32, 2 sequences", v3.replace(qk_rope_head_dim=32),
                                    4096, 4, 2)]:
            exp = _kv_reference_gib(cfg, T, b, B)
            L = cfg.num_hidden_layers
            mistakes = [(exp * 2 ** 30 / 1e9, "GiB are 2**30 bytes, not 10**9"),
                        (exp / L, "every layer keeps its own cache: multiply by num_hidden_layers"),
                        (exp / b, "multiply by bytes_per_value"),
                        (exp * 2 / b, "use the bytes_per_value argument, not a fixed 2 (bfloat16)"),
                        (exp / B, "every sequence of the batch has its own cache: multiply by batch")]
            if cfg.is_mla:
                H, nope, v = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.v_head_dim
                mistakes += [
                    (exp * cfg.kv_lora_rank / (cfg.kv_lora_rank + cfg.qk_rope_head_dim),
                     "MLA also caches the shared rope key k_R (qk_rope_head_dim values)"),
                    (exp * H * (nope + cfg.qk_rope_head_dim + v) / (cfg.kv_lora_rank + cfg.qk_rope_head_dim),
                     "MLA caches the latent c_KV and k_R, not the expanded per-head keys and values"),
                    (exp * (cfg.kv_lora_rank + H * cfg.qk_rope_head_dim) / (cfg.kv_lora_rank + cfg.qk_rope_head_dim),
                     "the rope key k_R is ONE head shared by all heads: qk_rope_head_dim values, not per head"),
                ]
            else:
                mistakes += [(exp / 2, "cache a key AND a value for every KV head (factor 2)"),
                             (exp * cfg.num_attention_heads / cfg.num_key_value_heads,
                              "GQA/MQA caches num_key_value_heads heads, not num_attention_heads")]
            got = c.call(kv_cache_gib, cfg, T, b, B, forbidden=FORBIDDEN["kv_cache_gib"])
            c.number(_num(got, name), exp, name, rtol=1e-6, mistakes=mistakes)
        ratio = _num(c.call(kv_cache_gib, v3_mha, 128 * 1024, 2, 1), "MHA") / \
            _num(c.call(kv_cache_gib, v3, 128 * 1024, 2, 1), "MLA")
        c.number(ratio, 32768 / 576, "MHA / MLA for V3's dimensions (32,768 / 576 values per token)", rtol=1e-6)


# ----------------------------------------------------------------------------------- task 5
def _v3_seconds(mfu: float) -> float:
    return V3_TOKENS * V3_FLOPS_PER_TOKEN / (mfu * H800_BF16)


def check_economics_numbers(answer) -> None:
    """answer = {"days_at_40pct": wall-clock days 2,048 H800s need for V3's 14.8T pre-training tokens
    at 291.85 GFLOPs per token and 40% of the BF16 peak (989 TFLOP/s), "cost_at_30pct": the
    pre-training's rental cost in dollars at $2 per GPU-hour had the MFU been 30%,
    "cluster_tokens_per_s": the tokens per second the whole cluster processed, from Table 1's
    2,664K GPU-hours and 14.8T tokens alone}."""
    with Checker("economics_numbers") as c:
        c.answer(answer)
        c.keys(answer, ["days_at_40pct", "cost_at_30pct", "cluster_tokens_per_s"], "the answer")
        days = _v3_seconds(0.40) / 2048 / 86400
        six_n = 6 * 36.6e9 * V3_TOKENS / (0.40 * H800_BF16) / 2048 / 86400
        c.number(answer["days_at_40pct"], days, "days on 2,048 H800s at 40% MFU", rtol=0.005, mistakes=[
            (days * 2048, "the 2,048 GPUs work in parallel: divide the GPU-time by 2,048"),
            (days * 24, "days, not hours: a day has 86,400 seconds"),
            (days * 0.4 * 0.4, "divide by the MFU: the GPUs deliver 40% of their peak"),
            (six_n, "use the full count, 291.85 GFLOPs per token (attention and MTP included), not 6N"),
        ])
        cost = _v3_seconds(0.30) / 3600 * 2.0
        c.number(answer["cost_at_30pct"], cost, "the cost at 30% MFU", rtol=0.005, mistakes=[
            (cost / 2048, "price ALL the GPU-hours: every one of the 2,048 GPUs is rented"),
            (cost * 0.3 * 0.3, "a lower MFU costs MORE: divide by 0.30"),
            (V3_PRETRAIN_HOURS * 2.0 * 0.30 / 0.455, "the cost grows as 1 / MFU: x 0.455 / 0.30, not x 0.30 / 0.455"),
            (V3_PRETRAIN_HOURS * 2.0, "that is the cost at the implied MFU (45.5%), Table 1's $5.328M"),
        ])
        tps = V3_TOKENS / (V3_PRETRAIN_HOURS / 2048 * 3600)
        c.number(answer["cluster_tokens_per_s"], tps, "the cluster's tokens per second", rtol=0.005, mistakes=[
            (tps / 2048, "that is per GPU: the cluster is 2,048 GPUs"),
            (tps * 3600, "per second, not per hour"),
            (V3_TOKENS / (V3_PRETRAIN_HOURS * 3600) * 2048 * 2048, "the wall-clock time is GPU-hours / 2,048"),
        ])


# ----------------------------------------------------------------------------------- task 6
def check_mfu_experiment(results) -> None:
    """results = {"peak_gflops": your CPU thread's measured matmul throughput in GFLOP/s,
    "batch_sizes": [at least 3, increasing, the first <= 2], "mfu": [the training MFU of the model
    at each batch size, a fraction], "v3_cost_usd": [V3's pre-training cost at each of those MFUs:
    14.8T tokens x 291.85 GFLOPs / (mfu x 989 TFLOP/s) / 3600 x $2]}. Checks: plausible ranges (an
    MFU in (0, 1.2]: above 1 only by timing noise), larger batches use the CPU better, and the costs
    follow from your MFUs."""
    with Checker("mfu_experiment") as c:
        c.answer(results)
        c.keys(results, ["peak_gflops", "batch_sizes", "mfu", "v3_cost_usd"], "the results")
        c.in_range(results["peak_gflops"], 0.5, 5000, "peak GFLOP/s of one CPU thread",
                   why="a CPU core does between a few and a few hundred GFLOP/s")
        bs = [float(v) for v in as_tensor(results["batch_sizes"], "batch_sizes").flatten().tolist()]
        mfu = as_tensor(results["mfu"], "mfu").double().flatten().tolist()
        cost = as_tensor(results["v3_cost_usd"], "v3_cost_usd").double().flatten().tolist()
        c.true(len(bs) >= 3 and all(b > a for a, b in zip(bs[:-1], bs[1:], strict=True)) and bs[0] <= 2,
               f"batch_sizes: at least 3, increasing, the first 1 or 2; got {bs}")
        c.true(len(mfu) == len(bs) == len(cost), f"one MFU and one cost per batch size: {len(bs)} batch sizes, "
                                                 f"{len(mfu)} MFUs, {len(cost)} costs")
        for b, m in zip(bs, mfu, strict=True):
            c.in_range(m, 1e-4, 1.2, f"MFU at batch {b:g}", why="a fraction of the peak (0.3, not 30); above 1 "
                                                                  "means the peak was measured too low")
        c.true(mfu[-1] > mfu[0], f"the MFU at batch {bs[-1]:g} ({mfu[-1]:.3f}) should exceed the one at batch "
                                 f"{bs[0]:g} ({mfu[0]:.3f}): a larger batch amortises the per-step overhead")
        for b, m, usd in zip(bs, mfu, cost, strict=True):
            exp = _v3_seconds(m) / 3600 * 2.0
            c.number(usd, exp, f"V3's cost at your MFU for batch {b:g} ({m:.3f})", rtol=0.01, mistakes=[
                (exp * m * m, "the cost grows as 1 / MFU: divide by it")])
