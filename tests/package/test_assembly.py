"""Chapter 06: the assembled mini-v3 and the ablation presets cost the baseline's training FLOPs,
each ablation switches on exactly one idea, and `bench ablation` runs end to end."""

import math

import pytest

from minids.benchmarks import ablation
from minids.config import PRESETS, get_preset
from minids.flops import flops_per_token, param_count

V, T = 82, 64          # the character vocabulary of the Shakespeare corpus, the training context
TOLERANCE = 0.005      # training FLOPs per token (MTP included) within 0.5% of the baseline's

MLA_FIELDS = {"q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"}
MOE_FIELDS = {"n_routed_experts", "n_shared_experts", "num_experts_per_tok", "moe_intermediate_size",
              "n_group", "topk_group", "first_k_dense_replace", "routed_scaling_factor"}
MTP_FIELDS = {"num_nextn_predict_layers", "mtp_loss_weight"}
SIZE = {"intermediate_size"}   # the knob that equalises FLOPs


def _changed(name):
    base, cfg = get_preset("baseline").to_dict(), get_preset(name).to_dict()
    return {k for k in cfg if cfg[k] != base[k]}


def test_baseline_preset_is_nanogpt_cpu_size():
    c = get_preset("baseline")
    assert (c.num_hidden_layers, c.num_attention_heads, c.hidden_size, c.max_position_embeddings,
            c.intermediate_size) == (4, 4, 128, 64, 352)
    assert not (c.is_mla or c.is_moe or c.num_nextn_predict_layers)


@pytest.mark.parametrize("name", [*ablation.MODELS, "mini-v3-no-mtp"])
def test_training_flops_per_token_equal_to_the_baseline(name):
    base = flops_per_token(get_preset("baseline", vocab_size=V), T)
    f = flops_per_token(get_preset(name, vocab_size=V), T)          # MTP module included
    assert 0 <= f / base - 1 < TOLERANCE, (name, f / base)


def test_mtp_is_what_makes_mini_v3_fit():
    """Without counting its MTP module, mini-v3 would look ~20% cheaper than it trains."""
    c = get_preset("mini-v3", vocab_size=V)
    base = flops_per_token(get_preset("baseline", vocab_size=V), T)
    assert flops_per_token(c, T, mtp=False) / base < 0.85


@pytest.mark.parametrize("name,fields,flag", [("baseline+mla", MLA_FIELDS, "is_mla"),
                                               ("baseline+moe", MOE_FIELDS, "is_moe"),
                                               ("baseline+mtp", MTP_FIELDS, "num_nextn_predict_layers")])
def test_each_ablation_switches_on_exactly_one_idea(name, fields, flag):
    assert _changed(name) <= fields | SIZE, _changed(name) - fields - SIZE
    c = get_preset(name)
    on = {"is_mla": c.is_mla, "is_moe": c.is_moe, "num_nextn_predict_layers": bool(c.num_nextn_predict_layers)}
    assert on[flag] and sum(on.values()) == 1, on


def test_mini_v3_has_all_three_in_v3_proportions():
    c = get_preset("mini-v3")
    assert c.is_mla and c.is_moe and c.num_nextn_predict_layers == 1
    assert _changed("mini-v3") <= MLA_FIELDS | MOE_FIELDS | MTP_FIELDS | SIZE
    assert c.first_k_dense_replace >= 1 and c.n_shared_experts == 1 and c.scoring_func == "sigmoid"
    assert 1 < c.n_group and c.topk_group == c.n_group // 2                 # V3: 4 of 8 groups
    assert c.moe_intermediate_size < c.intermediate_size                    # fine-grained experts
    assert c.intermediate_size == (c.num_experts_per_tok + c.n_shared_experts) * c.moe_intermediate_size
    assert c.bias_update_speed > 0 and c.aux_loss_alpha == 0                # aux-loss-free balancing
    p = param_count(c)
    assert p.active < p.total / 2


def test_leave_one_out_drops_only_mtp():
    mini, loo = get_preset("mini-v3").to_dict(), get_preset("mini-v3-no-mtp").to_dict()
    assert {k for k in mini if mini[k] != loo[k]} <= MTP_FIELDS | SIZE | {"moe_intermediate_size"}
    assert get_preset("mini-v3-no-mtp").num_nextn_predict_layers == 0


def test_ablation_presets_are_registered():
    assert set(ablation.MODELS) <= set(PRESETS)


def test_parse_lrs():
    assert ablation.parse_lrs("mini-v3=2e-3, baseline=1e-3") == {"mini-v3": 2e-3, "baseline": 1e-3}
    assert ablation.parse_lrs(None) == {}
    with pytest.raises(ValueError, match="NAME=LR"):
        ablation.parse_lrs("mini-v3")


def test_bench_rejects_bad_input():
    with pytest.raises(SystemExit, match="preset"):
        ablation.main(["--models", "nope", "--iters", "1"])
    with pytest.raises(SystemExit, match="iters"):
        ablation.main(["--iters", "0"])


@pytest.mark.slow
def test_ablation_bench_runs_end_to_end(capsys):
    ablation.main(["--iters", "3", "--eval-iters", "1", "--seeds", "0,1"])
    out = capsys.readouterr().out
    for name in ablation.MODELS:
        assert f"\n{name} " in out
    assert "val loss" in out and "nan" not in out.split("model")[-1]


@pytest.mark.slow
def test_time_mode_and_rows():
    rows = ablation.run_ablation(["baseline", "mini-v3"], seeds=(0,), eval_iters=1, seconds=0.5, log=None)
    assert [r["model"] for r in rows] == ["baseline", "mini-v3"]
    for r in rows:
        assert r["iters"] >= 10 and math.isfinite(r["val_loss"]) and r["tokens"] == r["iters"] * 12 * 64
    s = ablation.summarise(rows)
    assert "baseline" in ablation.format_table(s)
