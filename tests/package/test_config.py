import pytest

from minids.config import DEEPSEEK_V3, PRESETS, ModelConfig, TrainConfig, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build(name):
    cfg = get_preset(name)
    assert cfg.num_hidden_layers >= 1


def test_baseline_is_plain_dense_gpt():
    cfg = get_preset("baseline")
    assert not cfg.is_mla and not cfg.is_moe and cfg.num_nextn_predict_layers == 0
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size,
            cfg.max_position_embeddings) == (4, 4, 128, 64)


def test_defaults_fill_kv_heads_and_head_dim():
    cfg = ModelConfig(hidden_size=96, num_attention_heads=6)
    assert cfg.num_key_value_heads == 6 and cfg.head_dim == 16


def test_real_config_json_round_trip():
    raw = {**DEEPSEEK_V3, "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
           "torch_dtype": "bfloat16", "quantization_config": {"quant_method": "fp8"}}
    cfg = ModelConfig.from_dict(raw)
    assert cfg.kv_lora_rank == 512 and cfg.n_routed_experts == 256
    assert cfg.extra["model_type"] == "deepseek_v3"
    back = cfg.to_dict()
    for k, v in raw.items():
        assert back[k] == v, k


@pytest.mark.parametrize("changes, field", [
    (dict(vocab_size=1), "vocab_size"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(num_attention_heads=0), "num_attention_heads"),
    (dict(num_key_value_heads=3), "num_key_value_heads"),        # does not divide 4 heads
    (dict(num_key_value_heads=8), "num_key_value_heads"),        # more than heads
    (dict(head_dim=7), "head_dim"),                              # odd: RoPE needs pairs
    (dict(rms_norm_eps=0.0), "rms_norm_eps"),
    (dict(dropout=1.5), "dropout"),
    (dict(max_position_embeddings=0), "max_position_embeddings"),
    (dict(rope_scaling={"type": "linear", "factor": 2}), "rope_scaling"),
    (dict(rope_scaling={"type": "yarn", "factor": 0.5}), "factor"),
    (dict(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=3, v_head_dim=8), "qk_rope_head_dim"),
    (dict(kv_lora_rank=16, qk_nope_head_dim=0, qk_rope_head_dim=4, v_head_dim=8), "qk_nope_head_dim"),
    (dict(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=0), "v_head_dim"),
    (dict(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, q_lora_rank=-1),
     "q_lora_rank"),
    (dict(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, mla_mode="fast"),
     "mla_mode"),
    (dict(n_routed_experts=8, num_experts_per_tok=9, moe_intermediate_size=8), "num_experts_per_tok"),
    (dict(n_routed_experts=8, num_experts_per_tok=0, moe_intermediate_size=8), "num_experts_per_tok"),
    (dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=0), "moe_intermediate_size"),
    (dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=8, n_group=3), "n_group"),
    (dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=8, n_group=2, topk_group=3),
     "topk_group"),
    (dict(n_routed_experts=8, num_experts_per_tok=6, moe_intermediate_size=8, n_group=4, topk_group=2),
     "num_experts_per_tok"),
    (dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=8, n_group=8, topk_group=2),
     "n_group"),
    (dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=8, scoring_func="relu"),
     "scoring_func"),
    (dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=8, first_k_dense_replace=9),
     "first_k_dense_replace"),
    (dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=8, bias_update_speed=-1.0),
     "bias_update_speed"),
    (dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=8, moe_dispatch="magic"),
     "moe_dispatch"),
    (dict(num_nextn_predict_layers=-1), "num_nextn_predict_layers"),
    (dict(mtp_loss_weight=-0.1), "mtp_loss_weight"),
    (dict(hidden_size=1.5), "hidden_size"),
])
def test_invalid_model_config_names_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**changes)


def test_error_states_the_allowed_range():
    with pytest.raises(ValueError, match=r"num_experts_per_tok=9 must be an integer in \[1, n_routed_experts=8\]"):
        ModelConfig(n_routed_experts=8, num_experts_per_tok=9, moe_intermediate_size=8)


@pytest.mark.parametrize("changes, field", [
    (dict(batch_size=0), "batch_size"), (dict(learning_rate=0.0), "learning_rate"),
    (dict(min_lr=1.0), "min_lr"), (dict(dtype="int8"), "dtype"), (dict(grad_accum_steps=0), "grad_accum_steps"),
    (dict(beta2=1.5), "beta2"), (dict(eval_iters=0), "eval_iters"), (dict(mtp_loss_switch=2.0), "mtp_loss_switch"),
])
def test_invalid_train_config_names_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**changes)


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset"):
        get_preset("gpt-5")


def test_replace_revalidates():
    with pytest.raises(ValueError, match="num_key_value_heads"):
        get_preset("baseline").replace(num_key_value_heads=3)
