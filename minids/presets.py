"""Named configurations, as plain dicts of config fields (`config.get_preset(name)` builds one):
DeepSeek-V3 itself, the course's CPU models (each reads as "which of V3's ideas are on"), the
chapter-08 GPU models and their training run. Measurements made with them are in docs/LOG.md."""

# The official DeepSeek-V3 config.json (671B); for accounting (chapter 07) and conformance only.
DEEPSEEK_V3 = dict(
    vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
    num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128,
    max_position_embeddings=163840, rms_norm_eps=1e-6, rope_theta=10000.0,
    rope_scaling={"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                  "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
    n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8, n_group=8, topk_group=4,
    first_k_dense_replace=3, routed_scaling_factor=2.5, norm_topk_prob=True,
    scoring_func="sigmoid", topk_method="noaux_tc", num_nextn_predict_layers=1,
)

# The course's CPU size (nanoGPT's documented CPU run: 4 layers, 4 heads, width 128, context 64)
# and the three ideas as switches.
_CPU = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=64)
_MLA = dict(q_lora_rank=0, kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32)
_MOE = dict(n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=4, topk_group=2,
            first_k_dense_replace=1, routed_scaling_factor=1.0)
_MTP = dict(num_nextn_predict_layers=1, mtp_loss_weight=0.3)

PRESETS: dict[str, dict] = {
    # A plain dense GPT at nanoGPT's documented CPU size. SwiGLU's hidden size 352 keeps the FFN
    # at about nanoGPT's 8*d^2 parameters (3 matrices, not 2).
    "baseline": dict(**_CPU, intermediate_size=352),
    # V3's ideas at course size: MLA, fine-grained + shared experts with group-limited sigmoid
    # routing and aux-loss-free balancing, first layer dense, one MTP module. Sized (chapter 06)
    # so that its training FLOPs per token at context 64, MTP module included, equal the
    # baseline's (tests/package/test_assembly.py): one shared + top-2 of 8 routed experts
    # (4 groups of 2, 2 groups kept: V3 keeps half its groups), the dense first layer as wide as
    # the shared + K routed experts (V3: 18432 = 9 x 2048).
    "mini-v3": dict(**_CPU, **_MLA, **_MOE, **_MTP, intermediate_size=231, moe_intermediate_size=77),
    # Chapter 06 ablations: the baseline with exactly ONE idea switched on, the FFN width
    # re-chosen so the training FLOPs per token (context 64, MTP counted) stay the baseline's.
    "baseline+mla": dict(**_CPU, **_MLA, intermediate_size=368),
    "baseline+moe": dict(**_CPU, **_MOE, intermediate_size=351, moe_intermediate_size=117),
    "baseline+mtp": dict(**_CPU, **_MTP, intermediate_size=217),
    # mini-v3 minus its MTP module (leave-one-out), the compute given back to the experts.
    "mini-v3-no-mtp": dict(**_CPU, **_MLA, **_MOE, intermediate_size=366, moe_intermediate_size=122),
    # --- chapter 08: one modern GPU (GPU_RUNS below) ---
    # A mini-V3 at GPT-2-small width: MLA (query and KV compression, decoupled RoPE), V3's
    # routing shape (64 fine-grained experts in 8 groups, 4 groups kept, top-8, 1 shared, scale
    # 2.5), first layer dense, one MTP module; vocab 8192 (a BPE trained on the corpus; the
    # trainer sets the real vocab). v_head_dim = qk head dim (96) so PyTorch's flash attention
    # kernel applies (it wants equal head dims).
    "gpu": dict(vocab_size=8192, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=1024,
                q_lora_rank=384, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32,
                v_head_dim=96, n_routed_experts=64, n_shared_experts=1, num_experts_per_tok=8,
                moe_intermediate_size=128, n_group=8, topk_group=4, first_k_dense_replace=1,
                routed_scaling_factor=2.5, num_nextn_predict_layers=1, mtp_loss_weight=0.3),
    # The dense baseline for the MFU comparison: MHA, SwiGLU, no MTP; its FFN width is chosen so
    # that its training FLOPs per token (1,024-token context) match "gpu"'s (minids.flops).
    "gpu-dense": dict(vocab_size=8192, hidden_size=768, intermediate_size=2112, num_hidden_layers=12,
                      num_attention_heads=12, max_position_embeddings=1024),
    "deepseek-v3": DEEPSEEK_V3,
}

# The training run of the chapter-08 presets (TrainConfig fields; config.gpu_train_config), sized by
# tokens per parameter, not by the hour: a compute-optimal dense model sees about 20 tokens per parameter
# (Hoffmann et al. 2022, "Chinchilla", arXiv 2203.15556, Table 3: 400M parameters -> 8.0B tokens, 1B ->
# 20.2B). Both presets get 20 x the 99,306,240 parameters of gpu-dense = 1.99B tokens, 15,153 steps of
# 131,072 (the same tokens at the same FLOPs per token: the same compute for the MoE and the dense model;
# tests/package/test_scale.py recomputes it). Shakespeare (1.5M tokens) is only the offline smoke run.
TOKENS_PER_PARAM = 20
_GPU_RUN = dict(batch_size=32, block_size=1024, grad_accum_steps=4, max_iters=15_153, learning_rate=6e-4,
                min_lr=6e-5, warmup_iters=500, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0,
                eval_interval=500, eval_iters=20, log_interval=20, device="cuda", dtype="bfloat16",
                compile=True, tokenizer="bpe:8192", checkpoint_interval=1000)
GPU_RUNS: dict[str, dict] = {
    "gpu": dict(_GPU_RUN, out_dir="out/gpu", mtp_loss_weight_final=0.1),   # V3: lambda 0.3, then 0.1 (§4.2)
    "gpu-dense": dict(_GPU_RUN, out_dir="out/gpu-dense"),
}
