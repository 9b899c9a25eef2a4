"""FP8 training as DeepSeek-V3 does it (V3 report, arXiv 2412.19437, section 3.3), simulated on a CPU.

Everything here runs with torch's `float8_e4m3fn` dtype on the CPU: the numbers are rounded to the
real E4M3 grid, but the matrix products are then computed in float32 (a CPU has no FP8 tensor cores).
That is exactly "FP8 inputs, FP32 accumulation" -- what V3 gets by promoting partial sums to FP32
every N_C = 128 products (section 3.3.2) -- and `limited_precision_gemm` models what happens without
that promotion.

  E4M3 = 1 sign, 4 exponent, 3 mantissa bits; largest value 448, smallest normal 2^-6 (arXiv 2209.05433).
  scale = amax / 448, q = round_E4M3(x / scale), x ~ q * scale          ("online" amax: section 3.3.2)
  activations: one scale per 1 x 128 tile (a token's 128 channels)     (section 3.3.2, Figure 7a)
  weights:     one scale per 128 x 128 block                            (section 3.3.2, Figure 7a)

`fp8_linear` runs all three GEMMs of a linear layer (Fprop, Dgrad, Wgrad) on FP8-rounded inputs and
caches its input activation in FP8 for the backward pass (sections 3.3.1, 3.3.3); `to_fp8_training`
converts a MiniDeepSeek so that its linear layers and routed experts do that, keeping the embedding,
the output head, the router, the norms and attention itself in full precision, as V3 does (3.3.1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .moe import Experts, MoE

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0                   # torch.finfo(torch.float8_e4m3fn).max
TILE = 128                         # N_C: tile width, block side and promotion interval in V3


# ============================================================================ quantization
def _check_group(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest E4M3 value (saturating at +-448); returns float32 values on the grid."""
    return x.float().clamp(-E4M3_MAX, E4M3_MAX).to(E4M3).float()


def scale_from_amax(amax: torch.Tensor, pow2: bool = False) -> torch.Tensor:
    """The scale that maps a group's largest |value| onto 448 (an all-zero group gets scale 1).
    pow2=True rounds the scale up to a power of two, as V3 does for the activations it dispatches
    and those after attention ("round scaled", section 3.3.3): rescaling is then exact."""
    amax = amax.float()
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    return torch.exp2(torch.ceil(torch.log2(scale))) if pow2 else scale


def quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale rounded to E4M3 (scale broadcasts against x)."""
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)


def quantize_tensorwise(x: torch.Tensor, pow2: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale for the whole tensor (the usual recipe before V3). Returns (q, scale ())."""
    scale = scale_from_amax(x.detach().abs().amax(), pow2)
    return quantize(x, scale), scale


def _pad_last(x: torch.Tensor, group: int) -> torch.Tensor:
    pad = (-x.size(-1)) % group
    return F.pad(x, (0, pad)) if pad else x


def quantize_tilewise(x: torch.Tensor, tile: int = TILE, pow2: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale per 1 x `tile` group along the last dimension (V3: per token per 128 channels).
    x: (..., K) -> q: (..., K) in float8_e4m3fn, scales: (..., ceil(K / tile)) float32.
    A last group shorter than `tile` gets its own scale."""
    _check_group("tile", tile)
    K = x.size(-1)
    xp = _pad_last(x.float(), tile)
    groups = xp.reshape(*x.shape[:-1], -1, tile)                            # (..., K/tile, tile)
    scales = scale_from_amax(groups.detach().abs().amax(-1), pow2)          # (..., K/tile)
    q = quantize(groups, scales[..., None]).reshape(*x.shape[:-1], -1)[..., :K]
    return q, scales


def dequantize_tilewise(q: torch.Tensor, scales: torch.Tensor, tile: int = TILE) -> torch.Tensor:
    """Inverse of quantize_tilewise (up to the rounding): float32 of q's shape."""
    K = q.size(-1)
    groups = _pad_last(q.float(), tile).reshape(*q.shape[:-1], -1, tile)
    return (groups * scales[..., None]).reshape(*q.shape[:-1], -1)[..., :K]


def quantize_blockwise(w: torch.Tensor, block: int = TILE, pow2: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale per `block` x `block` square of a 2-D weight (V3: 128 x 128). w: (N, K) ->
    q: (N, K) float8_e4m3fn, scales: (ceil(N / block), ceil(K / block)) float32. A square block
    serves W in the forward pass and W^T in the backward pass with the same scales."""
    _check_group("block", block)
    if w.dim() != 2:
        raise ValueError(f"w must be 2-D (out_features, in_features); got shape {tuple(w.shape)}")
    N, K = w.shape
    wp = F.pad(w.float(), (0, (-K) % block, 0, (-N) % block))
    nb, kb = wp.size(0) // block, wp.size(1) // block
    blocks = wp.reshape(nb, block, kb, block)                               # (N/b, b, K/b, b)
    scales = scale_from_amax(blocks.detach().abs().amax(dim=(1, 3)), pow2)  # (N/b, K/b)
    q = quantize(blocks, scales[:, None, :, None]).reshape(nb * block, kb * block)[:N, :K]
    return q, scales


def dequantize_blockwise(q: torch.Tensor, scales: torch.Tensor, block: int = TILE) -> torch.Tensor:
    N, K = q.shape
    s = scales.repeat_interleave(block, 0).repeat_interleave(block, 1)[:N, :K]
    return q.float() * s


def fake_quant_tiles(x: torch.Tensor, tile: int = TILE) -> torch.Tensor:
    """x through 1 x tile FP8 quantization and back (float32)."""
    return dequantize_tilewise(*quantize_tilewise(x, tile), tile)


def fake_quant_blocks(w: torch.Tensor, block: int = TILE) -> torch.Tensor:
    return dequantize_blockwise(*quantize_blockwise(w, block), block)


def fake_quant_tensor(x: torch.Tensor) -> torch.Tensor:
    q, s = quantize_tensorwise(x)
    return q.float() * s


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """||approx - exact|| / ||exact|| (Frobenius), in float64."""
    exact = exact.double()
    return float((approx.double() - exact).norm() / exact.norm().clamp_min(1e-300))


def outlier_activations(tokens: int = 256, channels: int = 1024, n_outliers: int = 4, magnitude: float = 1e4,
                        seed: int = 0) -> torch.Tensor:
    """Activations with the outliers LLMs are known for: standard-normal values in most channels
    and a few "massive" entries (V3 cites Sun et al. 2024, arXiv 2402.17762, who report single
    activations up to ~100,000 times larger than the others): in `n_outliers` fixed channels, every
    8th token carries a value of about +-`magnitude`. (tokens, channels) float32, reproducible from `seed`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, channels, generator=g)
    cols = torch.randperm(channels, generator=g)[:n_outliers]
    rows = torch.arange(0, tokens, 8)
    signs = torch.randint(0, 2, (rows.numel(), n_outliers), generator=g).float() * 2 - 1
    x[rows[:, None], cols[None, :]] = magnitude * signs * (1 + 0.1 * torch.rand(rows.numel(), n_outliers, generator=g))
    return x


# ============================================================ accumulation inside an FP8 GEMM
def _lead_exp(x: torch.Tensor) -> torch.Tensor:
    """e with 2^e <= |x| < 2^(e+1) (float64; -1000 for 0, so that 2^(e - bits) stays a normal number)."""
    _, e = torch.frexp(x)
    return torch.where(x == 0, torch.full_like(x, -1000.0), (e - 1).to(torch.float64))


def _truncate(x: torch.Tensor, e: torch.Tensor, bits: int) -> torch.Tensor:
    """Keep the `bits` bits from position e downwards (2^e is the top bit), chop the rest."""
    ulp = torch.exp2(e - (bits - 1))
    return torch.trunc(x / ulp) * ulp


def limited_precision_gemm(a: torch.Tensor, b: torch.Tensor, bits: int = 14, group: int = 32,
                           promote_every: int | None = TILE) -> torch.Tensor:
    """C = a @ b.T as a model of Hopper's FP8 tensor cores (section 3.5.2 describes them): products
    are exact; each `group` of 32 products is aligned to the largest exponent (among them and the
    running sum), only the top `bits` = 14 bits of each are kept (the rest truncated), and the
    running sum is kept to 14 bits too. With `promote_every` = N_C, the partial sum is added into
    an FP32 register every N_C products and restarted (V3's fix, section 3.3.2); None = never.
    a: (M, K), b: (N, K), ideally already on the E4M3 grid -> (M, N) float64.
    This is a MODEL: NVIDIA does not document the accumulator, so only trends are meaningful."""
    _check_group("bits", bits)
    _check_group("group", group)
    if promote_every is not None and (not isinstance(promote_every, int) or promote_every % group):
        raise ValueError(f"promote_every={promote_every!r} must be None or a multiple of group={group}")
    if a.dim() != 2 or b.dim() != 2 or a.size(1) != b.size(1):
        raise ValueError(f"a (M, K) and b (N, K) must share K; got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.double(), b.double()
    M, K = a.shape
    acc = torch.zeros(M, b.size(0), dtype=torch.float64)        # the tensor core's limited register
    out = torch.zeros(M, b.size(0), dtype=torch.float32)        # FP32 registers on the CUDA cores
    for s in range(0, K, group):
        p = a[:, None, s:s + group] * b[None, :, s:s + group]   # (M, N, group) exact products
        e = torch.maximum(_lead_exp(p.abs().amax(-1)), _lead_exp(acc.abs()))
        acc = acc + _truncate(p, e[..., None], bits).sum(-1)
        acc = _truncate(acc, _lead_exp(acc.abs()), bits)
        if promote_every and (s + group) % promote_every == 0:
            out, acc = out + acc.float(), torch.zeros_like(acc)
    return out.double() + acc


# =================================================================== an FP8 linear layer
class _FP8Linear(torch.autograd.Function):
    """y = x W^T with FP8 inputs for Fprop, Dgrad and Wgrad (Figure 6) and x cached in FP8."""

    @staticmethod
    def forward(ctx, x, weight, tile):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])                                   # (T, K)
        xq, xs = quantize_tilewise(x2, tile)                            # 1 x 128 tiles per token
        wq, ws = quantize_blockwise(weight, tile)                       # 128 x 128 blocks
        w_deq = dequantize_blockwise(wq, ws, tile)
        y = dequantize_tilewise(xq, xs, tile) @ w_deq.t()               # Fprop, FP32 accumulation
        ctx.save_for_backward(xq, xs, w_deq)                            # activation cached in FP8
        ctx.tile, ctx.shape = tile, shape
        return y.reshape(*shape[:-1], weight.size(0)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        xq, xs, w_deq = ctx.saved_tensors
        tile = ctx.tile
        g = grad_y.reshape(-1, grad_y.size(-1)).float()                 # (T, N)
        grad_x = fake_quant_tiles(g, tile) @ w_deq                      # Dgrad: tiles along N
        x = dequantize_tilewise(xq, xs, tile)                           # (T, K) from the FP8 cache
        # Wgrad sums over tokens: both operands are re-tiled 128 x 1 (along the tokens), section 3.3.3
        grad_w = fake_quant_tiles(g.t(), tile) @ fake_quant_tiles(x.t(), tile).t()
        return grad_x.reshape(ctx.shape).to(grad_y.dtype), grad_w.to(w_deq.dtype), None


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, tile: int = TILE) -> torch.Tensor:
    """F.linear(x, weight) with FP8-rounded operands in all three GEMMs (no bias)."""
    _check_group("tile", tile)
    return _FP8Linear.apply(x, weight, tile)


class FP8Linear(nn.Linear):
    """An nn.Linear (bias-free) whose GEMMs see FP8 inputs; the weight itself stays FP32 (the
    master copy, section 3.3.1)."""

    tile: int = TILE

    def forward(self, x):
        y = fp8_linear(x, self.weight, self.tile)
        return y + self.bias if self.bias is not None else y


def to_fp8_training(model: nn.Module, tile: int = TILE) -> nn.Module:
    """Convert (in place) a MiniDeepSeek for FP8-simulated training: every nn.Linear except the
    output head becomes an FP8Linear, and every routed-expert bank runs its GEMMs in FP8 (the MoE
    switches to the readable loop dispatch, which calls one expert at a time). Left in full
    precision, as in V3 (section 3.3.1): embedding, output head, router, norms, attention's own
    softmax(q k^T) v. Returns the model."""
    _check_group("tile", tile)
    head = getattr(model, "lm_head", None)
    for module in list(model.modules()):
        if type(module) is nn.Linear and module is not head:
            module.__class__ = FP8Linear               # same parameters, FP8 forward/backward
            module.tile = tile
        elif type(module) is Experts:
            module.__class__ = FP8Experts
            module.tile = tile
        elif isinstance(module, MoE):
            module.dispatch = "loop"
    return model


class FP8Experts(Experts):
    """Routed experts whose three GEMMs (gate/up and down) take FP8 inputs."""

    tile: int = TILE

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        gate, up = fp8_linear(x, self.gate_up_proj[e], self.tile).chunk(2, dim=-1)
        return fp8_linear(F.silu(gate) * up, self.down_proj[e], self.tile)


def fp8_gemm_fraction(model: nn.Module) -> float:
    """Fraction of the model's matrix parameters (hence of its matmul FLOPs per token, up to the
    routed experts' K/E) that sit in FP8 GEMMs after `to_fp8_training`."""
    fp8 = total = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            n = m.weight.numel()
            total += n
            fp8 += n if isinstance(m, FP8Linear) else 0
        elif isinstance(m, Experts):
            n = m.gate_up_proj.numel() + m.down_proj.numel()
            total += n
            fp8 += n if isinstance(m, FP8Experts) else 0
    return fp8 / total if total else math.nan
