"""Every chapter-01 check passes on the solution and on valid alternatives, fails on the stub,
rejects plausible mistakes and names the ones it lists."""

import math

import numpy as np
import pytest
import torch
from nbutil import Wrong, check_contract, notebook_namespace

from minids.checks import (
    CheckFailed,
    check_causal_attention,
    check_rms_norm,
    check_rope,
    check_rope_is_relative,
    check_rope_wavelengths,
    check_shift_targets,
    check_temperature_experiment,
    check_temperature_limits,
    check_temperature_probs,
)
from minids.layers import apply_rotary_emb, precompute_freqs_cis

SOL = notebook_namespace("solutions/01_gpt_baseline.ipynb")
STUB = notebook_namespace("solutions/01_gpt_baseline.ipynb", stubbed=True)

# measured by the solution's experiment cell (120 steps; 2026-11-29, this machine)
MEASURED = {"steps": 120, "val_loss": {0.5: 2.793, 0.8: 2.411, 1.0: 2.396, 1.25: 2.468, 2.0: 2.82},
            "loss_by_position": {0: 3.16, 1: 2.62, 3: 2.19, 15: 2.33, 63: 2.30}}
SOL["results"] = MEASURED


# ------------------------------------------------------------------ rms_norm
def _rms_native(x, w, eps=1e-6):                 # the lesson's one-liner: computes in x's dtype
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rms_layernorm(x, w, eps=1e-6):
    xf = x.double()
    y = (xf - xf.mean(-1, keepdim=True)) / torch.sqrt(xf.var(-1, unbiased=False, keepdim=True) + eps) * w
    return y.to(x.dtype)


def _rms_fixed_eps(x, w, eps=1e-6):
    xf = x.double()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * w).to(x.dtype)


def _rms_eps_outside(x, w, eps=1e-6):
    xf = x.double()
    return (xf / (xf.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w).to(x.dtype)


def _rms_returns_float32(x, w, eps=1e-6):
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()


def _rms_float64(x, w, eps=1e-6):               # valid: float64 throughout, cast back at the end
    xd = x.double()
    return (xd / xd.pow(2).mean(-1, keepdim=True).add(eps).sqrt() * w.double()).to(x.dtype)


def _rms_numpy(x, w, eps=1e-6):                 # valid: NumPy in float64, returned as an array of x's dtype
    xn, wn = x.double().numpy(), w.double().numpy()
    y = xn / np.sqrt((xn ** 2).mean(-1, keepdims=True) + eps) * wn
    return torch.from_numpy(y).to(x.dtype)


# ------------------------------------------------------------------ causal attention
def _attn(q, k, v, diag=None, scale=None, fill=float("-inf"), no_mask=False):
    T, S, D = q.size(-2), k.size(-2), q.size(-1)
    s = q @ k.transpose(-2, -1) * (D ** -0.5 if scale is None else scale)
    if not no_mask:
        s = s.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(S - T if diag is None else diag), fill)
    return s.softmax(-1) @ v


def _attn_loops(q, k, v):                       # valid: loops over queries, einsum, float64
    T, S, D = q.size(-2), k.size(-2), q.size(-1)
    outs = []
    for t in range(T):
        kk, vv = k[..., : S - T + t + 1, :].double(), v[..., : S - T + t + 1, :].double()
        w = (torch.einsum("bhd,bhsd->bhs", q[..., t, :].double(), kk) / math.sqrt(D)).softmax(-1)
        outs.append(torch.einsum("bhs,bhsd->bhd", w, vv))
    return torch.stack(outs, -2).to(q.dtype)


# ------------------------------------------------------------------ rope
def _rope_complex(x, positions, base=10000.0):   # the lesson's way: forbidden here
    return apply_rotary_emb(x, precompute_freqs_cis(x.size(-1), int(max(positions)) + 1, base)[positions])


def _rope_pairs(x, positions, base=10000.0, halves=False, sign=1.0, step=2, pos=None, fixed_base=None):
    D = x.size(-1)
    base = fixed_base or base
    theta = base ** (-torch.arange(0, D, step, dtype=torch.float64)[: D // 2] / D)
    p = torch.arange(x.size(1)) if pos == "arange" else torch.as_tensor(positions)
    ang = p.double()[:, None] * theta * sign
    c, s = ang.cos()[None, :, None], ang.sin()[None, :, None]
    xd = x.double()
    a, b = (xd[..., : D // 2], xd[..., D // 2:]) if halves else (xd[..., 0::2], xd[..., 1::2])
    if halves:
        return torch.cat([a * c - b * s, a * s + b * c], -1).to(x.dtype)
    return torch.stack([a * c - b * s, a * s + b * c], -1).flatten(-2).to(x.dtype)


def _rope_matrix(x, positions, base=10000.0):    # valid: a 2x2 rotation matrix per pair, float32
    D = x.size(-1)
    theta = base ** (-torch.arange(0, D, 2).float() / D)
    ang = torch.as_tensor(positions).float()[:, None] * theta                  # (T, D/2)
    R = torch.stack([torch.stack([ang.cos(), -ang.sin()], -1), torch.stack([ang.sin(), ang.cos()], -1)], -2)
    pairs = x.float().reshape(*x.shape[:-1], D // 2, 2)                        # (B, T, H, D/2, 2)
    out = (R[None, :, None] @ pairs[..., None])[..., 0]                       # (B, T, H, D/2, 2)
    return out.reshape(x.shape).to(x.dtype)


# ------------------------------------------------------------------ rope_is_relative
def _relative_always(rope, dim):
    return True


def _relative_diagonal_only(rope, dim):          # compares only m = n: blind to absolute encodings
    q = torch.randn(1, 1, 1, dim, dtype=torch.float64)
    s = [(rope(q, torch.tensor([m])) * rope(q, torch.tensor([m]))).sum() for m in (0, 7, 30)]
    return bool(torch.allclose(s[0], s[1]) and torch.allclose(s[1], s[2]))


def _relative_loose(rope, dim):                  # a tolerance that forgives real violations
    q, k = torch.randn(1, 1, 1, dim, dtype=torch.float64), torch.randn(1, 1, 1, dim, dtype=torch.float64)
    a = (rope(q, torch.tensor([10])) * rope(k, torch.tensor([3]))).sum()
    b = (rope(q, torch.tensor([30])) * rope(k, torch.tensor([23]))).sum()
    return bool(torch.isclose(a, b, rtol=0.5))


def _relative_numpy_bool(rope, dim):             # valid: returns a NumPy bool
    return np.bool_(SOL["rope_is_relative"](rope, dim))


def _relative_float32(rope, dim):                # valid: float32 vectors, a float32-sized tolerance
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        q, k = torch.randn(1, 1, 1, dim, generator=g), torch.randn(1, 1, 1, dim, generator=g)
        m, n, s = torch.randint(0, 40, (3,), generator=g).tolist()
        a = (rope(q, torch.tensor([m])) * rope(k, torch.tensor([n]))).sum()
        b = (rope(q, torch.tensor([m + s])) * rope(k, torch.tensor([n + s]))).sum()
        if abs(a - b) > 1e-4 * (1 + abs(a)):
            return False
    return True


# ------------------------------------------------------------------ sampling
def _probs(logits, t, k=None, fill=float("-inf"), renorm=True, mult=False):
    z = logits * t if mult else logits / t
    if k is not None:
        kth = z.topk(k, -1).values[..., -1:]
        if renorm:
            z = z.masked_fill(z < kth, fill)
        else:
            return z.softmax(-1) * (z >= kth)
    return z.softmax(-1)


def _probs_sort(logits, t, k=None):              # valid: sort and scatter, float64 inside
    z = logits.double() / t
    if k is not None:
        idx = z.argsort(-1, descending=True)[..., k:]
        z = z.scatter(-1, idx, float("-inf"))
    return z.softmax(-1).to(logits.dtype)


RAW_WAVES = {"fastest": 2 * math.pi, "slowest": 2 * math.pi * 10000 ** (30 / 32), "full_turns_in_64": 5,
             "yarn_interpolates": "slow"}

CASES = {
    "rms_norm": (check_rms_norm, [
        Wrong(_rms_native, named="float16"),
        Wrong(_rms_layernorm, named="LayerNorm"),
        Wrong(_rms_fixed_eps, named="`eps` argument"),
        Wrong(_rms_eps_outside, named="INSIDE the square root"),
        _rms_returns_float32,
    ], [_rms_float64, _rms_numpy]),
    "causal_attention": (check_causal_attention, [
        Wrong(lambda q, k, v: _attn(q, k, v, diag=0), named="LAST T"),
        Wrong(lambda q, k, v: _attn(q, k, v, scale=1.0), named="scale the scores by 1/sqrt(D)"),
        Wrong(lambda q, k, v: _attn(q, k, v, fill=0.0), named="not 0"),
        Wrong(lambda q, k, v: _attn(q, k, v, scale=v.size(-1) ** -0.5), named="not the value dimension"),
        lambda q, k, v: _attn(q, k, v, no_mask=True),
        lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=q.size(-2) == k.size(-2)),
    ], [_attn_loops]),
    "rope": (check_rope, [
        Wrong(lambda x, p, base=1e4: _rope_pairs(x, p, base, halves=True), named="CONSECUTIVE pairs"),
        Wrong(lambda x, p, base=1e4: _rope_pairs(x, p, base, sign=-1.0), named="wrong signs"),
        Wrong(lambda x, p, base=1e4: _rope_pairs(x, p, base, step=1), named="-2j/D"),
        Wrong(lambda x, p, base=1e4: _rope_pairs(x, p, base, pos="arange"), named="given `positions`"),
        Wrong(lambda x, p, base=1e4: _rope_pairs(x, p, base, fixed_base=1e4), named="`base` argument"),
        _rope_complex,                                             # forbidden: complex numbers
    ], [_rope_matrix]),
    "rope_is_relative": (check_rope_is_relative, [_relative_always, _relative_diagonal_only, _relative_loose],
                         [_relative_numpy_bool, _relative_float32]),
    "make_example": (check_shift_targets, [
        Wrong(lambda ids, i, T: (ids[i:i + T], ids[i:i + T]), named="NEXT token"),
        Wrong(lambda ids, i, T: (ids[i + 1:i + T + 1], ids[i + 2:i + T + 2]), named="x starts at i"),
        lambda ids, i, T: (ids[i:T], ids[i + 1:T + 1]),
    ], [lambda ids, i, T: (list(ids[i:i + T]), tuple(ids[i + 1:i + T + 1])),
        lambda ids, i, T: [np.asarray(ids)[i:i + T], np.asarray(ids)[i + 1:i + T + 1]]]),
    "temperature_probs": (check_temperature_probs, [
        Wrong(lambda lg, t, k=None: _probs(lg, t, k, mult=True), named="don't multiply"),
        Wrong(lambda lg, t, k=None: _probs(lg, t, None), named="top_k is ignored"),
        Wrong(lambda lg, t, k=None: _probs(lg, 1.0, k), named="temperature is ignored"),
        Wrong(lambda lg, t, k=None: _probs(lg, t, k, fill=0.0), named="-inf before the softmax"),
        Wrong(lambda lg, t, k=None: _probs(lg, t, k, renorm=False), named="renormalise"),
        lambda lg, t, k=None: _probs(lg, t, k).double(),                       # dtype contract
    ], [_probs_sort]),
    "rope_answer": (check_rope_wavelengths, [
        Wrong({**RAW_WAVES, "slowest": 10000 ** (30 / 32)}, named="2*pi"),
        Wrong({**RAW_WAVES, "slowest": 2 * math.pi * 10000 ** (15 / 32)}, named="slowest pair has exponent"),
        Wrong({**RAW_WAVES, "yarn_interpolates": "fast"}, named="keeps them and stretches the slow ones"),
        {**RAW_WAVES, "full_turns_in_64": 16},
        {k: v for k, v in RAW_WAVES.items() if k != "slowest"},
    ], [{**RAW_WAVES, "slowest": 35333, "fastest": np.float32(6.28), "full_turns_in_64": np.int64(5),
         "yarn_interpolates": "Slow"}]),
    "temperature_answer": (check_temperature_limits, [
        Wrong({"loss_T_infinity": math.log2(82), "loss_T_zero": "infinite", "best_T_converged": 1.0}, named="nats"),
        Wrong({"loss_T_infinity": math.log(82), "loss_T_zero": "zero", "best_T_converged": 1.0},
              named="all the probability goes"),
        Wrong({"loss_T_infinity": math.log(82), "loss_T_zero": "infinite", "best_T_converged": 0.8},
              named="popular sampling temperature"),
    ], [{"loss_T_infinity": 4.407, "loss_T_zero": "Infinite", "best_T_converged": 1}]),
    "results": (check_temperature_experiment, [
        {**MEASURED, "val_loss": {0.5: 2.4, 0.8: 2.3, 1.0: 2.6, 1.25: 2.2, 2.0: 2.9}},      # not convex in 1/T
        {**MEASURED, "val_loss": {t: 4.41 for t in MEASURED["val_loss"]}},                 # untrained
        {**MEASURED, "loss_by_position": {0: 0.9, 1: 2.6, 3: 2.2, 15: 2.3, 63: 2.3}},     # position 0 impossible
        {k: v for k, v in MEASURED.items() if k != "loss_by_position"},
    ], [{**MEASURED, "val_loss": {str(t): v for t, v in MEASURED["val_loss"].items()}, "steps": np.int64(600)}]),
}


test_check_passes_on_solution, test_check_fails_on_stub, test_check_rejects_plausible_mistakes = \
    check_contract(CASES, SOL, STUB)


def test_forbidden_calls_are_named(capsys):
    with pytest.raises(CheckFailed, match="forbids"):
        check_rope(_rope_complex)
    with pytest.raises(CheckFailed, match="forbids"):
        check_causal_attention(lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_every_argument_varies_across_cases():
    """An answer that ignores an argument fails: eps, the mask offset, positions and base, ids, T."""
    for check, wrong in [
        (check_rms_norm, _rms_fixed_eps),
        (check_rope, lambda x, p, base=1e4: _rope_pairs(x, p, 10000.0)),
        (check_shift_targets, lambda ids, i, T: (ids[i:i + 8], ids[i + 1:i + 9])),
        (check_temperature_probs, lambda lg, t, k=None: _probs(lg, 1.0, k)),
    ]:
        with pytest.raises(CheckFailed):
            check(wrong)
