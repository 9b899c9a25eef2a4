"""Every chapter-06 check passes on the solution and on valid alternatives, fails on the stub, and
rejects plausible mistakes, naming them where the check knows them."""

import contextlib
import io
import math

import nbformat
import numpy as np
import pytest
from nbutil import ROOT, Wrong, check_contract

from minids.attention import MLA, CausalSelfAttention
from minids.checks import (
    CheckFailed,
    check_block_parts,
    check_equal_compute_numbers,
    check_equal_flops_experiment,
    check_equal_flops_width,
    check_ffn_active_params,
    check_flops_breakdown,
)
from minids.checks.build import CHECK_CALL, strip_solutions
from minids.config import get_preset
from minids.flops import flops_per_token
from minids.layers import MLP
from minids.moe import MoE

NB = "solutions/06_mini_deepseek_v3.ipynb"


def _namespace(stubbed: bool) -> dict:
    """The notebook's code without its check calls and without the experiment (nbval runs it)."""
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
_small = get_preset("baseline", vocab_size=82, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=192)
MEASURED = {"baseline": _small.to_dict(), "variant": _small.replace(num_key_value_heads=1, intermediate_size=224)
            .to_dict(), "seq_len": 64, "steps": 100, "val_loss": {"baseline": 2.499, "variant": 2.492}}
SOL["results"] = MEASURED


# ----------------------------------------------------------------------------------- task 1
def _ffn(cfg, i, all_experts=False, router=True, shared=True, dense_everywhere=False, matrices=3):
    d = cfg.hidden_size
    moe = cfg.is_moe if dense_everywhere else cfg.is_moe_layer(i)
    if not moe:
        return matrices * d * cfg.intermediate_size
    n = (cfg.n_shared_experts if shared else 0) + (cfg.n_routed_experts if all_experts else cfg.num_experts_per_tok)
    return (cfg.n_routed_experts * d if router else 0) + n * matrices * d * cfg.moe_intermediate_size


# ----------------------------------------------------------------------------------- task 2
def _parts(cfg, i, kind_rule=None, ffn_rule=None, count_attn=None):
    attn = MLA(cfg) if cfg.is_mla else CausalSelfAttention(cfg)
    kv, h = cfg.num_key_value_heads, cfg.num_attention_heads
    kind = "MLA" if cfg.is_mla else ("MHA" if kv == h else "MQA" if kv == 1 else "GQA")
    if kind_rule:
        kind = kind_rule(cfg, kind)
    moe = cfg.is_moe_layer(i) if ffn_rule is None else ffn_rule(cfg, i)
    ffn = MoE(cfg) if moe else MLP(cfg.hidden_size, cfg.intermediate_size)
    n_attn = sum(p.numel() for p in attn.parameters()) if count_attn is None else count_attn(attn)
    return {"attention": kind, "ffn": "MoE" if moe else "MLP", "attention_params": n_attn,
            "ffn_params": sum(p.numel() for p in ffn.parameters())}


def _parts_numpy(cfg, i):                          # valid: NumPy counts, lower-case names
    p = _parts(cfg, i)
    return {"attention": p["attention"].lower(), "ffn": p["ffn"], "attention_params": np.int64(p["attention_params"]),
            "ffn_params": float(p["ffn_params"])}


# ----------------------------------------------------------------------------------- task 3
def _breakdown(cfg, S, norms=False, kv_heads=None, causal=False, all_experts=False, tied_head=True, mtp_head=True,
               mtp_scores=True, v_as_qk=False):
    d, H, V, L, D = cfg.hidden_size, cfg.num_attention_heads, cfg.vocab_size, cfg.num_hidden_layers, \
        cfg.num_nextn_predict_layers
    if cfg.is_mla:
        qk, dv = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim
        q = d * cfg.q_lora_rank + cfg.q_lora_rank * H * qk if cfg.q_lora_rank else d * H * qk
        kv = d * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + cfg.kv_lora_rank * H * (cfg.qk_nope_head_dim + dv)
        proj = q + kv + H * dv * d + ((cfg.q_lora_rank + cfg.kv_lora_rank) if norms else 0)
        if v_as_qk:
            dv = qk
    else:
        qk = dv = cfg.head_dim
        proj = 2 * d * H * qk + 2 * d * (kv_heads or cfg.num_key_value_heads) * qk
    keys = (S + 1) / 2 if causal else S
    scores = 2 * H * keys * (qk + dv)
    ffn = [_ffn(cfg, i, all_experts=all_experts) for i in range(L + D)]
    head = 0 if (cfg.tie_word_embeddings and not tied_head) else V * d
    mtp = sum(2 * (2 * d * d + proj + ffn[L + k] + (V * d if mtp_head else 0)) + (scores if mtp_scores else 0)
              for k in range(D))
    return {"attention_proj": 2 * L * proj, "attention_scores": L * scores, "ffn": 2 * sum(ffn[:L]),
            "head": 2 * head, "mtp": mtp}


def _breakdown_by_modules(cfg, S):                 # valid: count the built modules' weights (minus the norms)
    attn = MLA(cfg) if cfg.is_mla else CausalSelfAttention(cfg)
    proj = sum(p.numel() for n, p in attn.named_parameters() if "norm" not in n)
    if cfg.is_mla:
        qk, dv = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim
    else:
        qk = dv = cfg.head_dim
    out = _breakdown(cfg, S)
    out["attention_proj"] = float(2 * cfg.num_hidden_layers * proj)
    out["attention_scores"] = np.float64(2 * cfg.num_hidden_layers * cfg.num_attention_heads * S * (qk + dv))
    return out


# ----------------------------------------------------------------------------------- task 4
def _width(cfg, target, S, blocks=None, slope_factor=18, rounding=math.ceil, no_error=False):
    L, D = cfg.num_hidden_layers, cfg.num_nextn_predict_layers
    dense = blocks(cfg) if blocks else sum(not cfg.is_moe_layer(i) for i in range(L + D))
    if dense == 0:
        if no_error:
            return 1
        raise ValueError("no dense FFN")
    base = flops_per_token(cfg.replace(intermediate_size=1), S)
    return max(1, 1 + rounding((target - base) / (slope_factor * cfg.hidden_size * dense)))


def _width_search(cfg, target, S):                 # valid: a plain search (the task asks for the formula;
    if all(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers + cfg.num_nextn_predict_layers)):
        raise ValueError("no dense FFN")           # the check cannot tell, and the answer is right)
    w = 1
    while flops_per_token(cfg.replace(intermediate_size=w), S) < target:
        w += 1
    return np.int64(w)


# ----------------------------------------------------------------------------------- task 5
GOOD = {"attention_equals_ffn_at": 528, "moe_top4_width": 71, "moe_top4_params_ratio": 0.7083,
        "gqa_heads_to_match_mla_cache": "none"}


def _answer(**changes):
    return {**GOOD, **changes}


CASES = {
    "ffn_active_params": (check_ffn_active_params, [
        Wrong(lambda c, i: _ffn(c, i, all_experts=True), named="only K routed experts"),
        Wrong(lambda c, i: _ffn(c, i, dense_everywhere=True), named="first_k_dense_replace"),
        Wrong(lambda c, i: _ffn(c, i, router=False), named="router"),
        Wrong(lambda c, i: _ffn(c, i, shared=False), named="shared experts"),
        Wrong(lambda c, i: _ffn(c, i, matrices=2), named="three matrices"),
        lambda c, i: _ffn(c, 3),                                              # ignores layer_id
    ], [lambda c, i: np.int64(_ffn(c, i)), lambda c, i: float(_ffn(c, i))]),
    "block_parts": (check_block_parts, [
        Wrong(lambda c, i: _parts(c, i, kind_rule=lambda c, k: "GQA" if k == "MQA" else k), named="MQA"),
        Wrong(lambda c, i: _parts(c, i, kind_rule=lambda c, k: "MHA" if k in ("GQA", "MQA") else k),
              named="num_key_value_heads"),
        Wrong(lambda c, i: _parts(c, i, ffn_rule=lambda c, i: c.is_moe), named="first_k_dense_replace"),
        Wrong(lambda c, i: _parts(c, i, count_attn=lambda m: sum(p.numel() for n, p in m.named_parameters()
                                                                 if "norm" not in n)), named="RMSNorm weights"),
        lambda c, i: _parts(c, 0),                                            # ignores layer_id
    ], [_parts_numpy]),
    "flops_breakdown": (check_flops_breakdown, [
        Wrong(lambda c, S: _breakdown(c, S, norms=True), named="latent RMSNorm"),
        Wrong(lambda c, S: _breakdown(c, S, kv_heads=c.num_attention_heads), named="num_key_value_heads"),
        Wrong(lambda c, S: _breakdown(c, S, causal=True), named="all seq_len keys"),
        Wrong(lambda c, S: _breakdown(c, S, all_experts=True), named="K chosen routed experts"),
        Wrong(lambda c, S: _breakdown(c, S, tied_head=False), named="even when tied"),
        Wrong(lambda c, S: _breakdown(c, S, mtp_head=False), named="output head once more"),
        Wrong(lambda c, S: _breakdown(c, S, mtp_scores=False), named="MTP block attends"),
        Wrong(lambda c, S: _breakdown(c, S, v_as_qk=True), named="VALUE head dim"),
        lambda c, S: _breakdown(c, 64),                                       # ignores seq_len
    ], [_breakdown_by_modules]),
    "equal_flops_width": (check_equal_flops_width, [
        Wrong(lambda c, t, S: _width(c, t, S, rounding=math.floor), named="round up"),
        Wrong(lambda c, t, S: _width(c, t, S, blocks=lambda c: c.num_hidden_layers if not c.is_moe else 1),
              named="MTP blocks' FFNs"),
        Wrong(lambda c, t, S: _width(c, t, S, blocks=lambda c: c.num_hidden_layers + c.num_nextn_predict_layers),
              named="only the dense FFNs"),
        Wrong(lambda c, t, S: _width(c, t, S, slope_factor=6), named="18 x hidden_size"),
        lambda c, t, S: _width(c, t, S, no_error=True),                       # no ValueError without dense FFNs
        lambda c, t, S: _width(c, t, 64),                                     # ignores seq_len
    ], [_width_search]),
    "equal_compute_answer": (check_equal_compute_numbers, [
        Wrong(_answer(attention_equals_ffn_at=1056), named="AND a.v"),
        Wrong(_answer(attention_equals_ffn_at=352), named="three matrices"),
        Wrong(_answer(moe_top4_width=70), named="round up"),
        Wrong(_answer(moe_top4_width=59), named="shared expert stays"),
        Wrong(_answer(moe_top4_params_ratio=1 / 0.7083), named="not the other way round"),
        Wrong(_answer(gqa_heads_to_match_mla_cache="1"), named="64 values"),
        _answer(moe_top4_params_ratio=71 / 117),
    ], [_answer(attention_equals_ffn_at=np.float64(528.0), moe_top4_width=np.int64(71),
                gqa_heads_to_match_mla_cache="None "), _answer(moe_top4_params_ratio=0.71)]),
    "results": (check_equal_flops_experiment, [
        {**MEASURED, "variant": MEASURED["baseline"]},                                  # nothing switched on
        {**MEASURED, "variant": _small.replace(num_key_value_heads=1).to_dict()},       # width not re-chosen
        {**MEASURED, "val_loss": {"baseline": 4.4, "variant": 4.41}},                   # untrained
        {**MEASURED, "steps": 10},
        {**MEASURED, "val_loss": {"baseline": 2.5, "variant": 3.3}},                    # trained differently
        {**MEASURED, "baseline": "baseline"},
    ], [{**MEASURED, "val_loss": {"baseline": np.float32(2.499), "variant": 2.492}},
        {**MEASURED, "variant": _small.replace(num_nextn_predict_layers=1, intermediate_size=62).to_dict()}]),
}

test_check_passes_on_solution, test_check_fails_on_stub, test_check_rejects_plausible_mistakes = \
    check_contract(CASES, SOL, STUB)


def test_experiment_variant_really_costs_the_same():
    """The valid alternative above (one MTP depth, width 62) is an equal-FLOPs variant indeed."""
    v = _small.replace(num_nextn_predict_layers=1, intermediate_size=62)
    assert abs(flops_per_token(v, 64) / flops_per_token(_small, 64) - 1) <= 0.01


def test_equal_flops_width_raises_without_dense_ffn():
    with pytest.raises(CheckFailed, match="raise ValueError"):
        check_equal_flops_width(lambda c, t, S: _width(c, t, S, no_error=True))


def test_breakdown_forbids_the_package(capsys):
    from minids.flops import attention_matmul_params

    def uses_package(cfg, S):
        out = _breakdown(cfg, S)
        out["attention_proj"] = 2 * cfg.num_hidden_layers * attention_matmul_params(cfg)
        return out
    with pytest.raises(CheckFailed, match="forbids"):
        check_flops_breakdown(uses_package)
