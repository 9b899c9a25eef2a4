"""Conformance with Hugging Face's DeepseekV3ForCausalLM (the `hf` extra): tiny random models in
float32, eager attention, one thread; no hub downloads. HF computes no MTP loss, no balance loss
and never updates the router bias, so those have tests of their own elsewhere."""

import itertools
import warnings

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="conformance tests need the hf extra: pip install -e '.[hf]'")
if not hasattr(transformers, "DeepseekV3ForCausalLM"):
    pytest.skip(f"transformers {transformers.__version__} has no DeepseekV3ForCausalLM",
                allow_module_level=True)

from minids import hf  # noqa: E402
from minids.config import DEEPSEEK_V3, ModelConfig  # noqa: E402
from minids.generate import generate  # noqa: E402
from minids.model import MiniDeepSeek  # noqa: E402
from minids.moe import Router  # noqa: E402

transformers.logging.set_verbosity_error()
TOL = 1e-5
YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 32,
        "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}


def tiny(**kw) -> ModelConfig:
    """8 routed experts in 4 groups of 2, top-2 groups, 3 experts per token, 1 shared expert."""
    base = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=4, max_position_embeddings=64, q_lora_rank=24, kv_lora_rank=16,
                qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=8,
                n_shared_experts=1, num_experts_per_tok=3, moe_intermediate_size=16, n_group=4,
                topk_group=2, first_k_dense_replace=1, routed_scaling_factor=2.5)
    return ModelConfig(**{**base, **kw})


def random_hf(cfg: ModelConfig, rope_interleave: bool = True, seed: int = 0, **hf_overrides):
    """A random HF model (its own init) with a random e_score_correction_bias per MoE layer."""
    torch.manual_seed(seed)
    hc = hf.config_to_hf(cfg, rope_interleave=rope_interleave, **hf_overrides)
    hc._attn_implementation = "eager"
    hc._experts_implementation = hf.experts_implementation_for(cfg)   # HF's grouped_mm needs 16-byte rows
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")   # n_shared_experts=0
        model = transformers.DeepseekV3ForCausalLM(hc).eval()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.uniform_(-0.3, 0.3)
    return model


def max_diff(hf_model, model, idx) -> float:
    with torch.no_grad():
        return (hf_model(idx).logits - model(idx).logits).abs().max().item()


CASES = list(itertools.product([24, 0], [None, YARN], [0, 1], [True, False]))


@pytest.mark.parametrize("q_lora_rank,rope_scaling,first_k_dense,interleave", CASES)
def test_logits_match_hf(q_lora_rank, rope_scaling, first_k_dense, interleave):
    cfg = tiny(q_lora_rank=q_lora_rank, rope_scaling=rope_scaling, first_k_dense_replace=first_k_dense)
    hf_model = random_hf(cfg, rope_interleave=interleave)
    model = hf.from_hf(hf_model).eval()
    assert model.config == cfg
    assert (len(model.moe_layers()) == cfg.num_hidden_layers - first_k_dense)
    for B, T in [(1, 1), (2, 9), (3, 40)]:        # 40 > YaRN's original context of 16
        idx = torch.randint(0, cfg.vocab_size, (B, T))
        assert max_diff(hf_model, model, idx) < TOL, (B, T)


def test_rms_norm_eps_and_absorb_and_loop_dispatch_match_hf():
    # q/kv latent norms use eps 1e-6 whatever rms_norm_eps says (the V3 reference and HF do)
    cfg = tiny(rms_norm_eps=1e-5)
    hf_model = random_hf(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 24))
    for mode, dispatch in [("naive", "fast"), ("absorb", "loop")]:
        model = hf.from_hf(hf_model, mla_mode=mode, moe_dispatch=dispatch).eval()
        assert max_diff(hf_model, model, idx) < TOL, (mode, dispatch)


def test_routing_constraints_are_active():
    """The tiny configs exercise group-limited routing and the bias: both change the choice."""
    cfg = tiny()
    torch.manual_seed(0)
    router = Router(cfg)
    torch.nn.init.normal_(router.weight, std=0.5)
    x = torch.randn(256, cfg.hidden_size)
    router.bias.uniform_(-0.3, 0.3)
    _, picked, _ = router(x)
    ungrouped = Router(cfg.replace(n_group=1, topk_group=1))
    ungrouped.load_state_dict(router.state_dict())
    unbiased = Router(cfg)
    unbiased.load_state_dict({**router.state_dict(), "bias": torch.zeros(cfg.n_routed_experts)})
    same = lambda a, b: torch.equal(a.sort(-1).values, b.sort(-1).values)
    assert not same(picked, ungrouped(x)[1])
    assert not same(picked, unbiased(x)[1])


def test_wrong_rope_layout_is_caught():
    """Converting a rotate_half (rope_interleave=False) model as if it were interleaved breaks the
    logits: the permutation of the rope rows is necessary."""
    cfg = tiny()
    hf_model = random_hf(cfg, rope_interleave=False)
    model = hf.from_hf(hf_model, rope_interleave=True).eval()
    idx = torch.randint(0, cfg.vocab_size, (2, 24))
    assert max_diff(hf_model, model, idx) > 1e-3


def random_minids(cfg: ModelConfig, seed: int = 0) -> MiniDeepSeek:
    torch.manual_seed(seed)
    model = MiniDeepSeek(cfg).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Router):
                m.bias.uniform_(-0.3, 0.3)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("interleave", [True, False])
def test_round_trip_minids_hf_minids_exact(interleave):
    cfg = tiny(num_nextn_predict_layers=1)
    model = random_minids(cfg)
    hf_model = hf.to_hf(model, rope_interleave=interleave)
    idx = torch.randint(0, cfg.vocab_size, (2, 24))
    assert max_diff(hf_model, model, idx) < TOL
    back = hf.from_hf(hf_model)                       # HF holds no MTP weights: main model only
    sd, sd_back = model.state_dict(), back.state_dict()
    for k, v in sd.items():
        if not k.startswith("mtp."):
            assert torch.equal(v, sd_back[k]), k
    # the checkpoint layout (MTP as layer L, per-expert weights) round-trips everything, exactly
    for layout in ("stacked", "per_expert"):
        ckpt = hf.state_dict_to_hf(model, cfg, interleave, include_mtp=True, expert_layout=layout)
        assert "model.layers.3.shared_head.norm.weight" in ckpt and "model.layers.3.eh_proj.weight" in ckpt
        assert ("model.layers.1.mlp.experts.7.down_proj.weight" in ckpt) == (layout == "per_expert")
        again = hf.state_dict_from_hf(ckpt, cfg, interleave)
        assert again.keys() == sd.keys()
        assert all(torch.equal(sd[k], again[k]) for k in sd)


def test_config_round_trip_and_bad_configs():
    for cfg in [tiny(), tiny(q_lora_rank=0, rope_scaling=YARN, num_nextn_predict_layers=2)]:
        assert hf.config_from_hf(hf.config_to_hf(cfg)) == cfg
    with pytest.raises(ValueError, match="kv_lora_rank"):
        hf.config_to_hf(ModelConfig())
    with pytest.raises(ValueError, match="scoring_func"):
        hf.config_to_hf(tiny(scoring_func="softmax"))
    # HF's YaRN would scale cos/sin by mscale/mscale_all_dim; the V3 reference does not
    bad = hf.config_to_hf(tiny(rope_scaling={**YARN, "mscale": 0.707}))
    bad.rope_parameters.pop("attention_factor")
    with pytest.raises(ValueError, match="attention_factor"):
        hf.config_from_hf(bad)


def test_dense_minids_model_maps_to_all_dense_hf_layers():
    cfg = tiny(n_routed_experts=0, n_shared_experts=0, num_experts_per_tok=0, moe_intermediate_size=0,
               first_k_dense_replace=0)
    model = random_minids(cfg)
    hf_model = hf.to_hf(model)
    assert hf_model.config.first_k_dense_replace == cfg.num_hidden_layers
    assert max_diff(hf_model, model, torch.randint(0, cfg.vocab_size, (2, 16))) < TOL


@pytest.mark.parametrize("q_lora_rank,rope_scaling", [(24, None), (0, YARN)])
def test_cached_decoding_matches_hf_generate(q_lora_rank, rope_scaling):
    cfg = tiny(q_lora_rank=q_lora_rank, rope_scaling=rope_scaling)
    hf_model = random_hf(cfg, seed=1)
    model = hf.from_hf(hf_model).eval()
    prompt = torch.randint(0, cfg.vocab_size, (2, 5))
    n = 20
    with torch.no_grad():
        out = hf_model.generate(prompt, max_new_tokens=n, do_sample=False, use_cache=True,
                                output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        # minids' own cached loop, one token per step after the prompt
        cache = model.new_cache()
        logits = model(prompt, cache=cache).logits[:, -1]
        steps, idx = [logits], prompt
        for _ in range(n - 1):
            idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
            logits = model(idx[:, -1:], start_pos=idx.size(1) - 1, cache=cache).logits[:, -1]
            steps.append(logits)
    assert torch.equal(out.sequences[:, 5:], torch.stack(steps, 1).argmax(-1))
    assert max((a - b).abs().max().item() for a, b in zip(out.logits, steps, strict=True)) < TOL
    assert torch.equal(generate(model, prompt, n, temperature=0.0), out.sequences)


def test_official_v3_config_counts():
    """config.json as published (with its extra keys) loads as is; the meta-device model has
    671.03B main parameters + 11.61B in the MTP module, exactly as HF's own meta count."""
    d = hf.deepseek_v3_config_json()
    cfg = ModelConfig.from_dict(d)
    assert cfg.extra["quantization_config"]["quant_method"] == "fp8"
    assert {k: getattr(cfg, k) for k in DEEPSEEK_V3} == DEEPSEEK_V3
    with torch.device("meta"):
        model = MiniDeepSeek(cfg)
    mtp = sum(p.numel() for p in model.mtp.parameters())
    main = model.num_params() - mtp
    assert main == 671_026_404_352 and mtp == 11_610_067_968, (main, mtp)
    d = hf.deepseek_v3_config_json()                # a fresh copy: HF edits rope dicts in place
    hc = transformers.DeepseekV3Config(**{k: v for k, v in d.items() if k != "quantization_config"})
    assert hf.config_from_hf(hc) == cfg
    with torch.device("meta"):
        hf_model = transformers.DeepseekV3ForCausalLM(hc)
    assert sum(p.numel() for p in hf_model.parameters()) == main


# ------------------------------------------------------------------ configurations beyond tiny()
YARN_VARIANTS = {
    "yarn-mscale-0.707": {**YARN, "mscale": 0.707, "mscale_all_dim": 0.707},      # softmax scale changes
    "yarn-no-mscale": {**YARN, "mscale": 1.0, "mscale_all_dim": 0.0},             # HF attention_factor given 1
    "yarn-truncate-false": {**YARN, "original_max_position_embeddings": 256, "truncate": False},
    "yarn-factor-8-betas": {**YARN, "factor": 8.0, "beta_fast": 16, "beta_slow": 2, "truncate": True},
}
ODD = dict(vocab_size=101, hidden_size=50, intermediate_size=70, q_lora_rank=18, kv_lora_rank=10,
           qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=10, moe_intermediate_size=13)
CONFIGS = {
    "odd-widths": ODD,                                              # rows not 16-byte multiples
    "odd-widths-no-q-compression": {**ODD, "q_lora_rank": 0},
    "3-router-groups": dict(n_routed_experts=12, n_group=3, topk_group=2, num_experts_per_tok=4),
    "2-dense-layers": dict(num_hidden_layers=4, first_k_dense_replace=2),
    "2-shared-experts": dict(n_shared_experts=2),
    "0-shared-experts": dict(n_shared_experts=0),
    "0-shared-odd-no-norm-topk": {**ODD, "n_shared_experts": 0, "norm_topk_prob": False,
                                  "routed_scaling_factor": 1.7},
    "tied-embeddings-eps-1e-5": dict(tie_word_embeddings=True, rms_norm_eps=1e-5),
    **{k: dict(rope_scaling=v) for k, v in YARN_VARIANTS.items()},
}
# truncate=False leaves the ramp's ends at 0.21 and 3.22 instead of 0 and 4 with 8 rope pairs
CONFIGS["yarn-truncate-false"]["qk_rope_head_dim"] = 16


@pytest.mark.parametrize("interleave", [True, False])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_more_configs_match_hf_both_ways(name, interleave):
    """HF -> minids (HF's own random init, random router biases) and minids -> HF (random
    minids weights, norms and biases): logits within 1e-5 at 40 tokens (> YaRN's 16), and
    minids -> HF -> minids returns the very same weights."""
    cfg = tiny(**CONFIGS[name])
    hf_model = random_hf(cfg, rope_interleave=interleave, seed=2)
    model = hf.from_hf(hf_model).eval()
    assert model.config == cfg
    idx = torch.randint(0, cfg.vocab_size, (2, 40))
    assert max_diff(hf_model, model, idx) < TOL
    mine = random_minids(cfg, seed=3)
    theirs = hf.to_hf(mine, rope_interleave=interleave)
    assert max_diff(theirs, mine, idx) < TOL
    back = hf.from_hf(theirs).state_dict()
    assert all(torch.equal(v, back[k]) for k, v in mine.state_dict().items())


def test_yarn_truncate_is_honoured():
    """truncate=False moves the ends of YaRN's ramp off integers: it changes the logits, and the
    converter carries it both ways (it used to be dropped silently)."""
    cfg = tiny(**CONFIGS["yarn-truncate-false"])
    mine = random_minids(cfg)
    with torch.no_grad():                           # sharper attention than the init: positions matter
        for name, p in mine.named_parameters():
            if p.dim() == 2 and "attn" in name:
                p.normal_(0.0, 0.3)
    theirs = hf.to_hf(mine)
    assert theirs.config.rope_parameters["truncate"] is False
    back = hf.from_hf(theirs).eval()
    assert back.config.rope_scaling["truncate"] is False
    idx = torch.randint(0, cfg.vocab_size, (2, 40))
    assert max_diff(theirs, mine, idx) < TOL and max_diff(theirs, back, idx) < TOL
    rounded = MiniDeepSeek(cfg.replace(rope_scaling={**cfg.rope_scaling, "truncate": True})).eval()
    rounded.load_state_dict(mine.state_dict())      # the same weights, the ramp's ends rounded
    assert max_diff(theirs, rounded, idx) > 1e-2


def test_hf_beta_defaults_and_all_dense_first_k():
    """HF reads a zero beta as its default, and first_k_dense_replace > layers as all dense."""
    cfg = tiny(rope_scaling={**YARN, "beta_fast": 32, "beta_slow": 1})
    hc = hf.config_to_hf(cfg, first_k_dense_replace=7)
    hc.rope_parameters.update(beta_fast=0, beta_slow=0)
    got = hf.config_from_hf(hc)
    assert got.rope_scaling["beta_fast"] == 32 and got.rope_scaling["beta_slow"] == 1
    assert got.first_k_dense_replace == cfg.num_hidden_layers and not got.is_moe_layer(2)
    hf_model = random_hf(cfg, first_k_dense_replace=7)
    assert max_diff(hf_model, hf.from_hf(hf_model).eval(), torch.randint(0, cfg.vocab_size, (1, 30))) < TOL


def test_grouped_experts_kernel_is_chosen_to_run():
    cfg = tiny(**ODD)
    assert hf.experts_implementation_for(cfg) == "eager"
    assert hf.experts_implementation_for(tiny()) == "grouped_mm"
    assert hf.experts_implementation_for(cfg, device="cuda") == "grouped_mm"
    model = random_minids(cfg)
    assert hf.to_hf(model).config._experts_implementation == "eager"
    with pytest.raises(ValueError, match="16-byte"):
        hf.to_hf(model, experts_implementation="grouped_mm")


@pytest.mark.parametrize("field, value, match", [
    ("num_key_value_heads", 2, "num_key_value_heads"),
    ("q_lora_rank", 0, "q_lora_rank=None"),
    ("scoring_func", "softmax", "sigmoid"),
    ("hidden_act", "gelu", "hidden_act"),
    ("attention_bias", True, "attention_bias"),
    ("rope_parameters", {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}, "linear"),
    ("rope_parameters", {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5},
     "partial_rotary_factor"),
    ("rope_parameters", {**YARN, "rope_type": "yarn", "rope_theta": 1e4, "attention_factor": 1.2},
     "attention_factor"),
])
def test_configs_minids_cannot_express_are_refused(field, value, match):
    d = hf.config_to_hf(tiny()).to_dict()
    d[field] = value
    with pytest.raises(ValueError, match=match):
        hf.config_from_hf(d)


def test_weight_mismatch_error_leads_with_what_matters():
    """A config that does not fit the weights: the error names the unexpected and missing main
    weights first; the MTP weights HF never has come last, as a count."""
    cfg = tiny(num_nextn_predict_layers=1)
    hf_model = random_hf(cfg)
    with pytest.raises(ValueError) as e:
        hf.from_hf(hf_model, q_lora_rank=0)         # HF has q_a_proj/q_b_proj; minids then expects wq
    msg = str(e.value)
    assert msg.index("unexpected") < msg.index("attn.wq_a.weight") < msg.index("missing") \
        < msg.index("attn.wq.weight") < msg.index("MTP weights missing, which is expected")
    assert "mtp." not in msg[:msg.index("MTP weights missing")]
    with pytest.raises(ValueError, match="missing"):
        hf.from_hf(hf_model, strict_mtp=True)


@pytest.mark.parametrize("mode", ["naive", "absorb", "reexpand"])
def test_every_mla_mode_decodes_like_hf(mode):
    cfg = tiny(q_lora_rank=0, rope_scaling=YARN)
    hf_model = random_hf(cfg, seed=1)
    model = hf.from_hf(hf_model, mla_mode=mode).eval()
    prompt = torch.randint(0, cfg.vocab_size, (2, 5))
    with torch.no_grad():
        out = hf_model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0)
    assert torch.equal(generate(model, prompt, 12, temperature=0.0), out)
