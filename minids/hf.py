"""Hugging Face interop (optional extra `minids[hf]`): `ModelConfig` <-> `DeepseekV3Config`, and
state dicts both ways between `MiniDeepSeek` and `DeepseekV3ForCausalLM`. `transformers` is
imported only inside the functions that need it.

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

Other differences the converter bridges: with n_shared_experts=0 HF still builds a shared
expert, zero rows wide (minids has none); YaRN's `truncate` (HF, default True) is carried in
rope_scaling; HF's default routed-experts kernel ("grouped_mm") refuses, on a CPU, expert rows
that are not multiples of 16 bytes, so `to_hf` picks "eager" there (`experts_implementation_for`).
What minids cannot compute is refused by `config_from_hf` with a ValueError naming the field.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Mapping

import torch

from .config import DEEPSEEK_V3, ModelConfig
from .layers import yarn_mscale

_MISSING = ("Hugging Face interop needs `transformers` (a release with DeepseekV3ForCausalLM, e.g. the "
            "pinned one): pip install 'minids[hf]'")

# Keys a real DeepSeek-V3 config.json holds besides the architecture (values as published with
# the weights). `deepseek_v3_config_json()` adds them to `config.DEEPSEEK_V3`.
_V3_JSON_EXTRAS = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config",
                 "AutoModel": "modeling_deepseek.DeepseekV3Model",
                 "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"},
    "model_type": "deepseek_v3", "torch_dtype": "bfloat16", "transformers_version": "4.33.1",
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
    "bos_token_id": 0, "eos_token_id": 1, "hidden_act": "silu", "attention_bias": False,
    "attention_dropout": 0.0, "aux_loss_alpha": 0.001, "seq_aux": True, "ep_size": 1,
    "moe_layer_freq": 1, "pretraining_tp": 1, "initializer_range": 0.02, "use_cache": True,
    "tie_word_embeddings": False,
}


def deepseek_v3_config_json() -> dict:
    """The official DeepSeek-V3 config.json as a dict (architecture from `config.DEEPSEEK_V3`)."""
    return copy.deepcopy({**_V3_JSON_EXTRAS, **DEEPSEEK_V3})   # a copy: HF edits rope dicts in place


def _transformers():
    try:
        import transformers
    except ImportError as e:                       # pragma: no cover - depends on the environment
        raise ImportError(_MISSING) from e
    if not hasattr(transformers, "DeepseekV3ForCausalLM"):
        raise ImportError(f"transformers {transformers.__version__} has no DeepseekV3ForCausalLM; "
                          + _MISSING)
    return transformers


# ===================================================================================== config
def config_to_hf(cfg: ModelConfig, rope_interleave: bool = True, **overrides):
    """A `DeepseekV3Config` for the same architecture. MLA only (HF's DeepseekV3 has no other
    attention); a dense minids model (n_routed_experts=0) becomes all-dense-layers
    (first_k_dense_replace = num_hidden_layers). YaRN keeps the V3 reference's convention:
    no extra scaling of cos/sin (attention_factor=1), the softmax scale times mscale^2."""
    tf = _transformers()
    if not cfg.is_mla:
        raise ValueError(f"kv_lora_rank={cfg.kv_lora_rank}: Hugging Face's DeepseekV3 is MLA only "
                         "(kv_lora_rank must be >= 1)")
    if cfg.is_moe and cfg.scoring_func != "sigmoid":
        raise ValueError(f"scoring_func={cfg.scoring_func!r}: Hugging Face's DeepseekV3 routes with "
                         "sigmoid scores only")
    rope = {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}
    rs = cfg.rope_scaling or {}
    if rs.get("type", rs.get("rope_type")) == "yarn":
        rope = {"rope_type": "yarn", "rope_theta": float(cfg.rope_theta), "factor": float(rs["factor"]),
                "original_max_position_embeddings": int(rs.get("original_max_position_embeddings", 4096)),
                "beta_fast": float(rs.get("beta_fast", 32)), "beta_slow": float(rs.get("beta_slow", 1)),
                "mscale": float(rs.get("mscale", 1.0)),
                "mscale_all_dim": float(rs.get("mscale_all_dim", 0.0)),
                "attention_factor": 1.0}
        if "truncate" in rs:                       # HF and minids default to True (V3's rounding)
            rope["truncate"] = bool(rs["truncate"])
    if cfg.is_moe:
        moe = dict(n_routed_experts=cfg.n_routed_experts, n_shared_experts=cfg.n_shared_experts,
                   num_experts_per_tok=cfg.num_experts_per_tok,
                   moe_intermediate_size=cfg.moe_intermediate_size,
                   n_group=cfg.n_group, topk_group=cfg.topk_group,
                   first_k_dense_replace=cfg.first_k_dense_replace,
                   routed_scaling_factor=float(cfg.routed_scaling_factor), norm_topk_prob=cfg.norm_topk_prob)
    else:   # every layer dense; the MoE fields only have to be valid
        moe = dict(n_routed_experts=2, n_shared_experts=0, num_experts_per_tok=1, moe_intermediate_size=1,
                   n_group=1, topk_group=1, first_k_dense_replace=cfg.num_hidden_layers)
    kw = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,     # HF's default is 128 (V3's head count)
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters=rope, rope_interleave=rope_interleave,
        q_lora_rank=cfg.q_lora_rank or None, kv_lora_rank=cfg.kv_lora_rank,
        qk_nope_head_dim=cfg.qk_nope_head_dim, qk_rope_head_dim=cfg.qk_rope_head_dim,
        v_head_dim=cfg.v_head_dim, tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.initializer_range, attention_dropout=cfg.dropout,
        num_nextn_predict_layers=cfg.num_nextn_predict_layers, hidden_act="silu", attention_bias=False,
        scoring_func=cfg.scoring_func, topk_method=cfg.topk_method,
        bos_token_id=cfg.extra.get("bos_token_id"), eos_token_id=cfg.extra.get("eos_token_id"),
        pad_token_id=cfg.extra.get("pad_token_id"), **moe)
    kw.update(overrides)
    return tf.DeepseekV3Config(**kw)


def config_from_hf(hf_config, **overrides) -> ModelConfig:
    """A `ModelConfig` from a `DeepseekV3Config` (or its dict, or a config.json dict). Raises a
    ValueError naming the field for what HF's DeepseekV3 computes and minids cannot (or what
    HF's model itself cannot run)."""
    d = copy.deepcopy(dict(hf_config) if isinstance(hf_config, Mapping) else hf_config.to_dict())
    if "num_mtp_layers" in d:
        d.setdefault("num_nextn_predict_layers", d.pop("num_mtp_layers"))
    if d.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act={d['hidden_act']!r}: minids' experts are SwiGLU (silu) only")
    if d.get("attention_bias"):
        raise ValueError("attention_bias=True: minids' projections have no biases")
    H, kv_heads = d.get("num_attention_heads"), d.get("num_key_value_heads")
    if kv_heads is not None and kv_heads != H:
        raise ValueError(f"num_key_value_heads={kv_heads} != num_attention_heads={H}: Hugging Face's DeepseekV3 "
                         "repeats MLA's per-head keys num_attention_heads / num_key_value_heads times, which only "
                         "runs when the two are equal (MLA gives every head its own key)")
    if d.get("q_lora_rank") == 0:
        raise ValueError("q_lora_rank=0: Hugging Face builds a zero-width query compression (NaN outputs); "
                         "use q_lora_rank=None for no query compression")
    d["rope_scaling"] = _rope_from_hf(d)
    if d.get("q_lora_rank") is None:
        d["q_lora_rank"] = 0
    d["num_key_value_heads"] = None                       # MLA: every head has its own key
    d.pop("head_dim", None)                               # HF sets it to qk_rope_head_dim; unused by MLA
    d.setdefault("dropout", d.get("attention_dropout", 0.0) or 0.0)
    if d.get("n_routed_experts") and d.get("first_k_dense_replace", 0) > d["num_hidden_layers"]:
        d["first_k_dense_replace"] = d["num_hidden_layers"]   # HF: every layer dense, as minids at L
    d.update(overrides)
    if d.get("n_routed_experts") and d.get("scoring_func", "sigmoid") != "sigmoid":
        raise ValueError(f"scoring_func={d['scoring_func']!r}: Hugging Face's DeepseekV3 routes with sigmoid "
                         "scores whatever this field says; pass scoring_func='sigmoid' to convert the model")
    return ModelConfig.from_dict(d)


def _rope_from_hf(d: dict) -> dict | None:
    """minids' rope_scaling (None or YaRN) from HF's rope_parameters; sets d["rope_theta"]."""
    rope = d.pop("rope_parameters", None) or d.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    d["rope_theta"] = rope.get("rope_theta", d.get("rope_theta", 10000.0))
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"rope partial_rotary_factor={rope['partial_rotary_factor']}: minids rotates all "
                         "qk_rope_head_dim dimensions")
    if kind in ("default", None):
        return None
    if kind != "yarn":
        raise ValueError(f"rope type {kind!r}: minids supports default RoPE and YaRN only")
    factor = rope.get("factor") or d["max_position_embeddings"] / rope["original_max_position_embeddings"]
    m, m_all = rope.get("mscale"), rope.get("mscale_all_dim")

    def mscale(x):                                   # YaRN's 0.1 x ln(factor) + 1 (minids.layers)
        return yarn_mscale({"type": "yarn", "factor": factor, "mscale_all_dim": x})

    # HF scales cos and sin by this factor (as HF computes it); the V3 reference (and minids) does not
    af = rope.get("attention_factor")
    if af is None:
        af = mscale(m) / mscale(m_all) if m and m_all else mscale(1.0)
    if abs(af - 1.0) > 1e-12:
        raise ValueError(f"rope_parameters gives YaRN attention_factor={af:.4f}: minids follows the V3 "
                         "reference (no scaling of cos/sin), so it needs attention_factor 1, e.g. "
                         "mscale == mscale_all_dim as in V3's config")
    out = {"type": "yarn", "factor": factor}
    for k, default in [("original_max_position_embeddings", None), ("beta_fast", 32), ("beta_slow", 1),
                       ("mscale", None), ("mscale_all_dim", None), ("truncate", None)]:
        if k in rope:                                # HF reads a missing or zero beta as its default
            out[k] = rope[k] or default if default is not None else rope[k]
    return out


# ===================================================================================== weights
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


# ===================================================================================== models
def _cast_parameters(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast parameters only. (`Module.to(dtype)` would also cast buffers: the router bias must
    stay fp32, and it would turn minids' complex RoPE table `freqs_cis` into real numbers.)"""
    for p in module.parameters():
        if p.dtype != dtype:
            p.data = p.data.to(dtype)


def _mismatch(missing: list, unexpected: list, allowed_missing: list, what: str) -> ValueError:
    """The error for weights that do not fit: the keys that matter first, the tolerated ones after."""
    parts = [f"{len(unexpected)} unexpected: {unexpected}" if unexpected else "",
             f"{len(missing)} missing: {missing}" if missing else ""]
    msg = f"{what}: " + "; ".join(p for p in parts if p)
    if allowed_missing:
        msg += f" (also {len(allowed_missing)} MTP weights missing, which is expected: {allowed_missing[:3]} ...)"
    return ValueError(msg)


def from_hf(hf_model, rope_interleave: bool | None = None, strict_mtp: bool = False, **config_overrides):
    """A `MiniDeepSeek` with the weights of a `DeepseekV3ForCausalLM` (same dtype and device).
    HF's model class holds no MTP weights: MTP modules keep their fresh initialisation unless
    the state dict has them (strict_mtp=True makes their absence an error)."""
    from .model import MiniDeepSeek
    hc = hf_model.config
    cfg = config_from_hf(hc, **config_overrides)
    interleave = getattr(hc, "rope_interleave", True) if rope_interleave is None else rope_interleave
    p = next(hf_model.parameters())
    with torch.device(p.device):
        model = MiniDeepSeek(cfg)
    _cast_parameters(model, p.dtype)
    sd = state_dict_from_hf(hf_model, cfg, interleave)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    allowed = [k for k in missing if k.startswith("mtp.") and not strict_mtp]
    missing = [k for k in missing if k not in allowed]
    if unexpected or missing:
        raise _mismatch(missing, unexpected, allowed, "the Hugging Face weights do not fit the minids model "
                        "built from its config")
    return model


def experts_implementation_for(cfg: ModelConfig, dtype: torch.dtype = torch.float32, device="cpu") -> str:
    """HF's experts kernel that runs this model: "grouped_mm" (HF's default) where it can, "eager"
    on a CPU when an expert's rows are not multiples of 16 bytes (hidden_size and
    moe_intermediate_size times the dtype's size): the CPU grouped_mm kernel refuses those
    ("strides should be multiple of 16 bytes", seen with torch 2.13)."""
    size = torch.empty((), dtype=dtype).element_size()
    aligned = all(n * size % 16 == 0 for n in (cfg.hidden_size, cfg.moe_intermediate_size or 0))
    return "grouped_mm" if aligned or torch.device(device).type != "cpu" else "eager"


def to_hf(model, rope_interleave: bool = True, attn_implementation: str = "eager",
          experts_implementation: str | None = None, **config_overrides):
    """A `DeepseekV3ForCausalLM` with the weights of a `MiniDeepSeek` (MTP modules are left out:
    HF's model class has none; `state_dict_to_hf(..., include_mtp=True)` exports them).
    experts_implementation: HF's kernel for the routed experts; None picks one that runs
    (`experts_implementation_for`); asking for "grouped_mm" where it cannot run is an error."""
    tf = _transformers()
    cfg = model.config
    p = next(model.parameters())
    works = experts_implementation_for(cfg, p.dtype, p.device)
    if experts_implementation is None:
        experts_implementation = works
    elif experts_implementation == "grouped_mm" and works != "grouped_mm":
        raise ValueError(f"experts_implementation='grouped_mm': on {p.device.type} its kernel needs expert rows "
                         f"of 16-byte multiples, and hidden_size={cfg.hidden_size}, moe_intermediate_size="
                         f"{cfg.moe_intermediate_size} in {p.dtype} are not; use 'eager' (or None to choose)")
    hc = config_to_hf(cfg, rope_interleave=rope_interleave, **config_overrides)
    hc._attn_implementation = attn_implementation
    hc._experts_implementation = experts_implementation
    with torch.device(p.device), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")   # n_shared_experts=0
        hf_model = tf.DeepseekV3ForCausalLM(hc)
    _cast_parameters(hf_model, p.dtype)
    missing, unexpected = hf_model.load_state_dict(state_dict_to_hf(model, cfg, rope_interleave), strict=False)
    if missing or unexpected:
        raise _mismatch(missing, unexpected, [], "the converted weights do not fit Hugging Face's model")
    return hf_model.eval()
