"""Accounting from the config alone: parameters (total / active / embedding), FLOPs per token and
for a whole training run, KV-cache bytes, and the GPUs' peak FLOP/s that MFU divides by (the
GPU-hours and dollars all this implies: minids.cost).
No model is built (`meta_param_count` cross-checks by building one on the meta device).

Conventions (chapter 07 explains them):
- A matrix-vector product with an (m, n) weight costs 2*m*n FLOPs (one multiply, one add).
- Forward FLOPs per token = 2 x (weights the token multiplies by: attention projections, the
  router, the shared and the K chosen routed experts, the output head; not the embedding lookup)
  + the attention matmuls q.k and a.v over the keys it attends to (`attention_flops_per_token`).
- Training = 3 x forward (the backward pass costs about twice the forward: gradients with
  respect to activations and to weights). No recomputation is counted: this is "model FLOPs",
  so an MFU computed from them is model-FLOPs utilisation (PaLM, arXiv 2204.02311, app. B).
- Attention over a sequence of T tokens: by default every query is charged T keys (PaLM's
  convention); `causal=True` charges the (T+1)/2 keys a causal query sees on average.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .config import ModelConfig
from .validation import require

# Dense (no sparsity) peak throughput per GPU in FLOP/s, from NVIDIA's data sheets (SXM parts;
# data sheets print tensor-core figures "with sparsity": the dense peak is half of those).
# - H100 SXM5 (H100 Tensor Core GPU data sheet): BF16/FP16 989 TFLOPS, FP8 1,979, FP32 67.
# - H800 SXM5: the export version of the H100 with the same compute and slower NVLink
#   (400 GB/s); DeepSeek-V3 was trained on 2,048 of them (V3 report, section 3.1).
# - H200 SXM (H200 data sheet): the H100's compute with 141 GB of HBM3e.
# - H20: 148 TFLOPS BF16, 296 FP8, 44 FP32 (the China-market Hopper part; reported spec).
# - A100 SXM4/PCIe (A100 data sheet): BF16/FP16 312 TFLOPS, FP32 19.5 (156 as TF32). A800: same.
# - B200 (HGX B200 data sheet): BF16/FP16 2.25 PFLOPS, FP8 4.5 PFLOPS.
# - V100 SXM2 (V100 data sheet): FP16 tensor 125 TFLOPS, FP32 15.7 (no bfloat16).
# - T4 (T4 data sheet): FP16 tensor 65 TFLOPS, FP32 8.1 (no bfloat16).
# - L4 (L4 data sheet): BF16/FP16 121 TFLOPS, FP8 242, FP32 30.3.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100": {"bfloat16": 989e12, "float16": 989e12, "float8": 1979e12, "float32": 67e12},
    "H800": {"bfloat16": 989e12, "float16": 989e12, "float8": 1979e12, "float32": 67e12},
    "H200": {"bfloat16": 989e12, "float16": 989e12, "float8": 1979e12, "float32": 67e12},
    "H20": {"bfloat16": 148e12, "float16": 148e12, "float8": 296e12, "float32": 44e12},
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12},
    "A800": {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12},
    "B200": {"bfloat16": 2250e12, "float16": 2250e12, "float8": 4500e12, "float32": 80e12},
    "V100": {"float16": 125e12, "float32": 15.7e12},
    "T4": {"float16": 65e12, "float32": 8.1e12},
    "L4": {"bfloat16": 121e12, "float16": 121e12, "float8": 242e12, "float32": 30.3e12},
}
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp8": "float8",
                  "fp32": "float32", "float": "float32"}


def peak_flops(device: str, dtype: str = "bfloat16") -> float:
    """Peak FLOP/s of `device`: a name in PEAK_FLOPS or a CUDA device name that contains one as a
    whole word ("NVIDIA H100 80GB HBM3" -> H100; "NVIDIA L40S" is not an L4)."""
    if not isinstance(device, str):
        raise ValueError(f"device={device!r} must be a string, one of {sorted(PEAK_FLOPS)}")
    name = next((k for k in PEAK_FLOPS
                 if re.search(rf"(?<![a-z0-9]){k.lower()}(?![a-z0-9])", device.lower())), None)
    if name is None:
        raise ValueError(f"device={device!r} is not in the peak table; must be one of {sorted(PEAK_FLOPS)}")
    dtype = _DTYPE_ALIASES.get(str(dtype).removeprefix("torch."), str(dtype).removeprefix("torch."))
    if dtype not in PEAK_FLOPS[name]:
        raise ValueError(f"dtype={dtype!r} has no peak for {name}; must be one of {sorted(PEAK_FLOPS[name])}")
    return PEAK_FLOPS[name][dtype]


@dataclass
class ParamCount:
    total: int          # every parameter, MTP modules included
    active: int         # used per token by the main model (K of the routed experts)
    embedding: int      # the input embedding table
    mtp: int            # MTP modules' own parameters (embedding and head are shared)

    @property
    def main(self) -> int:
        """The main model without its MTP modules (V3: 671B)."""
        return self.total - self.mtp

    @property
    def active_non_embedding(self) -> int:
        """Active parameters without the input embedding table (a token reads one row of it).
        This is the convention of DeepSeek's "activated parameters": V3 counts 36.6B here and
        reports 37B (37.6B with the embedding table)."""
        return self.active - self.embedding


def attention_params(c: ModelConfig) -> int:
    d, H = c.hidden_size, c.num_attention_heads
    if not c.is_mla:
        return d * H * c.head_dim + 2 * d * c.num_key_value_heads * c.head_dim + H * c.head_dim * d
    qk = c.qk_nope_head_dim + c.qk_rope_head_dim
    q = (d * c.q_lora_rank + c.q_lora_rank + c.q_lora_rank * H * qk) if c.q_lora_rank else d * H * qk
    kv = d * (c.kv_lora_rank + c.qk_rope_head_dim) + c.kv_lora_rank \
        + c.kv_lora_rank * H * (c.qk_nope_head_dim + c.v_head_dim)
    return q + kv + H * c.v_head_dim * d


def ffn_params(c: ModelConfig, layer_id: int) -> tuple[int, int]:
    """(total, active) parameters of one layer's FFN."""
    d = c.hidden_size
    if not c.is_moe_layer(layer_id):
        n = 3 * d * c.intermediate_size
        return n, n
    expert = 3 * d * c.moe_intermediate_size
    shared = c.n_shared_experts * expert
    router = c.n_routed_experts * d
    return (router + shared + c.n_routed_experts * expert,
            router + shared + c.num_experts_per_tok * expert)


def param_count(c: ModelConfig) -> ParamCount:
    """Count every parameter from the config alone (V3: 671.03B main + 11.61B MTP, 37.55B
    active; `meta_param_count` builds the model on the meta device to cross-check)."""
    d, V = c.hidden_size, c.vocab_size
    emb = V * d
    head = 0 if c.tie_word_embeddings else V * d
    total = active = emb + head + d                       # embedding, head, final norm
    for i in range(c.num_hidden_layers):
        t, a = ffn_params(c, i)
        attn = attention_params(c) + 2 * d               # + the two norms
        total, active = total + attn + t, active + attn + a
    mtp = 0
    for k in range(c.num_nextn_predict_layers):
        t, _ = ffn_params(c, c.num_hidden_layers + k)
        mtp += 2 * d + 2 * d * d + d + attention_params(c) + 2 * d + t   # norms, M_k, norm, block
    return ParamCount(total=total + mtp, active=active, embedding=emb, mtp=mtp)


def meta_param_count(c: ModelConfig) -> int:
    """Count by building the model on the meta device (no memory is allocated)."""
    from .model import MiniDeepSeek
    with torch.device("meta"):
        return MiniDeepSeek(c).num_params()


def attention_matmul_params(c: ModelConfig) -> int:
    """Weights of one attention layer that multiply activations (its RMSNorm vectors excluded)."""
    norms = c.q_lora_rank + c.kv_lora_rank if c.is_mla else 0
    return attention_params(c) - norms


def matmul_params_per_token(c: ModelConfig, mtp: bool = False) -> int:
    """Weights one token is multiplied by in a forward pass: per layer the attention projections
    and the FFN (dense, or router + shared + K routed experts), then the output head (counted
    even when tied to the embedding: tying shares the weights, not the work). With `mtp`, every
    MTP module adds M_k (2d x d), its block and the shared head once more."""
    d, V, L = c.hidden_size, c.vocab_size, c.num_hidden_layers
    n = V * d                                                        # output head
    for i in range(L):
        n += attention_matmul_params(c) + ffn_params(c, i)[1]
    if mtp:
        for k in range(c.num_nextn_predict_layers):
            n += 2 * d * d + attention_matmul_params(c) + ffn_params(c, L + k)[1] + V * d
    return n


def attention_flops_per_token(c: ModelConfig, seq_len: int, causal: bool = False,
                              layers: int | None = None) -> float:
    """Forward FLOPs of the two attention matmuls of one query over `seq_len` keys, summed over
    `layers` (default: all main layers): scores q.k and the weighted sum of values,
        2 * layers * num_attention_heads * keys * (qk_head_dim + v_head_dim).
    MLA is counted as it trains ("naive": keys and values expanded per head, 192 + 128 dims for
    V3). GQA/MQA do not change it (every query head still scores every key). `causal=True`
    charges the (seq_len + 1) / 2 keys a causal query sees on average, instead of seq_len."""
    require("seq_len", seq_len, "int >= 1")
    keys = (seq_len + 1) / 2 if causal else seq_len
    v = c.v_head_dim if c.is_mla else c.head_dim
    layers = c.num_hidden_layers if layers is None else layers
    return float(2 * layers * c.num_attention_heads * keys * (c.qk_head_dim + v))


def flops_per_token(c: ModelConfig, seq_len: int, training: bool = True, mtp: bool | None = None,
                    causal: bool = False) -> float:
    """Model FLOPs per token: 2 per weight the token multiplies by (`matmul_params_per_token`)
    plus attention over `seq_len` keys; training = 3 x forward. `mtp` (default: = training)
    adds the MTP modules, which run in training and are dropped (or used as a draft) in inference.
    Elementwise work (norms, activations, softmax, RoPE) is left out: it is < 1% for V3."""
    mtp = training if mtp is None else mtp
    depth = c.num_nextn_predict_layers if mtp else 0
    fwd = 2 * matmul_params_per_token(c, mtp) + attention_flops_per_token(
        c, seq_len, causal, layers=c.num_hidden_layers + depth)
    return 3 * fwd if training else fwd


# ================================================================================== training
def flops_6nd(n_params: float, tokens: float) -> float:
    """The rule of thumb C = 6 N D (Kaplan et al. 2020, arXiv 2001.08361): N parameters each
    used by every token, D training tokens; attention ignored. For an MoE, N = active params."""
    require("n_params", n_params, "number >= 0")
    require("tokens", tokens, "number >= 0")
    return 6.0 * n_params * tokens


def training_flops(c: ModelConfig, tokens: float, seq_len: int, causal: bool = False,
                   mtp: bool = True) -> float:
    """Model FLOPs to train on `tokens` tokens in sequences of `seq_len`."""
    require("tokens", tokens, "number >= 0")
    return tokens * flops_per_token(c, seq_len, training=True, mtp=mtp, causal=causal)


# ================================================================================== KV cache
# What decoding keeps per token (chapters 02-03). Standard attention caches a key and a value
# per KV head; MLA caches one latent c_KV and one shared rope key k_R (V3 report, eqs 1 and 3).
DTYPE_BYTES: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2, "float8": 1}


def kv_cache_values_per_token(c: ModelConfig) -> int:
    """Values one layer caches per token: MLA kv_lora_rank + qk_rope_head_dim (576 for V3);
    MHA / GQA / MQA 2 * num_key_value_heads * head_dim (32,768 for 128 heads of 128)."""
    if c.is_mla:
        return c.kv_lora_rank + c.qk_rope_head_dim
    return 2 * c.num_key_value_heads * c.head_dim


def dtype_bytes(dtype) -> int:
    """Bytes per value of a dtype name ('bfloat16', ...) or a torch.dtype."""
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype={dtype!r} must be a torch.dtype or one of {sorted(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def kv_cache_bytes(c: ModelConfig, context_len: int, dtype="bfloat16", batch: int = 1) -> int:
    """Bytes of the whole model's cache (all num_hidden_layers main layers; an MTP draft
    module would add one layer's worth) for `batch` sequences of `context_len` tokens."""
    require("context_len", context_len, "int >= 0")
    require("batch", batch, "int >= 1")
    return batch * context_len * c.num_hidden_layers * kv_cache_values_per_token(c) * dtype_bytes(dtype)
