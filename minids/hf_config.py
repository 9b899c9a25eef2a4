"""Hugging Face configs: `ModelConfig` <-> `DeepseekV3Config` (and the official DeepSeek-V3
config.json). Every field minids cannot compute is refused here with a ValueError naming it, so
minids.hf_weights, which converts the weights, can assume the two models have the same shapes.
`transformers` is imported only inside the functions that need it (optional extra `minids[hf]`).

Differences bridged here: YaRN keeps the V3 reference's convention (no scaling of cos/sin,
attention_factor 1; the softmax scale carries mscale^2), and HF's `truncate` (default True) is
carried in rope_scaling; a dense minids model becomes all-dense layers (first_k_dense_replace =
num_hidden_layers). HF's default routed-experts kernel ("grouped_mm") refuses, on a CPU, expert
rows that are not multiples of 16 bytes: `experts_implementation_for` picks "eager" there.
"""

from __future__ import annotations

import copy
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


def import_transformers():
    """The `transformers` module, or an ImportError saying how to install one that has DeepseekV3."""
    try:
        import transformers
    except ImportError as e:                       # pragma: no cover - depends on the environment
        raise ImportError(_MISSING) from e
    if not hasattr(transformers, "DeepseekV3ForCausalLM"):
        raise ImportError(f"transformers {transformers.__version__} has no DeepseekV3ForCausalLM; "
                          + _MISSING)
    return transformers


def config_to_hf(cfg: ModelConfig, rope_interleave: bool = True, **overrides):
    """A `DeepseekV3Config` for the same architecture. MLA only (HF's DeepseekV3 has no other
    attention); a dense minids model (n_routed_experts=0) becomes all-dense-layers
    (first_k_dense_replace = num_hidden_layers). YaRN keeps the V3 reference's convention:
    no extra scaling of cos/sin (attention_factor=1), the softmax scale times mscale^2."""
    tf = import_transformers()
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


def experts_implementation_for(cfg: ModelConfig, dtype: torch.dtype = torch.float32, device="cpu") -> str:
    """HF's experts kernel that runs this model: "grouped_mm" (HF's default) where it can, "eager"
    on a CPU when an expert's rows are not multiples of 16 bytes (hidden_size and
    moe_intermediate_size times the dtype's size): the CPU grouped_mm kernel refuses those
    ("strides should be multiple of 16 bytes", seen with torch 2.13)."""
    size = torch.empty((), dtype=dtype).element_size()
    aligned = all(n * size % 16 == 0 for n in (cfg.hidden_size, cfg.moe_intermediate_size or 0))
    return "grouped_mm" if aligned or torch.device(device).type != "cpu" else "eager"
