"""Checks for chapter 06 (mini DeepSeek-V3 assembled, compared at equal compute): the parameters a
token uses in a layer's FFN, a block's parts and their sizes, a per-component FLOP breakdown from
the config fields alone, the FFN width that equalises training FLOPs (solved from the formula), a
think question on where compute goes, and the equal-FLOPs experiment."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig, get_preset
from ..flops import (
    attention_flops_per_token,
    attention_matmul_params,
    attention_params,
    ffn_params,
    flops_per_token,
    kv_cache_values_per_token,
    param_count,
)
from .checking import Checker, CheckFailed, as_tensor

_FLOPS_FUNCS = ["minids.flops.flops_per_token", "minids.flops.matmul_params_per_token",
                "minids.flops.attention_flops_per_token", "minids.flops.attention_params",
                "minids.flops.attention_matmul_params", "minids.flops.ffn_params", "minids.flops.param_count",
                "minids.flops.meta_param_count", "minids.flops.training_flops"]
FORBIDDEN = {
    "ffn_active_params": ["minids.flops.ffn_params", "minids.flops.param_count",
                          "minids.flops.matmul_params_per_token"],
    "block_parts": ["minids.model.Block", "minids.attention.build_attention"],
    "flops_breakdown": ["minids.flops", *_FLOPS_FUNCS],
}
POINTS = {"ffn_active_params": 1, "block_parts": 1, "flops_breakdown": 2, "equal_flops_width": 2,
          "equal_compute_numbers": 2, "equal_flops_experiment": 2}
NOT_MUTATED = {"equal_flops_experiment": "an experiment: each mutant would re-train two models; its check is "
                                         "tested on made-up and real measurements instead"}
_VOCAB = "the vocabulary enters both models alike: the ratio moves by < 0.05%, inside the tolerance"
_K = "top-k changes the parameters a token USES, not those the model holds: the ratio does not depend on it"
EQUIVALENT_MUTANTS: dict[str, dict[str, str]] = {
    "flops_breakdown": {"`L + k` -> `L`": "every MTP block (layer id >= num_hidden_layers >= first_k_dense_replace) "
                                          "has the same FFN kind as layer num_hidden_layers"},
    "equal_compute_numbers": {
        "`2 * 3 * 128 * 352 / (2 * 4 * (32 + 32))` -> `2 * 3 * 128 * 352 // (2 * 4 * (32 + 32))`":
            "the division is exact (528)",
        "`117` -> `118`": "3 x 118 / 5 = 70.8 rounds up to 71 as 70.2 does",
        "`82` -> `81`": _VOCAB, "`82` -> `83`": _VOCAB, "`82` -> `81` #2": _VOCAB, "`82` -> `83` #2": _VOCAB,
        "`4` -> `3` #3": _K,
        "`get_preset('baseline+moe', vocab_size=82, num_experts_per_tok=4, mo...` -> `get_preset('baseline+moe', "
        "vocab_size=82, moe_intermediate_size=71)`": _K,
    },
}


def _int(got, what: str) -> float:
    """A count: any real number type, as a float (the check compares it exactly)."""
    t = as_tensor(got, what)
    if t.numel() != 1 or t.dtype == torch.bool:
        raise CheckFailed(f"{what}: expected one number, got {got!r}")
    return float(t.reshape(()).item())


# ----------------------------------------------------------------------------------- task 1
def _ffn_cases() -> list[tuple[str, ModelConfig, int]]:
    v3 = get_preset("deepseek-v3")
    mini = get_preset("mini-v3")
    return [("baseline, layer 0", get_preset("baseline"), 0),
            ("mini-v3, layer 0 (dense)", mini, 0),
            ("mini-v3, layer 2 (MoE)", mini, 2),
            ("baseline+moe, layer 3", get_preset("baseline+moe"), 3),
            ("mini-v3 with 2 shared experts, layer 1", mini.replace(n_shared_experts=2), 1),
            ("mini-v3 with top-1 and no shared expert, layer 3", mini.replace(num_experts_per_tok=1,
                                                                               n_shared_experts=0), 3),
            ("mini-v3, its MTP block (layer_id 4)", mini, 4),
            ("baseline with width 200, layer 2", get_preset("baseline", intermediate_size=200), 2),
            ("DeepSeek-V3, layer 2 (dense)", v3, 2),
            ("DeepSeek-V3, layer 3 (MoE)", v3, 3)]


def check_ffn_active_params(ffn_active_params) -> None:
    """ffn_active_params(cfg, layer_id) -> parameters ONE token uses in that layer's FFN: a dense
    SwiGLU (3 x hidden_size x intermediate_size) in the first `first_k_dense_replace` layers (and
    everywhere when n_routed_experts == 0); else the router (n_routed_experts x hidden_size), the
    shared experts and the num_experts_per_tok chosen routed experts (3 x d x moe_intermediate_size
    each). layer_id may be an MTP block's (num_hidden_layers + k - 1)."""
    with Checker("ffn_active_params") as c:
        for name, cfg, i in _ffn_cases():
            d, E, K, S = cfg.hidden_size, cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.n_shared_experts
            I, Ie = cfg.intermediate_size, cfg.moe_intermediate_size
            exp = ffn_params(cfg, i)[1]
            if cfg.is_moe and i < cfg.first_k_dense_replace:
                mistakes = [(E * d + (S + K) * 3 * d * Ie,
                             "the first first_k_dense_replace layers keep a dense FFN (intermediate_size)")]
            elif cfg.is_moe:
                mistakes = [(3 * d * I, "this layer is a MoE layer: only layers < first_k_dense_replace are dense"),
                            (E * d + (S + E) * 3 * d * Ie, "a token uses only K routed experts, not all of them"),
                            (E * d + K * 3 * d * Ie, "the shared experts run on every token: count them"),
                            ((S + K) * 3 * d * Ie, "the router's n_routed_experts x d weights are used too"),
                            (E * d + (S + K) * 2 * d * Ie, "a SwiGLU expert has three matrices (gate, up, down)"),
                            (K * d + (S + K) * 3 * d * Ie, "the router scores every routed expert, not only K")]
            else:
                mistakes = [(2 * d * I, "a SwiGLU FFN has three matrices (gate, up, down)"),
                            (3 * d * 352, "use cfg.intermediate_size, not the baseline's 352")]
            got = c.call(ffn_active_params, cfg, i, forbidden=FORBIDDEN["ffn_active_params"])
            c.number(_int(got, name), exp, name, rtol=0, integer=True, mistakes=mistakes)


# ----------------------------------------------------------------------------------- task 2
def _attention_kind(cfg: ModelConfig) -> str:
    if cfg.is_mla:
        return "MLA"
    if cfg.num_key_value_heads == cfg.num_attention_heads:
        return "MHA"
    return "MQA" if cfg.num_key_value_heads == 1 else "GQA"


def _block_cases() -> list[tuple[str, ModelConfig, int]]:
    return [("baseline, layer 0", get_preset("baseline"), 0),
            ("baseline+mla, layer 1", get_preset("baseline+mla"), 1),
            ("baseline+moe, layer 0", get_preset("baseline+moe"), 0),
            ("baseline+moe, layer 1", get_preset("baseline+moe"), 1),
            ("mini-v3, layer 3", get_preset("mini-v3"), 3),
            ("baseline with 1 KV head, layer 2", get_preset("baseline", num_key_value_heads=1), 2),
            ("baseline with 2 KV heads, layer 3", get_preset("baseline", num_key_value_heads=2), 3),
            ("mini-v3 with 2 dense layers, layer 1", get_preset("mini-v3", first_k_dense_replace=2), 1),
            ("mini-v3 with query compression, its MTP block (layer_id 4)", get_preset("mini-v3", q_lora_rank=48), 4)]


def check_block_parts(block_parts) -> None:
    """block_parts(cfg, layer_id) -> {"attention": "MHA" | "GQA" | "MQA" | "MLA", "ffn": "MLP" | "MoE",
    "attention_params": n, "ffn_params": n}: what minids.model.Block(cfg, layer_id) holds (its attn
    and ffn modules, every parameter counted, norms inside them included). MLA when
    cfg.kv_lora_rank > 0; else MHA (num_key_value_heads == num_attention_heads), MQA (1 KV head) or
    GQA. Not allowed: minids.model.Block, minids.attention.build_attention."""
    from ..model import Block

    def n(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    with Checker("block_parts") as c:
        for name, cfg, i in _block_cases():
            ref = Block(cfg, i)
            got = c.call(block_parts, cfg, i, forbidden=FORBIDDEN["block_parts"])
            c.keys(got, ["attention", "ffn", "attention_params", "ffn_params"], name)
            kind = _attention_kind(cfg)
            kv, h = cfg.num_key_value_heads, cfg.num_attention_heads
            why = {"MLA": "kv_lora_rank > 0: that is MLA",
                   "MHA": "num_key_value_heads == num_attention_heads: every query head has its own key/value head "
                          "(MHA)",
                   "MQA": "num_key_value_heads = 1: one key/value head shared by all query heads is MQA",
                   "GQA": f"num_key_value_heads = {kv}, between 1 and num_attention_heads = {h}: groups of query "
                          "heads share a key/value head (GQA)"}[kind]
            if kind != "MLA":
                mla_hint = "kv_lora_rank = 0: standard attention, not MLA; then " + why
            c.choice(got["attention"], kind, ["MHA", "GQA", "MQA", "MLA"], f"{name}: the attention",
                     mistakes={k: (mla_hint if k == "mla" and kind != "MLA" else why)
                               for k in ("mha", "gqa", "mqa", "mla") if k != kind.lower()})
            want_ffn = "MoE" if cfg.is_moe_layer(i) else "MLP"
            c.choice(got["ffn"], want_ffn, ["MLP", "MoE"], f"{name}: the FFN", mistakes={
                "mlp": "a MoE config's layers from first_k_dense_replace on (MTP blocks included) are MoE",
                "moe": "the first first_k_dense_replace layers of a MoE config keep a dense MLP"})
            na = n(ref.attn)
            a_mistakes = []
            if cfg.is_mla:
                a_mistakes.append((attention_matmul_params(cfg), "count every parameter of the module, the latent "
                                   "RMSNorm weights (kv_norm, q_norm) included"))
            else:
                a_mistakes.append((n(Block(cfg.replace(num_key_value_heads=cfg.num_attention_heads), i).attn),
                                   "K and V have num_key_value_heads heads, not num_attention_heads"))
            c.number(_int(got["attention_params"], f"{name}: attention_params"), na, f"{name}: attention_params",
                     rtol=0, integer=True, mistakes=a_mistakes)
            nf = n(ref.ffn)
            f_mistakes = [(3 * cfg.hidden_size * cfg.moe_intermediate_size * max(cfg.n_shared_experts, 1),
                           "the dense MLP's hidden size is intermediate_size, not moe_intermediate_size"),
                          (ffn_params(cfg, i)[1], "count every parameter the FFN holds (all routed experts), not "
                                                   "only those a token uses")]
            c.number(_int(got["ffn_params"], f"{name}: ffn_params"), nf, f"{name}: ffn_params", rtol=0, integer=True,
                     mistakes=f_mistakes)


# ----------------------------------------------------------------------------------- task 3
KEYS = ("attention_proj", "attention_scores", "ffn", "head", "mtp")


def _breakdown(c: ModelConfig, S: int, norms_in_attn: bool = False, causal: bool = False, all_experts: bool = False,
               no_router: bool = False, mtp_head: bool = True, mtp_proj: bool = True, mtp_scores: bool = True,
               kv_as_q: bool = False, v_as_qk: bool = False) -> dict:
    L, D, d, V = c.num_hidden_layers, c.num_nextn_predict_layers, c.hidden_size, c.vocab_size
    attn = attention_params(c) if norms_in_attn else attention_matmul_params(c)
    if kv_as_q and not c.is_mla:
        attn = attention_matmul_params(c.replace(num_key_value_heads=c.num_attention_heads))
    cc = c.replace(v_head_dim=c.qk_head_dim) if v_as_qk and c.is_mla else c

    def ffn(i):
        if not c.is_moe_layer(i):
            return ffn_params(c, i)[1]
        e = 3 * d * c.moe_intermediate_size
        n = c.n_routed_experts * d if not no_router else 0
        return n + (c.n_shared_experts + (c.n_routed_experts if all_experts else c.num_experts_per_tok)) * e

    scores = attention_flops_per_token(cc, S, causal=causal, layers=1)
    out = {"attention_proj": 2 * L * attn, "attention_scores": L * scores,
           "ffn": 2 * sum(ffn(i) for i in range(L)), "head": 2 * V * d,
           "mtp": sum(2 * ((2 * d * d if mtp_proj else 0) + attn + ffn(L + k) + (V * d if mtp_head else 0))
                      + (scores if mtp_scores else 0) for k in range(D))}
    return out


def _breakdown_cases() -> list[tuple[str, ModelConfig, int]]:
    return [("baseline, seq_len 64", get_preset("baseline", vocab_size=82), 64),
            ("baseline with 2 KV heads, seq_len 128", get_preset("baseline", num_key_value_heads=2), 128),
            ("baseline+mla, seq_len 64", get_preset("baseline+mla", vocab_size=82), 64),
            ("mini-v3, seq_len 64", get_preset("mini-v3", vocab_size=82), 64),
            ("mini-v3 with query compression, v_head_dim 16, seq_len 256",
             get_preset("mini-v3", q_lora_rank=48, v_head_dim=16), 256),
            ("baseline, tied embeddings, 2 MTP depths, seq_len 1", get_preset("baseline", tie_word_embeddings=True,
                                                                             num_nextn_predict_layers=2), 1),
            ("baseline+moe with 4 dense main layers and 2 MoE MTP blocks, seq_len 16",
             get_preset("baseline+moe", first_k_dense_replace=4, num_nextn_predict_layers=2), 16),
            ("DeepSeek-V3, seq_len 4096", get_preset("deepseek-v3"), 4096)]


def check_flops_breakdown(flops_breakdown) -> None:
    """flops_breakdown(cfg, seq_len) -> forward FLOPs per token by component, from the config fields
    alone (2 FLOPs per weight a token is multiplied by): {"attention_proj": the attention projections
    of the main layers (norm weights are not multiplied), "attention_scores": q.k and a.v over
    seq_len keys in the main layers, 2 x layers x heads x seq_len x (qk head dim + v head dim),
    "ffn": the main layers' FFNs (dense, or router + shared + K routed), "head": the output head
    (counted even when tied), "mtp": each MTP module's M_k (2d x d), its block (projections, scores,
    FFN) and the head once more}. The values sum to flops_per_token(cfg, seq_len, training=False,
    mtp=True).
    Not allowed: minids.flops."""
    with Checker("flops_breakdown") as c:
        for name, cfg, S in _breakdown_cases():
            exp = _breakdown(cfg, S)
            total = flops_per_token(cfg, S, training=False, mtp=True)
            assert abs(sum(exp.values()) - total) < 1e-6 * total, name      # the reference adds up
            got = c.call(flops_breakdown, cfg, S, forbidden=FORBIDDEN["flops_breakdown"])
            c.keys(got, KEYS, name)
            variants = {
                "attention_proj": [
                    (_breakdown(cfg, S, norms_in_attn=True), "the latent RMSNorm weights (q_norm, kv_norm) scale "
                                                             "values, they are not multiplied by a matrix: leave "
                                                             "them out"),
                    (_breakdown(cfg, S, kv_as_q=True), "K and V have num_key_value_heads heads (GQA/MQA), not "
                                                       "num_attention_heads")],
                "attention_scores": [
                    (_breakdown(cfg, S, causal=True), "charge every query all seq_len keys (not the causal "
                                                      "average (seq_len + 1) / 2)"),
                    (_breakdown(cfg, S, v_as_qk=True), "a.v uses the VALUE head dim (v_head_dim with MLA), q.k the "
                                                       "query/key head dim (qk_nope + qk_rope)"),
                    ({"attention_scores": 2 * exp["attention_scores"]}, "2 FLOPs per multiply-add, once: "
                                                                        "2 x layers x heads x seq_len x (dqk + dv)")],
                "ffn": [
                    (_breakdown(cfg, S, all_experts=True), "a token uses only the K chosen routed experts"),
                    (_breakdown(cfg, S, no_router=True), "the router multiplies the token by its n_routed_experts "
                                                         "x d weights too")],
                "head": [({"head": 0}, "the output head is a matmul too, counted even when tied to the embedding: "
                                       "tying shares weights, not work")],
                "mtp": [
                    (_breakdown(cfg, S, mtp_head=False), "each MTP module runs the shared output head once more"),
                    (_breakdown(cfg, S, mtp_proj=False), "each MTP module starts with M_k, a 2d x d projection"),
                    (_breakdown(cfg, S, mtp_scores=False), "the MTP block attends too: add its q.k and a.v"),
                    (_breakdown(cfg, S, all_experts=True), "the MTP block's MoE uses only K routed experts")],
            }
            for key in KEYS:
                c.number(_int(got[key], f"{name}: {key}"), exp[key], f"{name}: {key}", rtol=1e-9, atol=0.5,
                         mistakes=[(v[key], why) for v, why in variants[key] if key in v])


# ----------------------------------------------------------------------------------- task 4
def _width_reference(cfg: ModelConfig, target: float, seq_len: int) -> int | None:
    """The smallest width >= 1 whose flops_per_token reaches the target, by bisection (None: the
    width changes nothing)."""
    def f(w):
        return flops_per_token(cfg.replace(intermediate_size=w), seq_len)
    if f(2) == f(1):
        return None
    lo, hi = 1, 2
    while f(hi) < target:
        hi *= 2
    if f(lo) >= target:
        return 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return hi


def check_equal_flops_width(equal_flops_width) -> None:
    """equal_flops_width(cfg, target_flops, seq_len) -> the smallest intermediate_size w >= 1 whose
    training FLOPs per token, flops_per_token(cfg.replace(intermediate_size=w), seq_len), reach
    target_flops; raise ValueError when intermediate_size does not change the FLOPs at all (no dense
    FFN anywhere). Solve it from the formula (FLOPs are a straight line in w), no search."""
    base = get_preset("baseline", vocab_size=82)
    target = flops_per_token(base, 64)
    moe2 = get_preset("baseline+moe", vocab_size=82, first_k_dense_replace=2, moe_intermediate_size=80)
    cases = [("baseline+mla vs baseline", get_preset("baseline+mla", vocab_size=82), target, 64),
             ("baseline+mtp vs baseline", get_preset("baseline+mtp", vocab_size=82), target, 64),
             ("MQA (1 KV head) vs baseline", base.replace(num_key_value_heads=1), target, 64),
             ("baseline with MTP, 2 depths, vs baseline", base.replace(num_nextn_predict_layers=2), target, 64),
             ("baseline vs 1.5 x its FLOPs at seq_len 256", base, 1.5 * flops_per_token(base, 256), 256),
             ("MoE with 2 dense layers, experts of 80, vs baseline", moe2, target, 64),
             ("mini-v3 (its MTP block is MoE) vs 1.1 x baseline", get_preset("mini-v3", vocab_size=82), 1.1 * target,
              64),
             ("MQA vs a target below its smallest width's FLOPs", base.replace(num_key_value_heads=1), 1e5, 32)]
    with Checker("equal_flops_width") as c:
        for name, cfg, tgt, T in cases:
            exp = _width_reference(cfg, tgt, T)
            L, D, d = cfg.num_hidden_layers, cfg.num_nextn_predict_layers, cfg.hidden_size
            dense_main = sum(not cfg.is_moe_layer(i) for i in range(L))
            mistakes = [(exp - 1, "the smallest width that REACHES the target: round up, not down")]
            slopes = []                 # (a wrong slope, what is wrong), solved from two anchors each
            if D and not cfg.is_moe:    # the width also sets the MTP blocks' FFNs
                slopes.append((18 * d * L, "the MTP blocks' FFNs have intermediate_size too: the width acts in "
                                           "num_hidden_layers + num_nextn_predict_layers blocks"))
            if cfg.is_moe:
                slopes.append((18 * d * (L + D), f"only the dense FFNs have intermediate_size: here {dense_main} "
                                                 "layer(s) (< first_k_dense_replace); MoE layers and MoE MTP blocks "
                                                 "use moe_intermediate_size"))
            n_dense = sum(not cfg.is_moe_layer(i) for i in range(L + D))
            slopes += [(6 * d * n_dense, "training FLOPs per unit of width: 3 matrices x 2 FLOPs x 3 (forward + "
                                         "backward) = 18 x hidden_size per dense FFN"),
                       (9 * d * n_dense, "a weight costs 2 FLOPs (a multiply and an add): 3 matrices x 2 FLOPs x 3 "
                                         "= 18 x hidden_size per dense FFN and unit of width")]
            for slope, why in slopes:
                for a in (1, cfg.intermediate_size):
                    f_a = flops_per_token(cfg.replace(intermediate_size=a), T)
                    mistakes.append((max(1, a + math.ceil((tgt - f_a) / slope)), why))
            got = c.call(equal_flops_width, cfg, tgt, T)
            c.number(_int(got, name), exp, name, rtol=0, integer=True, mistakes=mistakes)
        nodense = get_preset("baseline+moe", vocab_size=82, first_k_dense_replace=0)
        try:
            got = c.call(equal_flops_width, nodense, target, 64)
        except ValueError:
            c.passed += 1
        else:
            raise CheckFailed(f"a MoE config without any dense layer (first_k_dense_replace=0): intermediate_size "
                              f"changes no FLOPs, so no width reaches the target; raise ValueError (got {got!r})")


# ----------------------------------------------------------------------------------- task 5
def _top4_numbers() -> tuple[int, float]:
    two = get_preset("baseline+moe", vocab_size=82)
    K2, I2 = two.num_experts_per_tok, two.moe_intermediate_size
    w = math.ceil((two.n_shared_experts + K2) * I2 / (two.n_shared_experts + 4))
    four = two.replace(num_experts_per_tok=4, moe_intermediate_size=w)
    return w, param_count(four).total / param_count(two).total


def check_equal_compute_numbers(answer) -> None:
    """answer = {"attention_equals_ffn_at": the seq_len at which the baseline's attention score/value
    matmuls cost as many FLOPs per token as its FFNs, "moe_top4_width": the smallest expert width
    that gives baseline+moe with top-4 (instead of top-2) routed experts at least its active FFN
    weights, "moe_top4_params_ratio": that model's total parameters / baseline+moe's,
    "gqa_heads_to_match_mla_cache": how many KV heads (of the baseline's head_dim) cache no more
    values per token than mini-v3's MLA: "1" | "2" | "none"}."""
    with Checker("equal_compute_numbers") as c:
        c.answer(answer)
        c.keys(answer, ["attention_equals_ffn_at", "moe_top4_width", "moe_top4_params_ratio",
                        "gqa_heads_to_match_mla_cache"], "the answer")
        b = get_preset("baseline")
        S = 3 * b.hidden_size * b.intermediate_size / (b.num_attention_heads * 2 * b.head_dim)
        c.number(answer["attention_equals_ffn_at"], S, "the seq_len where attention matmuls = FFN", rtol=1e-3,
                 mistakes=[(2 * S, "each query attends to seq_len keys with q.k (head dim) AND a.v (head dim): "
                                   "2 x heads x seq_len x 2 x head_dim, against 2 x 3 x d x intermediate_size"),
                           (S / 2, "2 FLOPs per multiply-add on both sides, once each: "
                                   "2 x heads x seq_len x 2 x head_dim = 2 x 3 x d x intermediate_size"),
                           (2 * S / 3, "a SwiGLU FFN has three matrices")])
        w, ratio = _top4_numbers()
        c.number(answer["moe_top4_width"], w, "the top-4 expert width", integer=True, rtol=0, mistakes=[
            (w - 1, "the smallest width that REACHES the top-2 model's active weights: round up"),
            (math.ceil(2 * 117 / 4), "the shared expert stays: (1 + 2) x 117 active before, (1 + 4) x w after"),
            (round(117 / 2), "the shared expert stays: (1 + 2) x 117 active before, (1 + 4) x w after")])
        c.number(answer["moe_top4_params_ratio"], ratio, "total parameters, top-4 / top-2", rtol=0.003, mistakes=[
            (1 / ratio, "top-4 over top-2, not the other way round"),
            (w / 117, "the attention, embeddings, head and routers stay: take the ratio of the whole models' "
                      "param_count(...).total")])
        c.choice(answer["gqa_heads_to_match_mla_cache"], "none", ["1", "2", "none"],
                 "KV heads to match mini-v3's MLA cache", mistakes={
                     "1": f"one KV head caches a key and a value, 2 x 32 = 64 values per token per layer; mini-v3's "
                          f"MLA caches {kv_cache_values_per_token(get_preset('mini-v3'))}",
                     "2": "two KV heads cache 2 x 2 x 32 = 128 values per token per layer, more than MLA's 48"})


# ----------------------------------------------------------------------------------- task 6
_WIDTHS = ("intermediate_size", "moe_intermediate_size", "vocab_size")


def _cfg(d, what: str) -> ModelConfig:
    if isinstance(d, ModelConfig):
        return d
    if not isinstance(d, dict):
        raise CheckFailed(f"{what}: give the config as a dict (cfg.to_dict()), got {type(d).__name__}")
    try:
        return ModelConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise CheckFailed(f"{what}: not a valid ModelConfig: {e}") from None


def check_equal_flops_experiment(results) -> None:
    """results = {"baseline": cfg.to_dict(), "variant": cfg.to_dict() (one idea switched on, its
    width re-chosen), "seq_len": the context you trained at, "steps": training steps per run,
    "val_loss": {"baseline": ..., "variant": ...}}. Checks: the variant really differs from the
    baseline beyond its widths, both cost the same training FLOPs per token within 1%
    (flops_per_token at seq_len), and the losses were measured on trained models."""
    with Checker("equal_flops_experiment") as c:
        c.answer(results)
        c.keys(results, ["baseline", "variant", "seq_len", "steps", "val_loss"], "the results")
        base, var = _cfg(results["baseline"], "baseline"), _cfg(results["variant"], "variant")
        diff = sorted(k for k, v in base.to_dict().items() if k not in _WIDTHS and var.to_dict().get(k) != v)
        c.true(bool(diff), "the variant differs from the baseline only in its widths: switch one idea on "
                           "(e.g. num_key_value_heads=1, kv_lora_rank, n_routed_experts, num_nextn_predict_layers)")
        S = int(c.in_range(results["seq_len"], 8, 4096, "seq_len"))
        fb, fv = flops_per_token(base, S), flops_per_token(var, S)
        c.true(abs(fv / fb - 1) <= 0.01, f"training FLOPs per token at seq_len {S}: baseline {fb:,.0f}, variant "
                                         f"{fv:,.0f} ({fv / fb - 1:+.2%}): re-choose the variant's width so they agree "
                                         "within 1% (task 4)")
        c.in_range(results["steps"], 50, 1_000_000, "training steps per run", why="train each model for at least "
                                                                                   "50 steps")
        vl = results["val_loss"]
        c.keys(vl, ["baseline", "variant"], "val_loss")
        top = math.log(base.vocab_size) - 0.5
        for k in ("baseline", "variant"):
            c.in_range(vl[k], 1.0, top, f"the {k}'s validation loss",
                       why=f"below ln(vocab) - 0.5 = {top:.2f} once the model has trained")
        c.true(abs(float(as_tensor(vl["baseline"]).item()) - float(as_tensor(vl["variant"]).item())) < 0.5,
               "the two validation losses differ by more than 0.5: were both models trained in the same way "
               "(same steps, batches and learning rate)?")
