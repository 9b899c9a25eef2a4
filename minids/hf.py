"""Hugging Face interop (optional extra `minids[hf]`): a `MiniDeepSeek` from a `DeepseekV3ForCausalLM`
(`from_hf`) and back (`to_hf`), same weights, dtype and device. The pieces live beside it, and are
importable from here too: minids.hf_config converts the configs (and refuses, naming the field,
what minids cannot compute); minids.hf_weights converts the state dicts (the names table and the
RoPE row layouts are in its docstring). `transformers` is imported only inside the functions that
need it.
"""

from __future__ import annotations

import warnings

import torch

from .hf_config import (
    config_from_hf,
    config_to_hf,
    deepseek_v3_config_json,
    experts_implementation_for,
    import_transformers,
)
from .hf_weights import rope_permutation, state_dict_from_hf, state_dict_to_hf

__all__ = ["from_hf", "to_hf",
           # re-exported: tests and notebooks use them as hf.*
           "config_from_hf", "config_to_hf", "deepseek_v3_config_json", "experts_implementation_for",
           "rope_permutation", "state_dict_from_hf", "state_dict_to_hf"]


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




def to_hf(model, rope_interleave: bool = True, attn_implementation: str = "eager",
          experts_implementation: str | None = None, **config_overrides):
    """A `DeepseekV3ForCausalLM` with the weights of a `MiniDeepSeek` (MTP modules are left out:
    HF's model class has none; `state_dict_to_hf(..., include_mtp=True)` exports them).
    experts_implementation: HF's kernel for the routed experts; None picks one that runs
    (`experts_implementation_for`); asking for "grouped_mm" where it cannot run is an error."""
    tf = import_transformers()
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
