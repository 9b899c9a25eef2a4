"""Configuration: one `ModelConfig` (field names as in DeepSeek-V3's config.json) and `TrainConfig`.

Every field is checked in `__post_init__` against the rules below (minids.validation); an error
names the field and the allowed range, e.g.
    ModelConfig(num_experts_per_tok=9, n_routed_experts=8, moe_intermediate_size=8)
    -> ValueError: num_experts_per_tok=9 must be an integer in [1, n_routed_experts=8]
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields

from .presets import DEEPSEEK_V3, GPU_RUNS, PRESETS
from .validation import check, require

__all__ = ["DEEPSEEK_V3", "PRESETS", "ModelConfig", "TrainConfig", "get_preset", "gpu_train_config"]


# What a valid config is: the rules of minids.validation, checked in this order by `validate`
# (a bound may name a field checked before it).
MODEL_RULES = {
    "vocab_size": "int >= 2", "hidden_size": "int >= 1", "intermediate_size": "int >= 1",
    "num_hidden_layers": "int >= 1", "num_attention_heads": "int >= 1", "max_position_embeddings": "int >= 1",
    "rms_norm_eps": "number in (0, 1]", "rope_theta": "number > 0", "initializer_range": "number > 0",
    "dropout": "number in [0, 1]", "num_nextn_predict_layers": "int >= 0", "mtp_loss_weight": "number >= 0",
}
MLA_RULES = {
    "kv_lora_rank": "int >= 1", "q_lora_rank": "int >= 0", "qk_nope_head_dim": "int >= 1",
    "qk_rope_head_dim": "even int >= 2; RoPE rotates pairs", "v_head_dim": "int >= 1",
    "mla_mode": "one of naive, absorb, reexpand",
}
ATTENTION_RULES = {                     # standard attention: MHA, GQA, MQA
    "kv_lora_rank": "int in [0, 0]", "head_dim": "even int >= 2; RoPE rotates pairs",
    "num_key_value_heads": "int in [1, num_attention_heads] dividing num_attention_heads",
}
MOE_RULES = {
    "n_routed_experts": "int >= 1", "num_experts_per_tok": "int in [1, n_routed_experts]",
    "n_shared_experts": "int >= 0", "moe_intermediate_size": "int >= 1",
    "n_group": "int in [1, n_routed_experts] dividing n_routed_experts", "topk_group": "int in [1, n_group]",
    "first_k_dense_replace": "int in [0, num_hidden_layers]", "routed_scaling_factor": "number > 0",
    "scoring_func": "one of sigmoid, softmax", "bias_update_speed": "number in [0, 1]",
    "aux_loss_alpha": "number in [0, 1]", "moe_dispatch": "one of fast, loop",
}
TRAIN_RULES = {
    "batch_size": "int >= 1", "block_size": "int >= 1", "grad_accum_steps": "int >= 1", "max_iters": "int >= 0",
    "learning_rate": "number in (0, 1]", "min_lr": "number in [0, learning_rate]", "warmup_iters": "int >= 0",
    "lr_decay_iters": "int >= 1 or None", "weight_decay": "number >= 0", "beta1": "number in [0, 1]",
    "beta2": "number in [0, 1]", "grad_clip": "number >= 0", "eval_interval": "int >= 1", "eval_iters": "int >= 1",
    "log_interval": "int >= 1", "num_threads": "int >= 0", "checkpoint_interval": "int >= 0",
    "seed": "int in [0, 4294967295]",
    "dtype": "one of float32, bfloat16, float16", "mtp_loss_switch": "number in [0, 1]",
    "mtp_loss_weight_final": "number >= 0 or None",
}


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
        check(self, MODEL_RULES)
        if self.rope_scaling is not None:
            rs = self.rope_scaling
            if not isinstance(rs, dict) or rs.get("type", rs.get("rope_type")) not in ("yarn", "default", None):
                raise ValueError(f"rope_scaling={rs!r} must be None or a dict of type 'yarn' (the only "
                                 "scaling V3 uses)")
            if rs.get("type", rs.get("rope_type")) == "yarn":
                require("rope_scaling['factor']", rs.get("factor", 1.0), "number >= 1")
        check(self, MLA_RULES if self.is_mla else ATTENTION_RULES)
        check(self, MOE_RULES if self.is_moe else {"n_routed_experts": "int in [0, 0]"})
        if self.is_moe:
            per_group = self.n_routed_experts // self.n_group
            require("num_experts_per_tok", self.num_experts_per_tok, f"int in [1, {self.topk_group * per_group}]; "
                    f"the topk_group={self.topk_group} groups kept hold {self.topk_group * per_group} experts")
            if self.n_group > 1:
                require("n_group", self.n_group, f"int in [1, {self.n_routed_experts // 2}]; a group scores its "
                        "two best experts, so each group needs >= 2")

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

    batch_size: int = 12               # sequences per micro-batch (per rank under torchrun)
    block_size: int = 64               # tokens per sequence (<= max_position_embeddings)
    grad_accum_steps: int = 1          # micro-batches per optimizer step
    max_iters: int = 2000              # optimizer steps
    learning_rate: float = 1e-3        # peak learning rate, after the warmup
    min_lr: float = 1e-4               # learning rate at the end of the cosine decay
    warmup_iters: int = 100            # steps of linear warmup
    lr_decay_iters: int | None = None  # step where the cosine reaches min_lr; None -> max_iters
    weight_decay: float = 0.1          # AdamW's, on matrices only
    beta1: float = 0.9                 # AdamW's first-moment decay
    beta2: float = 0.99                # AdamW's second-moment decay
    grad_clip: float = 1.0             # max gradient norm; 0 switches clipping off
    eval_interval: int = 250           # steps between evaluations
    eval_iters: int = 20               # batches per split in an evaluation
    log_interval: int = 10             # steps between logged records
    seed: int = 1337                   # initialisation, data order and dropout
    device: str = "cpu"                # "cpu", "cuda" or "cuda:N"
    dtype: str = "float32"             # "bfloat16" or "float16" -> autocast on GPU
    compile: bool = False              # torch.compile the model
    fsdp: bool = False                 # multi-GPU: shard params/grads/optimizer (FSDP2), not DDP
    num_threads: int = 0               # CPU threads; 0 leaves torch's choice
    dataset: str = "shakespeare"       # "shakespeare" or a token folder (minids.data.prepare_dataset)
    tokenizer: str = "char"            # "char", "bpe" or "bpe:N" (N = vocabulary size), for shakespeare
    out_dir: str | None = None         # checkpoints and metrics.jsonl; None -> nothing written
    checkpoint_interval: int = 0       # steps between checkpoints; 0 -> only at the end
    mtp_loss_weight_final: float | None = None  # V3: lambda 0.3, then 0.1 for the last part
    mtp_loss_switch: float = 0.7       # fraction of training after which the final lambda applies
    progress: bool = True              # a tqdm progress bar

    def __post_init__(self) -> None:
        check(self, TRAIN_RULES)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def get_preset(name: str, **overrides) -> ModelConfig:
    """A model preset of minids.presets, with some fields changed."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} must be one of {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})


def gpu_train_config(name: str = "gpu", **overrides) -> TrainConfig:
    """The suggested run for the chapter-08 presets on one modern GPU (H100/H200 class): bf16
    autocast, torch.compile, 32 x 1,024 tokens per micro-batch, 4 micro-batches per step
    (131,072 tokens), 15,153 steps = 1.99B tokens, 20 per parameter of gpu-dense (Chinchilla;
    presets.TOKENS_PER_PARAM), on a real corpus (python -m minids prepare). Under torchrun the
    step grows with the number of GPUs (batch_size is per GPU): divide max_iters by it."""
    if name not in GPU_RUNS:
        raise ValueError(f"name={name!r} must be one of {sorted(GPU_RUNS)}")
    return TrainConfig(**{**GPU_RUNS[name], **overrides})
