"""Checks for chapter 06 (mini DeepSeek-V3 assembled): active FFN parameters of a layer, training
FLOPs per token, an FFN width that equalises compute, and wiring a block from the parts."""

from __future__ import annotations

import math

from torch import nn

from ..attention import MLA, CausalSelfAttention
from ..config import ModelConfig, get_preset
from ..flops import ffn_params, flops_per_token
from ..layers import MLP
from ..moe import MoE
from .checking import Checker


def _ffn_cases() -> list[tuple[str, ModelConfig, int]]:
    v3 = get_preset("deepseek-v3")
    mini = get_preset("mini-v3")
    return [("baseline, layer 0", get_preset("baseline"), 0),
            ("mini-v3, layer 0 (dense)", mini, 0),
            ("mini-v3, layer 2 (MoE)", mini, 2),
            ("baseline+moe, layer 3", get_preset("baseline+moe"), 3),
            ("mini-v3 with 2 shared experts, layer 1", mini.replace(n_shared_experts=2), 1),
            ("DeepSeek-V3, layer 2 (dense)", v3, 2),
            ("DeepSeek-V3, layer 3 (MoE)", v3, 3)]


def check_ffn_active_params(ffn_active_params) -> None:
    """ffn_active_params(cfg, layer_id) -> parameters ONE token uses in that layer's FFN: a dense
    SwiGLU (3 x hidden_size x intermediate_size) in the first `first_k_dense_replace` layers (and
    everywhere when n_routed_experts == 0); else the router (n_routed_experts x hidden_size), the
    shared experts and the num_experts_per_tok chosen routed experts (3 x d x moe_intermediate_size each)."""
    with Checker("ffn_active_params") as c:
        for name, cfg, i in _ffn_cases():
            d, E, K, S = cfg.hidden_size, cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.n_shared_experts
            I, Ie = cfg.intermediate_size, cfg.moe_intermediate_size
            exp = ffn_params(cfg, i)[1]
            mistakes = [(3 * d * I, "this layer is a MoE layer: only layers < first_k_dense_replace are dense")]
            if cfg.is_moe and i < cfg.first_k_dense_replace:
                mistakes = [(E * d + (S + K) * 3 * d * Ie,
                             "the first first_k_dense_replace layers keep a dense FFN (intermediate_size)")]
            elif cfg.is_moe:
                mistakes += [(E * d + (S + E) * 3 * d * Ie, "a token uses only K routed experts, not all of them"),
                             (E * d + K * 3 * d * Ie, "the shared experts run on every token: count them"),
                             ((S + K) * 3 * d * Ie, "the router's n_routed_experts x d weights are used too"),
                             (E * d + (S + K) * 2 * d * Ie, "a SwiGLU expert has three matrices (gate, up, down)"),
                             (K * d + (S + K) * 3 * d * Ie, "the router scores every routed expert, not only K")]
            else:
                mistakes = [(2 * d * I, "a SwiGLU FFN has three matrices (gate, up, down)")]
            c.close(float(ffn_active_params(cfg, i)), float(exp), name, atol=0.5, rtol=0, mistakes=mistakes)


def _flops_cases() -> list[tuple[str, ModelConfig, int]]:
    return [("baseline, T=64", get_preset("baseline", vocab_size=82), 64),
            ("baseline+mla, T=64", get_preset("baseline+mla", vocab_size=82), 64),
            ("baseline+mtp, T=64", get_preset("baseline+mtp", vocab_size=82), 64),
            ("mini-v3, T=64", get_preset("mini-v3", vocab_size=82), 64),
            ("mini-v3 with v_head_dim 16, T=256", get_preset("mini-v3", v_head_dim=16), 256),
            ("DeepSeek-V3, T=4096", get_preset("deepseek-v3"), 4096)]


def check_training_flops_per_token(training_flops_per_token) -> None:
    """training_flops_per_token(cfg, seq_len) -> 3 x forward FLOPs of one token: 2 per weight it
    is multiplied by (minids.flops.matmul_params_per_token(cfg, mtp=True): main layers, head and
    the MTP modules, which run in every training step), plus the two attention matmuls of every
    layer, main and MTP: 2 x num_attention_heads x seq_len x (qk head dim + v head dim)."""
    from ..flops import attention_flops_per_token, matmul_params_per_token
    with Checker("training_flops_per_token") as c:
        for name, cfg, T in _flops_cases():
            exp = flops_per_token(cfg, T)
            D = cfg.num_nextn_predict_layers
            c.close(float(training_flops_per_token(cfg, T)), exp, name, rtol=1e-9, atol=0.5, mistakes=[
                (exp / 3, "training costs 3 x the forward pass (forward 1, backward 2)"),
                (2 * exp / 3, "the backward pass costs twice the forward: 3 x forward in all"),
                (flops_per_token(cfg, T, mtp=False),
                 "the MTP module(s) run in every training step: count their weights and attention"),
                (3 * (2 * matmul_params_per_token(cfg, mtp=True) + attention_flops_per_token(cfg, T)),
                 f"the {D} MTP block(s) attend too: attention over num_hidden_layers + D layers"),
                (3 * 2 * matmul_params_per_token(cfg, mtp=True), "add the attention matmuls (q.k and a.v)"),
                (3 * (2 * matmul_params_per_token(cfg, mtp=True) + attention_flops_per_token(
                    cfg.replace(v_head_dim=cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) if cfg.is_mla else cfg,
                    T, layers=cfg.num_hidden_layers + D)),
                 "the value head dim (v_head_dim) is not the query/key head dim"),
            ])


def _width_reference(cfg: ModelConfig, target: float, seq_len: int) -> int:
    f1 = flops_per_token(cfg.replace(intermediate_size=1), seq_len)
    f2 = flops_per_token(cfg.replace(intermediate_size=2), seq_len)
    w = max(1, math.ceil(1 + (target - f1) / (f2 - f1)) - 1)
    while flops_per_token(cfg.replace(intermediate_size=w), seq_len) < target:   # float safety
        w += 1
    while w > 1 and flops_per_token(cfg.replace(intermediate_size=w - 1), seq_len) >= target:
        w -= 1
    return w


def check_equal_flops_width(equal_flops_width) -> None:
    """equal_flops_width(cfg, target_flops, seq_len) -> the smallest intermediate_size (dense FFN
    width) whose training FLOPs per token (minids.flops.flops_per_token) reach target_flops: the
    new idea never gets less compute than the baseline, and at most one FFN column more. This is
    how chapter 06 sized its ablation presets."""
    base = get_preset("baseline", vocab_size=82)
    target = flops_per_token(base, 64)
    cases = [("baseline+mla vs baseline", get_preset("baseline+mla", vocab_size=82), target, 64),
             ("baseline+mtp vs baseline", get_preset("baseline+mtp", vocab_size=82), target, 64),
             ("MQA (1 KV head) vs baseline", base.replace(num_key_value_heads=1), target, 64),
             ("GQA (2 KV heads) vs baseline", base.replace(num_key_value_heads=2), target, 64),
             ("baseline with MTP, 2 depths, vs baseline", base.replace(num_nextn_predict_layers=2), target, 64),
             ("baseline vs 1.5 x its FLOPs at T=256", base, 1.5 * flops_per_token(base, 256), 256)]
    with Checker("equal_flops_width") as c:
        for name, cfg, tgt, T in cases:
            exp = _width_reference(cfg, tgt, T)
            L, D, d = cfg.num_hidden_layers, cfg.num_nextn_predict_layers, cfg.hidden_size
            mistakes = []
            if D:   # the width also sets the MTP block's FFN: a slope over the main layers only
                I0 = cfg.intermediate_size
                f0 = flops_per_token(cfg, T)
                mistakes.append((round(I0 + (tgt - f0) / (3 * 2 * 3 * d * L)),
                                 "the MTP block's FFN has intermediate_size too: the width acts in "
                                 "num_hidden_layers + num_nextn_predict_layers blocks"))
            mistakes.append((exp - 1, "the smallest width that REACHES the target: round up, not down"))
            got = equal_flops_width(cfg, tgt, T)
            c.close(float(got), float(exp), name, atol=0, rtol=0, mistakes=mistakes)
            f_got = flops_per_token(cfg.replace(intermediate_size=int(got)), T)
            c.true(0 <= f_got / tgt - 1 < 0.01, f"{name}: FLOPs per token at least the target, within 1%")


def check_block_parts(block_parts) -> None:
    """block_parts(cfg, layer_id) -> (attention, ffn): MLA(cfg) when cfg.kv_lora_rank > 0 else
    CausalSelfAttention(cfg); MoE(cfg) when the layer is past first_k_dense_replace in a MoE
    config, else MLP(hidden_size, intermediate_size). What minids.model.Block builds."""
    from ..model import Block
    cases = [("baseline, layer 0", get_preset("baseline"), 0),
             ("baseline+mla, layer 1", get_preset("baseline+mla"), 1),
             ("baseline+moe, layer 0", get_preset("baseline+moe"), 0),
             ("baseline+moe, layer 1", get_preset("baseline+moe"), 1),
             ("mini-v3, layer 3", get_preset("mini-v3"), 3),
             ("mini-v3 with 2 dense layers, layer 1", get_preset("mini-v3", first_k_dense_replace=2), 1)]

    def n(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    with Checker("block_parts") as c:
        for name, cfg, i in cases:
            ref = Block(cfg, i)
            attn, ffn = block_parts(cfg, i)
            want_attn = MLA if cfg.is_mla else CausalSelfAttention
            c.true(isinstance(attn, want_attn),
                   f"{name}: attention should be {want_attn.__name__} (kv_lora_rank={cfg.kv_lora_rank}), "
                   f"got {type(attn).__name__}")
            want_ffn = MoE if cfg.is_moe_layer(i) else MLP
            hint = ("layers before first_k_dense_replace keep a dense MLP" if cfg.is_moe and want_ffn is MLP
                    else "")
            c.true(isinstance(ffn, want_ffn),
                   f"{name}: the FFN should be {want_ffn.__name__}, got {type(ffn).__name__}. {hint}".rstrip())
            c.close(float(n(attn)), float(n(ref.attn)), f"{name}: attention parameters")
            c.close(float(n(ffn)), float(n(ref.ffn)), f"{name}: FFN parameters", mistakes=[
                (float(3 * cfg.hidden_size * cfg.moe_intermediate_size * (cfg.n_shared_experts or 1)),
                 "the dense MLP's hidden size is intermediate_size, not moe_intermediate_size")])
