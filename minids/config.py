"""Configuration: one `ModelConfig` (field names as in DeepSeek-V3's config.json) and `TrainConfig`.

Every field is checked in `__post_init__`; an error names the field and the allowed range, e.g.
    ModelConfig(num_experts_per_tok=9, n_routed_experts=8)
    -> ValueError: num_experts_per_tok=9 must be in [1, n_routed_experts=8]
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


def _int_in(name: str, value: Any, lo: int, hi: float = math.inf) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool),
           f"{name}={value!r} must be an integer")
    hi_s = "inf" if hi == math.inf else str(int(hi))
    _check(lo <= value <= hi, f"{name}={value} must be in [{lo}, {hi_s}]")


def _float_in(name: str, value: Any, lo: float, hi: float = math.inf, lo_open: bool = False) -> None:
    _check(isinstance(value, (int, float)) and not isinstance(value, bool),
           f"{name}={value!r} must be a number")
    ok = (value > lo if lo_open else value >= lo) and value <= hi
    _check(ok, f"{name}={value} must be in {'(' if lo_open else '['}{lo}, {hi}]")


@dataclass
class ModelConfig:
    """The architecture. Switches: `kv_lora_rank=0` -> standard attention (MHA/GQA/MQA through
    `num_key_value_heads`), `n_routed_experts=0` -> dense SwiGLU FFN everywhere,
    `num_nextn_predict_layers=0` -> no MTP. All three off is a plain dense GPT (the baseline)."""

    vocab_size: int = 128
    hidden_size: int = 128                  # d, the model width
    intermediate_size: int = 352            # dense SwiGLU hidden size
    num_hidden_layers: int = 4
    num_attention_heads: int = 4            # n_h
    num_key_value_heads: int | None = None  # standard attention only; None -> = num_attention_heads
    head_dim: int | None = None             # standard attention only; None -> hidden_size // heads
    max_position_embeddings: int = 64       # the longest sequence the model accepts
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None        # YaRN: {"type": "yarn", "factor": 40, ...} as in V3
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    dropout: float = 0.0

    # --- Multi-head Latent Attention (V3 report eqs 1-11) ---
    q_lora_rank: int = 0                    # d_c' ; 0 = no query compression (as V2-Lite)
    kv_lora_rank: int = 0                   # d_c  ; 0 = standard attention, not MLA
    qk_nope_head_dim: int = 0               # d_h
    qk_rope_head_dim: int = 0               # d_h^R
    v_head_dim: int = 0
    mla_mode: str = "naive"                 # "naive" (cache K,V), "absorb", "reexpand" (attention.MLA)

    # --- DeepSeekMoE (eqs 12-16) ---
    n_routed_experts: int = 0               # N_r ; 0 = dense FFN everywhere
    n_shared_experts: int = 0               # N_s
    num_experts_per_tok: int = 0            # K_r
    moe_intermediate_size: int = 0          # hidden size of one (fine-grained) expert
    n_group: int = 1                        # expert groups (device groups in V3)
    topk_group: int = 1                     # groups kept per token
    first_k_dense_replace: int = 0          # the first k layers keep a dense FFN
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    scoring_func: str = "sigmoid"           # "sigmoid" (V3) or "softmax" (V2)
    topk_method: str = "noaux_tc"           # V3's name for bias-adjusted, group-limited top-k
    bias_update_speed: float = 0.001        # gamma of aux-loss-free balancing; 0 switches it off
    aux_loss_alpha: float = 0.0             # alpha of the sequence-wise balance loss (eq 17-20)
    moe_dispatch: str = "fast"              # "fast" (sorted, batched) or "loop" (readable)

    # --- Multi-Token Prediction (eqs 21-25) ---
    num_nextn_predict_layers: int = 0       # D
    mtp_loss_weight: float = 0.3            # lambda

    # keys of a real config.json that we read but do not use (kept for round trips)
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and self.num_attention_heads:
            self.head_dim = self.hidden_size // max(self.num_attention_heads, 1)
        self.validate()

    # ----------------------------------------------------------------------------- checks
    def validate(self) -> None:
        _int_in("vocab_size", self.vocab_size, 2)
        _int_in("hidden_size", self.hidden_size, 1)
        _int_in("intermediate_size", self.intermediate_size, 1)
        _int_in("num_hidden_layers", self.num_hidden_layers, 1)
        _int_in("num_attention_heads", self.num_attention_heads, 1)
        _int_in("max_position_embeddings", self.max_position_embeddings, 1)
        _float_in("rms_norm_eps", self.rms_norm_eps, 0.0, 1.0, lo_open=True)
        _float_in("rope_theta", self.rope_theta, 0.0, lo_open=True)
        _float_in("initializer_range", self.initializer_range, 0.0, lo_open=True)
        _float_in("dropout", self.dropout, 0.0, 1.0)
        if self.rope_scaling is not None:
            _check(isinstance(self.rope_scaling, dict), "rope_scaling must be a dict or None")
            kind = self.rope_scaling.get("type", self.rope_scaling.get("rope_type"))
            _check(kind in ("yarn", "default", None),
                   f"rope_scaling type={kind!r} must be 'yarn' (the only scaling V3 uses)")
            if kind == "yarn":
                _float_in("rope_scaling['factor']", self.rope_scaling.get("factor", 1.0), 1.0)
        if self.is_mla:
            _int_in("kv_lora_rank", self.kv_lora_rank, 1)
            _int_in("q_lora_rank", self.q_lora_rank, 0)
            _int_in("qk_nope_head_dim", self.qk_nope_head_dim, 1)
            _int_in("qk_rope_head_dim", self.qk_rope_head_dim, 2)
            _check(self.qk_rope_head_dim % 2 == 0,
                   f"qk_rope_head_dim={self.qk_rope_head_dim} must be even (RoPE rotates pairs)")
            _int_in("v_head_dim", self.v_head_dim, 1)
            _check(self.mla_mode in ("naive", "absorb", "reexpand"),
                   f"mla_mode={self.mla_mode!r} must be 'naive', 'absorb' or 'reexpand'")
        else:
            _int_in("kv_lora_rank", self.kv_lora_rank, 0, 0)
            _int_in("head_dim", self.head_dim, 2)
            _check(self.head_dim % 2 == 0, f"head_dim={self.head_dim} must be even (RoPE rotates pairs)")
            _int_in("num_key_value_heads", self.num_key_value_heads, 1, self.num_attention_heads)
            _check(self.num_attention_heads % self.num_key_value_heads == 0,
                   f"num_key_value_heads={self.num_key_value_heads} must divide "
                   f"num_attention_heads={self.num_attention_heads}")
        if self.is_moe:
            _int_in("n_routed_experts", self.n_routed_experts, 1)
            _int_in("num_experts_per_tok", self.num_experts_per_tok, 1, self.n_routed_experts)
            _check(self.num_experts_per_tok <= self.n_routed_experts,
                   f"num_experts_per_tok={self.num_experts_per_tok} must be in [1, "
                   f"n_routed_experts={self.n_routed_experts}]")
            _int_in("n_shared_experts", self.n_shared_experts, 0)
            _int_in("moe_intermediate_size", self.moe_intermediate_size, 1)
            _int_in("n_group", self.n_group, 1, self.n_routed_experts)
            _check(self.n_routed_experts % self.n_group == 0,
                   f"n_group={self.n_group} must divide n_routed_experts={self.n_routed_experts}")
            _int_in("topk_group", self.topk_group, 1, self.n_group)
            per_group = self.n_routed_experts // self.n_group
            _check(self.num_experts_per_tok <= self.topk_group * per_group,
                   f"num_experts_per_tok={self.num_experts_per_tok} must be <= topk_group * experts "
                   f"per group = {self.topk_group * per_group}")
            if self.n_group > 1:
                _check(per_group >= 2, f"n_group={self.n_group} leaves {per_group} expert per group; "
                       "a group scores its two best experts, so it needs >= 2")
            _int_in("first_k_dense_replace", self.first_k_dense_replace, 0, self.num_hidden_layers)
            _float_in("routed_scaling_factor", self.routed_scaling_factor, 0.0, lo_open=True)
            _check(self.scoring_func in ("sigmoid", "softmax"),
                   f"scoring_func={self.scoring_func!r} must be 'sigmoid' or 'softmax'")
            _float_in("bias_update_speed", self.bias_update_speed, 0.0, 1.0)
            _float_in("aux_loss_alpha", self.aux_loss_alpha, 0.0, 1.0)
            _check(self.moe_dispatch in ("fast", "loop"),
                   f"moe_dispatch={self.moe_dispatch!r} must be 'fast' or 'loop'")
        else:
            _int_in("n_routed_experts", self.n_routed_experts, 0, 0)
        _int_in("num_nextn_predict_layers", self.num_nextn_predict_layers, 0)
        _float_in("mtp_loss_weight", self.mtp_loss_weight, 0.0)

    # ----------------------------------------------------------------------------- derived
    @property
    def is_mla(self) -> bool:
        return bool(self.kv_lora_rank)

    @property
    def is_moe(self) -> bool:
        return bool(self.n_routed_experts)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.is_mla else self.head_dim

    def is_moe_layer(self, layer_id: int) -> bool:
        return self.is_moe and layer_id >= self.first_k_dense_replace

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed (and checked again)."""
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------------------- json
    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**self.extra, **d}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Build from a dict such as DeepSeek-V3's config.json: known keys are used, the rest
        is kept in `extra` (so it survives a round trip)."""
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        return cls(**known, extra=extra)

    @classmethod
    def from_json(cls, path: str) -> "ModelConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))


@dataclass
class TrainConfig:
    """The training run. Defaults are nanoGPT's documented CPU run on Shakespeare."""

    batch_size: int = 12
    block_size: int = 64               # tokens per sequence (<= max_position_embeddings)
    grad_accum_steps: int = 1
    max_iters: int = 2000
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # None -> max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0             # 0 switches clipping off
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    seed: int = 1337
    device: str = "cpu"
    dtype: str = "float32"             # "bfloat16" -> autocast on GPU
    compile: bool = False
    fsdp: bool = False                 # multi-GPU: shard params/grads/optimizer (FSDP2), not DDP
    num_threads: int = 0               # CPU threads; 0 leaves torch's choice
    dataset: str = "shakespeare"
    tokenizer: str = "char"
    out_dir: str | None = None         # checkpoints and metrics.jsonl; None -> nothing written
    checkpoint_interval: int = 0       # 0 -> only at the end
    mtp_loss_weight_final: float | None = None  # V3: lambda 0.3, then 0.1 for the last part
    mtp_loss_switch: float = 0.7       # fraction of training after which the final lambda applies
    progress: bool = True

    def __post_init__(self) -> None:
        _int_in("batch_size", self.batch_size, 1)
        _int_in("block_size", self.block_size, 1)
        _int_in("grad_accum_steps", self.grad_accum_steps, 1)
        _int_in("max_iters", self.max_iters, 0)
        _float_in("learning_rate", self.learning_rate, 0.0, 1.0, lo_open=True)
        _float_in("min_lr", self.min_lr, 0.0, self.learning_rate)
        _int_in("warmup_iters", self.warmup_iters, 0)
        if self.lr_decay_iters is not None:
            _int_in("lr_decay_iters", self.lr_decay_iters, 1)
        _float_in("weight_decay", self.weight_decay, 0.0)
        _float_in("beta1", self.beta1, 0.0, 1.0)
        _float_in("beta2", self.beta2, 0.0, 1.0)
        _float_in("grad_clip", self.grad_clip, 0.0)
        _int_in("eval_interval", self.eval_interval, 1)
        _int_in("eval_iters", self.eval_iters, 1)
        _int_in("log_interval", self.log_interval, 1)
        _int_in("num_threads", self.num_threads, 0)
        _int_in("checkpoint_interval", self.checkpoint_interval, 0)
        _check(self.dtype in ("float32", "bfloat16", "float16"),
               f"dtype={self.dtype!r} must be 'float32', 'bfloat16' or 'float16'")
        _float_in("mtp_loss_switch", self.mtp_loss_switch, 0.0, 1.0)
        if self.mtp_loss_weight_final is not None:
            _float_in("mtp_loss_weight_final", self.mtp_loss_weight_final, 0.0)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# ================================================================================= presets
# Values of the official DeepSeek-V3 config.json (671B); for accounting (chapter 07) and
# conformance only: nobody trains this here.
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
# and the three ideas as switches, so that each preset below reads as "which ideas are on".
_CPU = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=64)
_MLA = dict(q_lora_rank=0, kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32)
_MOE = dict(n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=4, topk_group=2,
            first_k_dense_replace=1, routed_scaling_factor=1.0)
_MTP = dict(num_nextn_predict_layers=1, mtp_loss_weight=0.3)

PRESETS: dict[str, dict] = {
    # A plain dense GPT at nanoGPT's documented CPU size.
    # SwiGLU's hidden size 352 keeps the FFN at ~ nanoGPT's 8*d^2 parameters (3 matrices, not 2).
    "baseline": dict(**_CPU, intermediate_size=352),
    # DeepSeek-V3's ideas at course size: MLA, fine-grained + shared experts with group-limited
    # sigmoid routing and aux-loss-free balancing, first layer dense, one MTP module. Sized
    # (chapter 06) so that its training FLOPs per token at context 64, MTP module INCLUDED
    # (minids.flops.flops_per_token), equal the baseline's within 0.2%: one shared + top-2 of 8
    # routed experts of 77 (4 groups of 2, 2 groups kept: V3 keeps half its groups), the dense
    # first layer as wide as the shared + K routed experts (V3: 18432 = 9 x 2048).
    "mini-v3": dict(**_CPU, **_MLA, **_MOE, **_MTP, intermediate_size=231, moe_intermediate_size=77),
    # Chapter 06 ablations: the baseline with exactly ONE idea switched on, the FFN width
    # re-chosen so the training FLOPs per token (context 64, MTP counted) stay the baseline's.
    "baseline+mla": dict(**_CPU, **_MLA, intermediate_size=368),
    "baseline+moe": dict(**_CPU, **_MOE, intermediate_size=351, moe_intermediate_size=117),
    "baseline+mtp": dict(**_CPU, **_MTP, intermediate_size=217),
    # mini-v3 minus its MTP module (leave-one-out), the compute given back to the experts (122).
    "mini-v3-no-mtp": dict(**_CPU, **_MLA, **_MOE, intermediate_size=366, moe_intermediate_size=122),
    # --- chapter 08: one modern GPU for about an hour (gpu_train_config below has the run) ---
    # A mini-V3 at GPT-2-small width: MLA (query and KV compression, decoupled RoPE), V3's
    # routing shape (64 fine-grained experts in 8 groups, 4 groups kept, top-8, 1 shared, scale
    # 2.5), first layer dense, one MTP module. 279M parameters (257M main + 23M MTP), 75M active,
    # at vocab 8192 (a BPE trained on the corpus; the trainer sets the real vocab). v_head_dim =
    # qk head dim (96) so PyTorch's flash attention kernel applies (it wants equal head dims).
    "gpu": dict(vocab_size=8192, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=1024,
                q_lora_rank=384, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32,
                v_head_dim=96, n_routed_experts=64, n_shared_experts=1, num_experts_per_tok=8,
                moe_intermediate_size=128, n_group=8, topk_group=4, first_k_dense_replace=1,
                routed_scaling_factor=2.5, num_nextn_predict_layers=1, mtp_loss_weight=0.3),
    # The dense baseline for the MFU comparison: MHA, SwiGLU, no MTP; its FFN width is chosen so
    # that its training FLOPs per token (1,024-token context) match "gpu"'s within 1% (minids.flops).
    "gpu-dense": dict(vocab_size=8192, hidden_size=768, intermediate_size=2112, num_hidden_layers=12,
                      num_attention_heads=12, max_position_embeddings=1024),
    "deepseek-v3": DEEPSEEK_V3,
}


def get_preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} must be one of {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})


def gpu_train_config(name: str = "gpu", **overrides) -> TrainConfig:
    """The suggested run for the chapter-08 presets on one modern GPU (H100/H200 class): bf16
    autocast, torch.compile, 32 x 1,024 tokens per micro-batch, 4 micro-batches per step
    (131,072 tokens), 14,000 steps = 1.84B tokens (chapter 08 estimates its hours with
    minids.flops). Under torchrun the step grows with the number of GPUs (batch_size is per
    GPU): divide max_iters by it."""
    if name not in ("gpu", "gpu-dense"):
        raise ValueError(f"name={name!r} must be 'gpu' or 'gpu-dense'")
    base = dict(batch_size=32, block_size=1024, grad_accum_steps=4, max_iters=14_000,
                learning_rate=6e-4, min_lr=6e-5, warmup_iters=500, weight_decay=0.1, beta1=0.9,
                beta2=0.95, grad_clip=1.0, eval_interval=500, eval_iters=20, log_interval=20,
                device="cuda", dtype="bfloat16", compile=True, tokenizer="bpe:8192",
                out_dir=f"out/{name}", checkpoint_interval=1000)
    if name == "gpu":
        base.update(mtp_loss_weight_final=0.1)            # V3: lambda 0.3, then 0.1 (section 4.2)
    return TrainConfig(**{**base, **overrides})
