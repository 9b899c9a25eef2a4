"""Checks for chapter 07 (the economics): FLOPs of a MoE layer, GPU-hours from tokens and MFU,
the MFU a reported figure implies, and KV-cache memory of MLA against MHA."""

from __future__ import annotations

from ..config import ModelConfig, get_preset
from ..cost import gpu_hours, implied_mfu
from ..flops import ffn_params, flops_6nd, peak_flops
from .checking import Checker


def _moe_configs() -> list[tuple[str, ModelConfig]]:
    return [
        ("DeepSeek-V3", get_preset("deepseek-v3")),
        ("mini-v3", get_preset("mini-v3")),
        ("no shared expert", get_preset("mini-v3", n_shared_experts=0, num_experts_per_tok=3)),
        ("two shared experts", get_preset("mini-v3", n_shared_experts=2, moe_intermediate_size=40)),
    ]


def check_moe_flops_per_token(moe_flops_per_token) -> None:
    """moe_flops_per_token(cfg) -> forward FLOPs per token of ONE DeepSeekMoE FFN layer: the
    router's scores for every routed expert, the shared experts and the K chosen routed experts
    (each a SwiGLU with three d x moe_intermediate_size matrices); 2 FLOPs per weight."""
    with Checker("moe_flops_per_token") as c:
        for name, cfg in _moe_configs():
            d, I, E = cfg.hidden_size, cfg.moe_intermediate_size, cfg.n_routed_experts
            K, S = cfg.num_experts_per_tok, cfg.n_shared_experts
            exp = 2 * ffn_params(cfg, cfg.first_k_dense_replace)[1]         # the package's count
            c.close(float(moe_flops_per_token(cfg)), float(exp), name, mistakes=[
                (2 * (E * d + (S + E) * 3 * d * I),
                 "a token runs only the K chosen routed experts, not all of them"),
                (E * d + (S + K) * 3 * d * I, "one weight costs 2 FLOPs (a multiply and an add)"),
                (2 * (S + K) * 3 * d * I, "the router scores every routed expert too: E x d weights"),
                (2 * (E * d + K * 3 * d * I), "the shared experts run on every token"),
                (2 * (E * d + (S + K) * 2 * d * I), "a SwiGLU expert has three matrices: gate, up and down"),
                (2 * (K * d + (S + K) * 3 * d * I),
                 "the router scores all E routed experts, not just the K chosen"),
            ])


def check_training_gpu_hours(training_gpu_hours) -> None:
    """training_gpu_hours(active_params, tokens, mfu, peak_flops) -> GPU-hours to train with
    6 x active_params FLOPs per token at `mfu` of a GPU's `peak_flops` (FLOP/s)."""
    with Checker("training_gpu_hours") as c:
        for N, D, mfu, device in [(36.6e9, 14.8e12, 0.35, "H800"), (1e9, 20e9, 0.5, "A100"),
                                  (824_960, 1_536_000, 0.1, "H100")]:
            peak = peak_flops(device)
            exp = gpu_hours(flops_6nd(N, D), mfu, device)
            what = f"N={N:.3g}, D={D:.3g}, MFU {mfu}, {device}"
            c.close(float(training_gpu_hours(N, D, mfu, peak)), exp, what,
                    mistakes=[
                        (exp * 3600, "that is GPU-seconds: divide by 3600 for hours"),
                        (exp / 3, "training costs 6 FLOPs per parameter per token (2 forward + 4 backward)"),
                        (exp * mfu * mfu, "divide by the MFU: a lower utilisation needs MORE hours"),
                        (exp * mfu, "use the achieved throughput mfu x peak, not the peak alone"),
                    ])


def check_implied_mfu(mfu_from_report) -> None:
    """mfu_from_report(total_flops, gpu_hours, peak_flops) -> the fraction of the peak that the
    reported GPU-hours imply: total_flops / (gpu_hours * 3600 * peak_flops)."""
    with Checker("implied_mfu") as c:
        for flops, hours, device, dtype in [(4.319e24, 2_664_000, "H800", "bfloat16"),
                                            (4.319e24, 2_664_000, "H800", "float8"),
                                            (8.1e12, 0.01, "A100", "bfloat16")]:
            peak = peak_flops(device, dtype)
            exp = implied_mfu(flops, hours, device, dtype)
            what = f"{flops:.3g} FLOPs in {hours:,} {device} hours ({dtype})"
            c.close(float(mfu_from_report(flops, hours, peak)), exp, what,
                    mistakes=[
                        (exp * 3600, "hours are 3600 seconds: multiply the hours by 3600 before dividing"),
                        (1 / exp, "MFU = work done / work possible, not the other way round"),
                        (exp * 100, "return a fraction (0.45), not a percentage (45)"),
                    ])


def _kv_reference_gib(cfg: ModelConfig, context_len: int, bytes_per_value: int) -> float:
    # per token per layer: MLA caches c_KV and the shared rope key; MHA/GQA a key and a value per KV head
    per_token = (cfg.kv_lora_rank + cfg.qk_rope_head_dim if cfg.is_mla
                 else 2 * cfg.num_key_value_heads * cfg.head_dim)
    return cfg.num_hidden_layers * context_len * per_token * bytes_per_value / 2 ** 30


def check_kv_cache_gib(kv_cache_gib) -> None:
    """kv_cache_gib(cfg, context_len, bytes_per_value) -> GiB (2**30 bytes) of one sequence's
    KV cache over all cfg.num_hidden_layers layers."""
    v3 = get_preset("deepseek-v3")
    v3_mha = v3.replace(kv_lora_rank=0, q_lora_rank=0, num_key_value_heads=128, head_dim=128)
    v3_gqa = v3_mha.replace(num_key_value_heads=8)
    with Checker("kv_cache_gib") as c:
        for name, cfg, T, b in [("V3 (MLA), 128K, bf16", v3, 128 * 1024, 2),
                                ("V3 with MHA, 128K, bf16", v3_mha, 128 * 1024, 2),
                                ("V3 with GQA (8 KV heads), 32K, fp8", v3_gqa, 32 * 1024, 1),
                                ("mini-v3 (MLA), 64, fp32", get_preset("mini-v3"), 64, 4),
                                ("baseline (MHA), 64, fp32", get_preset("baseline"), 64, 4)]:
            exp = _kv_reference_gib(cfg, T, b)
            L = cfg.num_hidden_layers
            mistakes = [(exp * 2 ** 30 / 1e9, "GiB are 2**30 bytes, not 10**9"),
                        (exp / L, "every layer keeps its own cache: multiply by num_hidden_layers"),
                        (exp / b, "multiply by bytes_per_value")]
            if cfg.is_mla:
                H, nope, v = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.v_head_dim
                mistakes += [
                    (exp * cfg.kv_lora_rank / (cfg.kv_lora_rank + cfg.qk_rope_head_dim),
                     "MLA also caches the shared rope key k_R (qk_rope_head_dim values)"),
                    (exp * H * (nope + cfg.qk_rope_head_dim + v) / (cfg.kv_lora_rank + cfg.qk_rope_head_dim),
                     "MLA caches the latent c_KV and k_R, not the expanded per-head keys and values"),
                ]
            else:
                mistakes += [(exp / 2, "cache a key AND a value for every KV head (factor 2)"),
                             (exp * cfg.num_attention_heads / cfg.num_key_value_heads,
                              "GQA caches num_key_value_heads heads, not num_attention_heads")]
            c.close(float(kv_cache_gib(cfg, T, b)), exp, name, mistakes=mistakes)
        ratio = kv_cache_gib(v3_mha, 128 * 1024, 2) / kv_cache_gib(v3, 128 * 1024, 2)
        c.close(float(ratio), 32768 / 576, "MHA / MLA for V3's dimensions (32,768 / 576 values per token)")
