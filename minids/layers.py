"""The small pieces every block uses: RMSNorm, rotary position embedding (with YaRN), SwiGLU."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight   (computed in float32, returned in x's dtype)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


# ----------------------------------------------------------------------------------- RoPE
def _yarn_correction_dim(num_rotations: float, dim: int, base: float, max_len: int) -> float:
    # the dimension whose wavelength makes `num_rotations` turns over `max_len` positions
    return dim * math.log(max_len / (num_rotations * 2 * math.pi)) / (2 * math.log(base))


def rope_frequencies(dim: int, base: float = 10000.0, rope_scaling: dict | None = None) -> torch.Tensor:
    """Angular frequency of each rotated pair, (dim/2,). With YaRN (used by V3 to reach 128K),
    low frequencies are interpolated by `factor`, high ones kept, with a linear ramp between."""
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    kind = (rope_scaling or {}).get("type", (rope_scaling or {}).get("rope_type"))
    if kind == "yarn":
        factor = rope_scaling["factor"]
        orig = rope_scaling.get("original_max_position_embeddings", 4096)
        beta_fast, beta_slow = rope_scaling.get("beta_fast", 32), rope_scaling.get("beta_slow", 1)
        low, high = _yarn_correction_dim(beta_fast, dim, base, orig), _yarn_correction_dim(beta_slow, dim, base, orig)
        if rope_scaling.get("truncate", True):       # V3 rounds the ramp's ends outward; HF may not
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        keep = 1 - ramp                              # 1: keep (extrapolate), 0: interpolate
        freqs = freqs / factor * (1 - keep) + freqs * keep
    return freqs.float()


def yarn_mscale(rope_scaling: dict | None) -> float:
    """YaRN's attention temperature: the softmax scale is multiplied by mscale^2 (V3 ref.)."""
    if not rope_scaling or rope_scaling.get("type", rope_scaling.get("rope_type")) != "yarn":
        return 1.0
    factor, m = rope_scaling["factor"], rope_scaling.get("mscale_all_dim", 0.0)
    return 0.1 * m * math.log(factor) + 1.0 if factor > 1 and m else 1.0


def precompute_freqs_cis(dim: int, end: int, base: float = 10000.0,
                         rope_scaling: dict | None = None) -> torch.Tensor:
    """e^{i m theta_j} for positions m < end: complex (end, dim/2)."""
    freqs = rope_frequencies(dim, base, rope_scaling)
    angles = torch.outer(torch.arange(end, dtype=torch.float32), freqs)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (x0,x1), (x2,x3), ... of the last dim as complex numbers.
    x: (B, T, H, D), freqs_cis: (T, D/2) -> (B, T, H, D)."""
    if torch.compiler.is_compiling():             # inductor has no complex kernels: the same product
        cos, sin = freqs_cis.view(1, x.size(1), 1, -1, 2).unbind(-1)     # in reals (model.freqs_cis)
        x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2).to(x.dtype)
    # contiguous(): a split view (MLA's q_pe / k_pe) has odd strides when the parts before it are odd
    xc = torch.view_as_complex(x.float().contiguous().reshape(*x.shape[:-1], -1, 2))   # (B, T, H, D/2)
    xc = xc * freqs_cis.view(1, xc.size(1), 1, xc.size(-1))
    return torch.view_as_real(xc).flatten(-2).to(x.dtype)


# ----------------------------------------------------------------------------------- FFN
def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's gating (Shazeer 2020, arXiv 2002.05202): silu(gate) * up, elementwise."""
    return F.silu(gate) * up


class MLP(nn.Module):
    """The dense SwiGLU feed-forward: down( silu(gate x) * up x ). The FFN of the dense layers,
    and the shared experts of an MoE layer (the routed experts are the stacked `moe.Experts`)."""

    def __init__(self, dim: int, inter_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, inter_dim, bias=False)
        self.up_proj = nn.Linear(dim, inter_dim, bias=False)
        self.down_proj = nn.Linear(inter_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))
