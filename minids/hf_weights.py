"""Hugging Face weights: state dicts both ways between `MiniDeepSeek` and `DeepseekV3ForCausalLM`
(or the released checkpoint's files). Plain tensors in, plain tensors out: no model is built and
`transformers` is not needed; minids.hf builds the models around them.

Names, minids -> Hugging Face (layer i; `model.` prefix on everything but `lm_head`):
    embed_tokens / norm / lm_head              -> model.embed_tokens / model.norm / lm_head
    layers.i.attn_norm / ffn_norm              -> layers.i.input_layernorm / post_attention_layernorm
    attn.wq  (no query compression)            -> self_attn.q_proj
    attn.wq_a / q_norm / wq_b                  -> self_attn.q_a_proj / q_a_layernorm / q_b_proj
    attn.wkv_a / kv_norm                       -> self_attn.kv_a_proj_with_mqa / kv_a_layernorm
    attn.wkv_b / wo                            -> self_attn.kv_b_proj / o_proj
    ffn.{gate,up,down}_proj (dense layers)     -> mlp.{gate,up,down}_proj
    ffn.router.weight / ffn.router.bias (buffer) -> mlp.gate.weight / mlp.gate.e_score_correction_bias
    ffn.experts.gate_up_proj (E, 2I, d)        -> mlp.experts.gate_up_proj (same layout, transformers 5)
    ffn.experts.down_proj (E, d, I)            -> mlp.experts.down_proj
                      or, expert_layout="per_expert" (transformers 4, the released checkpoint):
                                                  mlp.experts.{e}.gate_proj / up_proj / down_proj
    ffn.shared_experts.*                       -> mlp.shared_experts.*
    mtp.k.{enorm,hnorm,eh_proj}, mtp.k.norm    -> layers.{L+k}.{enorm,hnorm,eh_proj}, .shared_head.norm
    mtp.k.block.*                              -> layers.{L+k}.* (as a main layer), as in the
                                                  released checkpoint (include_mtp=True only)

RoPE layout. minids rotates consecutive pairs (x0, x1), (x2, x3), ... as complex numbers, like
DeepSeek's reference code and the released weights. Hugging Face offers two layouts:
- `rope_interleave=True` (its default, used for the released weights) reads the same consecutive
  pairs and writes the rotated pairs de-interleaved, [real parts ; imaginary parts]. It does so
  to q AND k, and a dot product does not change when both vectors are permuted the same way:
  the weights map unchanged.
- `rope_interleave=False` rotates the pairs (x_j, x_{j+D/2}) ("rotate_half", Llama style). Then
  the rope rows of W^QR (the last qk_rope_head_dim rows of each head in q_proj / q_b_proj) and of
  W^KR (the last qk_rope_head_dim rows of kv_a_proj_with_mqa) are permuted: HF row j takes
  minids row 2j and HF row D/2 + j takes minids row 2j + 1 (`rope_permutation`).

With n_shared_experts=0 HF still builds a shared expert, zero rows wide (minids has none): written
as zero-width tensors, skipped when read.
"""

from __future__ import annotations

import re

import torch

from .config import ModelConfig


def rope_permutation(rope_dim: int) -> torch.Tensor:
    """Row order taking consecutive-pair RoPE rows (minids) to rotate_half rows (HF,
    rope_interleave=False): [0, 2, 4, ..., 1, 3, 5, ...]."""
    return torch.cat([torch.arange(0, rope_dim, 2), torch.arange(1, rope_dim, 2)])


def _permute_q(w: torch.Tensor, cfg: ModelConfig, perm: torch.Tensor) -> torch.Tensor:
    """Permute the rope rows of every head of a query projection (H*(nope+rope), in)."""
    H, nope = cfg.num_attention_heads, cfg.qk_nope_head_dim
    w = w.view(H, nope + cfg.qk_rope_head_dim, -1)
    return torch.cat([w[:, :nope], w[:, nope:][:, perm]], dim=1).reshape(-1, w.size(-1))


def _permute_kv_a(w: torch.Tensor, cfg: ModelConfig, perm: torch.Tensor) -> torch.Tensor:
    """Permute the rope rows (the last qk_rope_head_dim) of W^DKV;W^KR (r + rope, in)."""
    r = cfg.kv_lora_rank
    return torch.cat([w[:r], w[r:][perm]], dim=0)


# (minids suffix, HF suffix) inside one block; MoE / MLP specifics are handled in code
_BLOCK_NAMES = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("attn.wq.weight", "self_attn.q_proj.weight"),
    ("attn.wq_a.weight", "self_attn.q_a_proj.weight"),
    ("attn.q_norm.weight", "self_attn.q_a_layernorm.weight"),
    ("attn.wq_b.weight", "self_attn.q_b_proj.weight"),
    ("attn.wkv_a.weight", "self_attn.kv_a_proj_with_mqa.weight"),
    ("attn.kv_norm.weight", "self_attn.kv_a_layernorm.weight"),
    ("attn.wkv_b.weight", "self_attn.kv_b_proj.weight"),
    ("attn.wo.weight", "self_attn.o_proj.weight"),
    ("ffn.gate_proj.weight", "mlp.gate_proj.weight"),
    ("ffn.up_proj.weight", "mlp.up_proj.weight"),
    ("ffn.down_proj.weight", "mlp.down_proj.weight"),
    ("ffn.router.weight", "mlp.gate.weight"),
    ("ffn.router.bias", "mlp.gate.e_score_correction_bias"),
    ("ffn.shared_experts.gate_proj.weight", "mlp.shared_experts.gate_proj.weight"),
    ("ffn.shared_experts.up_proj.weight", "mlp.shared_experts.up_proj.weight"),
    ("ffn.shared_experts.down_proj.weight", "mlp.shared_experts.down_proj.weight"),
]
_MTP_NAMES = [("enorm.weight", "enorm.weight"), ("hnorm.weight", "hnorm.weight"),
              ("eh_proj.weight", "eh_proj.weight"), ("norm.weight", "shared_head.norm.weight")]


def _state_dict(x) -> dict:
    return x.state_dict() if isinstance(x, torch.nn.Module) else dict(x)


def _convert(name: str, w: torch.Tensor, cfg: ModelConfig, perm) -> torch.Tensor:
    """One block weight across the bridge (either way): permute the rope rows of the query and
    latent projections when `perm` is given; HF keeps the router bias in fp32."""
    if perm is not None and name in ("attn.wq.weight", "attn.wq_b.weight"):
        return _permute_q(w, cfg, perm)
    if perm is not None and name == "attn.wkv_a.weight":
        return _permute_kv_a(w, cfg, perm)
    return w.float() if name == "ffn.router.bias" else w


def _block_to_hf(sd: dict, src: str, dst: str, cfg: ModelConfig, perm, expert_layout: str, out: dict):
    for a, b in _BLOCK_NAMES:
        if src + a in sd:
            out[dst + b] = _convert(a, sd[src + a], cfg, perm)
    if src + "ffn.experts.gate_up_proj" in sd:
        gu = sd[src + "ffn.experts.gate_up_proj"]                      # (E, 2I, d)
        down = sd[src + "ffn.experts.down_proj"]                       # (E, d, I)
        if expert_layout == "stacked":
            out[dst + "mlp.experts.gate_up_proj"] = gu
            out[dst + "mlp.experts.down_proj"] = down
        else:
            I = gu.size(1) // 2
            for e in range(gu.size(0)):
                out[f"{dst}mlp.experts.{e}.gate_proj.weight"] = gu[e, :I]
                out[f"{dst}mlp.experts.{e}.up_proj.weight"] = gu[e, I:]
                out[f"{dst}mlp.experts.{e}.down_proj.weight"] = down[e]
        if not cfg.n_shared_experts:           # HF builds zero-width shared experts: (0, d), (0, d), (d, 0)
            d = gu.size(-1)
            for name, shape in [("gate_proj", (0, d)), ("up_proj", (0, d)), ("down_proj", (d, 0))]:
                out[f"{dst}mlp.shared_experts.{name}.weight"] = gu.new_zeros(shape)


def _block_from_hf(sd: dict, src: str, dst: str, cfg: ModelConfig, inv, out: dict):
    for a, b in _BLOCK_NAMES:
        if src + b in sd and not (a.startswith("ffn.shared_experts.") and sd[src + b].numel() == 0):
            out[dst + a] = _convert(a, sd[src + b], cfg, inv)       # (no zero-width shared experts)
    if src + "mlp.experts.gate_up_proj" in sd:                          # transformers >= 5
        out[dst + "ffn.experts.gate_up_proj"] = sd[src + "mlp.experts.gate_up_proj"]
        out[dst + "ffn.experts.down_proj"] = sd[src + "mlp.experts.down_proj"]
    elif src + "mlp.experts.0.gate_proj.weight" in sd:                   # per-expert modules
        E = 1 + max(int(m.group(1)) for k in sd
                    if (m := re.fullmatch(re.escape(src) + r"mlp\.experts\.(\d+)\.gate_proj\.weight", k)))
        e = [f"{src}mlp.experts.{i}." for i in range(E)]
        out[dst + "ffn.experts.gate_up_proj"] = torch.stack(
            [torch.cat([sd[p + "gate_proj.weight"], sd[p + "up_proj.weight"]]) for p in e])
        out[dst + "ffn.experts.down_proj"] = torch.stack([sd[p + "down_proj.weight"] for p in e])


def state_dict_to_hf(model_or_sd, cfg: ModelConfig, rope_interleave: bool = True,
                     include_mtp: bool = False, expert_layout: str = "stacked") -> dict:
    """minids weights -> a `DeepseekV3ForCausalLM` state dict. include_mtp=True adds the MTP
    modules as the released checkpoint stores them (layers L.., with their own copy of the
    embedding and head); HF's model class itself has no such parameters, so leave it False to
    `load_state_dict` strictly. expert_layout: "stacked" (transformers 5) or "per_expert"."""
    if expert_layout not in ("stacked", "per_expert"):
        raise ValueError(f"expert_layout={expert_layout!r} must be 'stacked' or 'per_expert'")
    sd = _state_dict(model_or_sd)
    perm = None if rope_interleave else rope_permutation(cfg.qk_rope_head_dim)
    out = {"model.embed_tokens.weight": sd["embed_tokens.weight"], "model.norm.weight": sd["norm.weight"],
           "lm_head.weight": sd["lm_head.weight"]}
    L = cfg.num_hidden_layers
    for i in range(L):
        _block_to_hf(sd, f"layers.{i}.", f"model.layers.{i}.", cfg, perm, expert_layout, out)
    if include_mtp:
        for k in range(cfg.num_nextn_predict_layers):
            dst = f"model.layers.{L + k}."
            for a, b in _MTP_NAMES:
                out[dst + b] = sd[f"mtp.{k}.{a}"]
            out[dst + "embed_tokens.weight"] = sd["embed_tokens.weight"]
            out[dst + "shared_head.head.weight"] = sd["lm_head.weight"]
            _block_to_hf(sd, f"mtp.{k}.block.", dst, cfg, perm, expert_layout, out)
    return out


def state_dict_from_hf(hf_model_or_sd, cfg: ModelConfig, rope_interleave: bool = True) -> dict:
    """A `DeepseekV3ForCausalLM` (or released-checkpoint) state dict -> minids weights. MTP
    layers (model.layers.L..) are read when present; fp8 block-quantised weights are not
    handled (dequantise them first)."""
    sd = _state_dict(hf_model_or_sd)
    if any(k.endswith("weight_scale_inv") for k in sd):
        raise ValueError("fp8 weights (weight_scale_inv): dequantise them to bf16/fp32 first")
    inv = None if rope_interleave else torch.argsort(rope_permutation(cfg.qk_rope_head_dim))
    out = {"embed_tokens.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"],
           "lm_head.weight": sd.get("lm_head.weight", sd["model.embed_tokens.weight"])}
    L = cfg.num_hidden_layers
    for i in range(L):
        _block_from_hf(sd, f"model.layers.{i}.", f"layers.{i}.", cfg, inv, out)
    for k in range(cfg.num_nextn_predict_layers):
        src = f"model.layers.{L + k}."
        if src + "eh_proj.weight" not in sd:
            continue
        for a, b in _MTP_NAMES:
            out[f"mtp.{k}.{a}"] = sd[src + b]
        _block_from_hf(sd, src, f"mtp.{k}.block.", cfg, inv, out)
    return out
