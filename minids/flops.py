"""Accounting from the config alone: parameters (total / active / embedding), FLOPs per token,
KV-cache bytes, and the GPU-hours and dollars they imply. No model is built (see
`meta_param_count` for the cross-check that builds one on the meta device, allocating nothing)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ModelConfig

# Dense (no sparsity) peak tensor-core throughput in FLOP/s, from the vendors' data sheets.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100": {"bfloat16": 989e12, "float16": 989e12, "float8": 1979e12, "float32": 67e12},
    "H800": {"bfloat16": 989e12, "float16": 989e12, "float8": 1979e12, "float32": 67e12},
    "H200": {"bfloat16": 989e12, "float16": 989e12, "float8": 1979e12, "float32": 67e12},
    "H20": {"bfloat16": 148e12, "float16": 148e12, "float8": 296e12, "float32": 44e12},
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12},
    "B200": {"bfloat16": 2250e12, "float16": 2250e12, "float8": 4500e12, "float32": 80e12},
}


def peak_flops(device: str, dtype: str = "bfloat16") -> float:
    """Peak FLOP/s of `device` (a name in PEAK_FLOPS, or a CUDA device name containing one)."""
    name = next((k for k in PEAK_FLOPS if k.lower() in device.lower()), None)
    if name is None:
        raise ValueError(f"device={device!r} is not in the peak table; known: {sorted(PEAK_FLOPS)}")
    if dtype not in PEAK_FLOPS[name]:
        raise ValueError(f"dtype={dtype!r} has no peak for {name}; known: {sorted(PEAK_FLOPS[name])}")
    return PEAK_FLOPS[name][dtype]


@dataclass
class ParamCount:
    total: int          # every parameter, MTP modules included
    active: int         # used per token by the main model (K of the routed experts)
    embedding: int      # the input embedding table
    mtp: int            # MTP modules' own parameters (embedding and head are shared)

    @property
    def main(self) -> int:
        return self.total - self.mtp


def _attention_params(c: ModelConfig) -> int:
    d, H = c.hidden_size, c.num_attention_heads
    if not c.is_mla:
        return d * H * c.head_dim + 2 * d * c.num_key_value_heads * c.head_dim + H * c.head_dim * d
    qk = c.qk_nope_head_dim + c.qk_rope_head_dim
    q = (d * c.q_lora_rank + c.q_lora_rank + c.q_lora_rank * H * qk) if c.q_lora_rank else d * H * qk
    kv = d * (c.kv_lora_rank + c.qk_rope_head_dim) + c.kv_lora_rank \
        + c.kv_lora_rank * H * (c.qk_nope_head_dim + c.v_head_dim)
    return q + kv + H * c.v_head_dim * d


def _ffn_params(c: ModelConfig, layer_id: int) -> tuple[int, int]:
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
    d, V = c.hidden_size, c.vocab_size
    emb = V * d
    head = 0 if c.tie_word_embeddings else V * d
    total = active = emb + head + d                       # embedding, head, final norm
    for i in range(c.num_hidden_layers):
        t, a = _ffn_params(c, i)
        attn = _attention_params(c) + 2 * d               # + the two norms
        total, active = total + attn + t, active + attn + a
    mtp = 0
    for k in range(c.num_nextn_predict_layers):
        t, _ = _ffn_params(c, c.num_hidden_layers + k)
        mtp += 2 * d + 2 * d * d + d + _attention_params(c) + 2 * d + t   # norms, M_k, norm, block
    return ParamCount(total=total + mtp, active=active, embedding=emb, mtp=mtp)


def meta_param_count(c: ModelConfig) -> int:
    """Count by building the model on the meta device (no memory is allocated)."""
    from .model import MiniDeepSeek
    with torch.device("meta"):
        return MiniDeepSeek(c).num_params()


def attention_flops_per_token(c: ModelConfig, seq_len: int) -> int:
    """Forward FLOPs of the score and value matmuls for one token attending to `seq_len` keys
    (PaLM's convention: the full context, causal masking not discounted)."""
    qk = c.qk_head_dim
    v = c.v_head_dim if c.is_mla else c.head_dim
    return 2 * c.num_hidden_layers * c.num_attention_heads * seq_len * (qk + v)


def flops_per_token(c: ModelConfig, seq_len: int, training: bool = True, mtp: bool = True) -> int:
    """Matmul FLOPs per token: 2 per active non-embedding weight (head included) plus attention,
    times 3 for training (forward + backward). MTP modules add their block and projection."""
    p = param_count(c)
    matmul = p.active - p.embedding
    fwd = 2 * matmul + attention_flops_per_token(c, seq_len)
    if mtp and c.num_nextn_predict_layers:
        per_layer = attention_flops_per_token(c, seq_len) // c.num_hidden_layers
        head = c.vocab_size * c.hidden_size
        for k in range(c.num_nextn_predict_layers):
            _, a = _ffn_params(c, c.num_hidden_layers + k)
            fwd += 2 * (2 * c.hidden_size ** 2 + _attention_params(c) + a + head) + per_layer
    return 3 * fwd if training else fwd
