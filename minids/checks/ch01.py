"""Checks for chapter 01 (a GPT baseline): RMSNorm in low precision, causal attention over a
cache, RoPE in real arithmetic and a test of its relative-position property, shifted targets,
temperature and top-k; a think question on RoPE's wavelengths and on temperature; the
temperature experiment."""

from __future__ import annotations

import math

import torch
from torch import nn

from .checking import Checker, CheckFailed, as_bool

FORBIDDEN = {
    "causal_attention": ["torch.nn.functional.scaled_dot_product_attention", "minids.attention.causal_sdpa",
                         "minids.attention._one_query_attention", "minids.attention._grouped_sdpa",
                         "minids.attention._sdpa"],
    "rope": ["torch.view_as_complex", "torch.view_as_real", "torch.polar", "torch.complex",
             "minids.layers.apply_rotary_emb", "minids.layers.precompute_freqs_cis", "minids.layers.rope_frequencies"],
    "temperature_probs": ["minids.generate.filtered_probs"],
    "rms_norm": ["torch.nn.functional.rms_norm"],
}
POINTS = {"rms_norm": 1, "causal_attention": 2, "rope": 2, "rope_is_relative": 2, "shift_targets": 1,
          "temperature_probs": 1, "rope_wavelengths": 2, "temperature_limits": 2, "temperature_experiment": 2}
NOT_MUTATED = {"temperature_experiment": "an experiment: each mutant would re-train the model; its check "
                                         "is tested on made-up and real measurements instead"}
# Reviewed equivalent mutants of the solutions (python -m minids mutation 01 -v lists the survivors).
_TEST_KNOB = ("another seed, number of trials, batch size, position range, reduction or tolerance that "
              "makes an equally valid test (every encoding is still classified right)")
EQUIVALENT_MUTANTS = {
    "rms_norm": {"`(torch.float16, torch.bfloat16)` -> `(torch.bfloat16, torch.float16)`": "membership test: "
                 "the order of the tuple does not matter"},
    "causal_attention": {
        **{d: "q, k, v are 4-D by the task's contract, so dimension -2 is dimension 2"
           for d in ("`-2` -> `2`", "`-2` -> `2` #2", "`-2` -> `2` #3")},
        "`torch.ones(T, S, dtype=torch.bool, device=q.device)` -> `torch.ones(T, S, dtype=torch.bool)`":
            "the checks run on the CPU, the default device"},
    "rope": {
        "`torch.arange(0, D, 2, dtype=torch.float64)` -> `torch.arange(0, D, 2)`": "theta in float32: the package's "
        "own precision, within the check's tolerance for positions up to a few hundred",
        "`torch.as_tensor(positions).double()` -> `torch.as_tensor(positions)`": "integer positions times a float64 "
        "theta are promoted to float64 anyway",
        "`x.double()` -> `x`": "one half of each pair in float32, promoted to float64 by the other half: within "
        "the tolerance",
        "`x.double()` -> `x` #2": "the rotation in float32 for float32 inputs: within the tolerance, and float64 "
        "inputs stay float64",
    },
    "rope_is_relative": {d: _TEST_KNOB for d in [
        "`0` -> `1`", "`0` -> `-1`", "`0` -> `1` #2", "`0` -> `-1` #2", "`20` -> `19`", "`20` -> `21`",
        "`50` -> `49`", "`50` -> `51`", "`1e-06` -> `2e-06`", "`1e-09` -> `2e-09`",
        "`(rope(q, torch.tensor([m])) * rope(k, torch.tensor([n]))).sum()` -> "
        "`(rope(q, torch.tensor([m])) * rope(k, torch.tensor([n]))).mean()`",
        "`torch.randn(1, 1, 1, dim, generator=g, dtype=torch.float64)` -> "
        "`torch.randn(1, 1, 1, dim, dtype=torch.float64)`",
        "`torch.randn(1, 1, 1, dim, generator=g, dtype=torch.float64)` -> `torch.randn(1, 1, 1, dim, generator=g)`",
        "`torch.randn(1, 1, 1, dim, generator=g, dtype=torch.float64)` -> "
        "`torch.randn(1, 1, 1, dim, dtype=torch.float64)` #2",
        "`torch.randn(1, 1, 1, dim, generator=g, dtype=torch.float64)` -> `torch.randn(1, 1, 1, dim, generator=g)` #2",
        "`1` -> `2`", "`1` -> `2` #2", "`1` -> `2` #3", "`1` -> `2` #4", "`1` -> `2` #5", "`1` -> `2` #6",
        "`torch.randint(0, 50, (3,), generator=g)` -> `torch.randint(0, 50, (3,))`",
        "`torch.isclose(score(q, k, m, n), score(q, k, m + s, n + s), rtol=1e...` -> "
        "`torch.isclose(score(q, k, m, n), score(q, k, m + s, n + s), atol=1e...`",
        "`torch.isclose(score(q, k, m, n), score(q, k, m + s, n + s), rtol=1e...` -> "
        "`torch.isclose(score(q, k, m, n), score(q, k, m + s, n + s), rtol=1e...`",
    ]},
    "temperature_probs": {
        **{d: "logits are 2-D by the task's contract, so dimension 1 is dimension -1"
           for d in ("`-1` -> `1`", "`-1` -> `1` #3")},
        "`logits.topk(top_k, dim=-1)` -> `logits.topk(top_k)`": "topk's default dimension is -1"},
    "rope_wavelengths": {d: "base 10,000 +- 1 moves the answer by far less than the 1% tolerance"
                         for d in ("`10000` -> `10001`", "`10000` -> `9999`")},
}

_ATTN_HINT = ("scores are q @ k.transpose(-2, -1): (B, H, T, D) @ (B, H, D, S) -> (B, H, T, S); the mask "
              "is (T, S), then weights @ v")


# ----------------------------------------------------------------------------------- RMSNorm
def _rms_ref(x, w, eps):
    xd = x.double()
    return (xd / torch.sqrt(xd.pow(2).mean(-1, keepdim=True) + eps) * w.double()).to(x.dtype)


def check_rms_norm(rms_norm) -> None:
    """rms_norm(x, weight, eps) -> x / sqrt(mean(x^2 over the last dim) + eps) * weight, computed
    in float32 (or better) and returned in x's dtype (bfloat16 in, bfloat16 out)."""
    with Checker("rms_norm") as c:
        g = torch.Generator().manual_seed(0)
        cases = [((3, 8), torch.float32, 1e-6, 3.0), ((2, 5, 16), torch.float32, 1e-5, 1.0),
                 ((1, 1, 4), torch.float32, 0.1, 0.2), ((4, 6), torch.float64, 1e-6, 2.0),
                 ((2, 3, 32), torch.bfloat16, 1e-6, 1.0), ((2, 64), torch.float16, 1e-6, 600.0)]
        for n, (shape, dtype, eps, scale) in enumerate(cases):
            x = (torch.randn(*shape, generator=g) * scale + 0.5 * scale).to(dtype)
            w = (torch.rand(shape[-1], generator=g) + 0.5).to(dtype)
            if n == 1:                                               # a non-contiguous view
                x = torch.randn(shape[0], shape[2], shape[1], generator=g).transpose(1, 2) * scale
            exp = _rms_ref(x, w, eps)
            got = c.call(rms_norm, x, w, eps, hint="keep the reduced dimension, `mean(-1, keepdim=True)`, "
                         "so that it broadcasts against x", forbidden=FORBIDDEN["rms_norm"])
            xd, wd = x.double(), w.double()
            ms = xd.pow(2).mean(-1, keepdim=True)
            native = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
            tol = dict(atol=1e-5, rtol=1e-4) if dtype in (torch.float32, torch.float64) else dict(atol=1e-2, rtol=1e-2)
            what = f"x of shape {shape}, {str(dtype)[6:]}, eps={eps}" + (" (a non-contiguous view)" if n == 1 else "")
            mistakes = [
                ((xd - xd.mean(-1, keepdim=True)) / torch.sqrt((xd - xd.mean(-1, keepdim=True)).pow(2).mean(
                    -1, keepdim=True) + eps) * wd, "you subtracted the mean (that is LayerNorm); RMSNorm does not "
                 "centre x"),
                (xd / torch.sqrt(xd.pow(2).sum(-1, keepdim=True) + eps) * wd,
                 "use the MEAN of x^2 over the last dimension, not the sum"),
                (xd / torch.sqrt(ms + eps), "multiply by `weight` at the end"),
                (xd / torch.sqrt(xd.pow(2).mean() + eps) * wd,
                 "normalise each token on its own: the mean over the last dimension only, not the whole tensor"),
                (xd / (ms + eps) * wd, "take the square ROOT of the mean of x^2 (the RMS), then divide by it"),
                (xd / torch.rsqrt(ms + eps) * wd, "rsqrt is 1/sqrt: MULTIPLY x by it (or divide by sqrt)"),
                (xd / torch.sqrt(ms) * wd, "add eps inside the square root: sqrt(mean(x^2) + eps)"),
                (xd / (torch.sqrt(ms) + eps) * wd, "eps goes INSIDE the square root: sqrt(mean(x^2) + eps)"),
                (xd / torch.sqrt(ms + 1e-6) * wd, "use the `eps` argument, not a fixed 1e-6"),
            ]
            if dtype == torch.float16:
                mistakes.insert(0, (native, "in float16, x^2 overflows (65,504 is the largest float16; 600^2 = "
                                            "360,000): compute in float32 (x.float()) and cast the result back to "
                                            "x's dtype"))
            c.close(got, exp, what, dtype=x.dtype, **tol, mistakes=mistakes)


# ----------------------------------------------------------------------------------- attention
def _attn_ref(q, k, v, offset_mask=True, scale=None, fill=float("-inf"), dim=-1):
    qd, kd, vd = q.double(), k.double(), v.double()
    T, S, D = q.size(-2), k.size(-2), q.size(-1)
    s = qd @ kd.transpose(-2, -1) * (D ** -0.5 if scale is None else scale)
    mask = torch.ones(T, S, dtype=torch.bool).tril(S - T if offset_mask else 0)
    return s.masked_fill(~mask, fill).softmax(dim) @ vd


def check_causal_attention(causal_attention) -> None:
    """causal_attention(q, k, v): q (B, H, T, D) holds the LAST T positions of the S >= T positions
    of k (B, H, S, D) and v (B, H, S, Dv); returns (B, H, T, Dv): query t (at position S - T + t)
    attends to keys 0 .. S - T + t, scores scaled by 1/sqrt(D). No scaled_dot_product_attention."""
    with Checker("causal_attention") as c:
        g = torch.Generator().manual_seed(1)
        for n, (B, H, T, S, D, Dv, dtype) in enumerate([
                (1, 1, 1, 1, 8, 8, torch.float32), (2, 3, 7, 7, 16, 16, torch.float32),
                (1, 2, 1, 6, 8, 4, torch.float32), (2, 2, 3, 7, 4, 6, torch.float64),
                (1, 4, 5, 9, 32, 8, torch.float32)]):
            if n == 1:                                # a non-contiguous q, k, v: heads moved out of (B, T, H, D)
                q, k, v = (torch.randn(B, T, H, D, generator=g).transpose(1, 2) for _ in range(3))
            else:
                q = torch.randn(B, H, T, D, generator=g, dtype=dtype)
                k = torch.randn(B, H, S, D, generator=g, dtype=dtype)
                v = torch.randn(B, H, S, Dv, generator=g, dtype=dtype)
            exp = _attn_ref(q, k, v).to(q.dtype)
            got = c.call(causal_attention, q, k, v, hint=_ATTN_HINT, forbidden=FORBIDDEN["causal_attention"])
            if torch.is_tensor(got) and got.is_floating_point() and got.isnan().any():
                raise CheckFailed(f"(B, H, T, S, D) = {(B, H, T, S, D)}: the output has NaN: a row of scores is all "
                                  "-inf. `masked_fill(mask, -inf)` fills where mask is True: fill the FUTURE "
                                  "positions, keep the past")
            mistakes = [
                (_attn_ref(q, k, v, offset_mask=False), "the queries are the LAST T of the S positions: query t "
                 "sits at position S - T + t, so keep keys <= S - T + t (torch.ones(T, S).tril(S - T))"),
                (_attn_ref(q, k, v, scale=1.0), "scale the scores by 1/sqrt(D)"),
                (_attn_ref(q, k, v, scale=1 / D), "scale by 1/sqrt(D), not 1/D"),
                (_attn_ref(q, k, v, scale=T ** -0.5), "scale by 1/sqrt(D), the head dimension q.size(-1), "
                 "not the number of queries"),
                (_attn_ref(q, k, v, scale=Dv ** -0.5), "scale by the query/key dimension D = q.size(-1), not "
                 "the value dimension"),
                (_attn_ref(q, k, v, fill=0.0), "fill the masked scores with -inf, not 0: exp(0) = 1 still gives "
                 "the future a weight"),
                (_attn_ref(q, k, v, dim=-2), "softmax over the keys (last dim), not the queries"),
            ]
            if T > 1:
                qd, kd = q.double(), k.double()
                s = qd @ kd.transpose(-2, -1) * D ** -0.5
                mistakes += [
                    (s.softmax(-1) @ v.double(), "the causal mask is missing: position t sees the future"),
                    (s.masked_fill(~torch.ones(T, S, dtype=torch.bool).triu(S - T), float("-inf")).softmax(-1)
                     @ v.double(), "the mask is upside down (triu instead of tril): keep the past, the lower "
                     "triangle"),
                ]
            c.close(got, exp, f"(B, H, T, S, D, Dv) = {(B, H, T, S, D, Dv)}, {str(q.dtype)[6:]}"
                    + (" (non-contiguous q, k, v)" if n == 1 else ""), dtype=q.dtype, mistakes=mistakes)
        x = torch.randn(1, 1, 5, 4, generator=g)
        out = c.call(causal_attention, x, x, x)
        c.close(torch.as_tensor(out)[..., 0, :], x[..., 0, :], "the first position can only attend to itself")


# ----------------------------------------------------------------------------------- RoPE
def _rope_ref(x, positions, base, pairs="consecutive", sign=1.0, exponent_step=2):
    D = x.size(-1)
    theta = float(base) ** (-torch.arange(0, D, exponent_step, dtype=torch.float64)[: D // 2] / D)   # (D/2,)
    ang = torch.as_tensor(positions, dtype=torch.float64)[:, None] * theta * sign                   # (T, D/2)
    cos, sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
    xd = x.double()
    if pairs == "consecutive":
        a, b = xd[..., 0::2], xd[..., 1::2]
        out = torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)
    else:                                                  # GPT-NeoX: pairs (j, j + D/2)
        a, b = xd[..., : D // 2], xd[..., D // 2:]
        out = torch.cat([a * cos - b * sin, a * sin + b * cos], -1)
    return out


def check_rope(rope) -> None:
    """rope(x, positions, base) -> x rotated, same shape and dtype: x (B, T, H, D) real, positions
    (T,) integers, base a float. Pair j = (x[2j], x[2j+1]) turns by the angle positions[t] *
    base^(-2j/D): x'[2j] = x[2j] cos - x[2j+1] sin, x'[2j+1] = x[2j] sin + x[2j+1] cos. Real
    arithmetic only (no complex numbers, no minids.layers)."""
    with Checker("rope") as c:
        g = torch.Generator().manual_seed(11)
        for n, (B, T, H, D, pos, base, dtype) in enumerate([
                (1, 4, 1, 8, torch.arange(4), 10000.0, torch.float32),
                (2, 5, 3, 16, torch.arange(100, 105), 10000.0, torch.float32),
                (1, 1, 2, 4, torch.tensor([37]), 500.0, torch.float32),
                (2, 3, 2, 32, torch.tensor([5, 0, 300]), 50.0, torch.float64),
                (1, 6, 4, 12, torch.arange(6) * 3 + 1, 1e6, torch.float32)]):
            if n == 1:                               # a non-contiguous x (a slice of the head dimension)
                x = torch.randn(B, T, H, 2 * D, generator=g)[..., ::2]
            else:
                x = torch.randn(B, T, H, D, generator=g, dtype=dtype)
            exp = _rope_ref(x, pos, base).to(x.dtype)
            got = c.call(rope, x, pos, base, forbidden=FORBIDDEN["rope"],
                         hint="angles have shape (T, D/2): broadcast them as (1, T, 1, D/2) against x's pairs")
            c.close(got, exp, f"(B, T, H, D) = {(B, T, H, D)}, positions {pos.tolist()}, base {base:g}, "
                    f"{str(x.dtype)[6:]}" + (" (a non-contiguous x)" if n == 1 else ""), atol=1e-4, rtol=1e-4,
                    dtype=x.dtype, mistakes=[
                        (_rope_ref(x, pos, base, pairs="halves"), "rotate CONSECUTIVE pairs (x0, x1), (x2, x3), ... "
                         "(the layout of V3's reference code and of this course), not (x_j, x_{j + D/2})"),
                        (_rope_ref(x, pos, base, sign=-1.0), "the sine terms have the wrong signs: x'[2j] = "
                         "x[2j] cos - x[2j+1] sin (you rotate backwards)"),
                        (_rope_ref(x, pos, base, exponent_step=1), "the exponent is -2j/D for pair j: "
                         "theta = base ** (-torch.arange(0, D, 2) / D)"),
                        (_rope_ref(x, torch.arange(T), base), "rotate by the given `positions`, not by 0 .. T-1"),
                        (_rope_ref(x, pos, 10000.0), "use the `base` argument, not a fixed 10,000"),
                    ])


# RoPE variants for the property test: nn.Modules (picklable, so the grader can pass them on)
class RopeVariant(nn.Module):
    """A candidate position encoding: forward(x (B, T, H, D), positions (T,)) -> same shape."""

    RELATIVE = {"consecutive": True, "halves": True, "backwards": True, "base 100": True, "no position": True,
                "absolute added": False, "quadratic angle": False, "scaled by position": False,
                "rotation plus a drift": False}

    def __init__(self, kind: str):
        super().__init__()
        if kind not in self.RELATIVE:
            raise ValueError(f"kind={kind!r} must be one of {sorted(self.RELATIVE)}")
        self.kind = kind

    def extra_repr(self) -> str:
        return repr(self.kind)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        pos = torch.as_tensor(positions).double()
        k = self.kind
        if k == "halves":
            out = _rope_ref(x, pos, 10000.0, pairs="halves")
        elif k == "backwards":
            out = _rope_ref(x, pos, 10000.0, sign=-1.0)
        elif k == "base 100":
            out = _rope_ref(x, pos, 100.0)
        elif k == "no position":
            out = x.double()
        elif k == "absolute added":
            D = x.size(-1)
            freq = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
            pe = torch.stack([(pos[:, None] * freq).sin(), (pos[:, None] * freq).cos()], -1).flatten(-2)
            out = x.double() + pe[None, :, None, :]
        elif k == "quadratic angle":
            out = _rope_ref(x, pos * pos, 10000.0)
        elif k == "scaled by position":
            out = _rope_ref(x, pos, 10000.0) * (1 + 0.05 * pos)[None, :, None, None]
        elif k == "rotation plus a drift":
            out = _rope_ref(x, pos, 10000.0) + 1e-3 * pos[None, :, None, None]
        else:
            out = _rope_ref(x, pos, 10000.0)
        return out.to(x.dtype)


def check_rope_is_relative(rope_is_relative) -> None:
    """rope_is_relative(rope, dim) -> True if the attention score <rope(q, m), rope(k, n)> depends on
    m - n only (for all q, k of size dim and positions m, n), else False. `rope(x, positions)` takes
    x (B, T, H, dim) and positions (T,)."""
    with Checker("rope_is_relative") as c:
        for kind, dim in [("consecutive", 8), ("absolute added", 8), ("halves", 16), ("quadratic angle", 4),
                          ("backwards", 8), ("scaled by position", 16), ("base 100", 4), ("rotation plus a drift", 8),
                          ("no position", 6)]:
            want = RopeVariant.RELATIVE[kind]
            got = as_bool(c.call(rope_is_relative, RopeVariant(kind), dim), f"the encoding {kind!r}")
            if got != want:
                why = {True: "it is relative: a rotation by an angle proportional to the position, whatever the "
                             "pairing of dimensions, base or direction, gives scores that depend on m - n only",
                       False: "compare the score of (m, n) with that of (m + s, n + s) for several m, n, shifts s "
                              "and random q, k; here they differ"}[want]
                if kind == "no position":
                    why = "no encoding at all: the score does not depend on the positions, so in particular only " \
                          "on m - n (the property holds trivially)"
                raise CheckFailed(f"the encoding {kind!r} (dim {dim}): expected {want}, got {got}: {why}")
            c.passed += 1


# ----------------------------------------------------------------------------------- data, sampling
def check_shift_targets(make_example) -> None:
    """make_example(ids, i, T) -> (x, y): x = ids[i : i+T], y = ids[i+1 : i+T+1]."""
    import numpy as np

    with Checker("shift_targets") as c:
        for n, (N, mult, i, T) in enumerate([(100, 7, 0, 8), (60, 5, 5, 16), (100, 11, 83, 16), (40, 3, 12, 1),
                                             (30, 13, 0, 29)]):
            ids = torch.arange(N) * mult % 13 + 100 * n
            if n == 4:
                ids, i = ids.numpy(), np.int64(i)          # NumPy ids and a NumPy index work as well
            got = c.call(make_example, ids, i, T)
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                raise CheckFailed(f"return a pair (x, y), got {type(got).__name__}")
            x, y = got
            ids_t = torch.as_tensor(ids)
            for name, val in (("x", x), ("y", y)):
                m = torch.as_tensor(val).numel()
                if m != T:
                    raise CheckFailed(f"{name} for i={i}, T={T} has {m} tokens, expected T = {T}: slice "
                                      "ids[i : i+T] for x and ids[i+1 : i+T+1] for y (the end is i+T, not T)")
            c.equal(x, ids_t[i:i + T], f"x for i={i}, T={T}",
                    mistakes=[(ids_t[i + 1:i + T + 1], "x starts at i, not i+1")])
            c.equal(y, ids_t[i + 1:i + T + 1], f"y for i={i}, T={T}", mistakes=[
                (ids_t[i:i + T], "y must be x shifted one step to the left: the NEXT token at each position"),
                (ids_t[i + 2:i + T + 2], "y is shifted by ONE token: ids[i+1 : i+T+1]"),
            ])


def _filtered(logits, t, k, drop_fill=float("-inf"), renorm=True):
    z = logits.double() / t
    if k is not None:
        kth = z.topk(k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, drop_fill)
    p = z.softmax(-1)
    if not renorm and k is not None:
        p = (logits.double() / t).softmax(-1) * (z > float("-inf"))
    return p


def check_temperature_probs(temperature_probs) -> None:
    """temperature_probs(logits, temperature, top_k) -> probabilities over the vocabulary, same shape
    and dtype as logits: softmax(logits / temperature) restricted to the top_k largest logits
    (renormalised); top_k None keeps all."""
    with Checker("temperature_probs") as c:
        g = torch.Generator().manual_seed(2)
        for n, (B, V, t, k, dtype) in enumerate([(3, 10, 1.0, None, torch.float32), (1, 5, 0.5, 2, torch.float32),
                                                 (2, 50, 2.0, 3, torch.float64), (4, 12, 0.7, 1, torch.float32),
                                                 (2, 8, 1.3, 8, torch.float32)]):
            logits = torch.randn(B, V, generator=g, dtype=dtype) * 2
            if n == 3:                                   # a non-contiguous view
                logits = torch.randn(V, B, generator=g).T * 2
            exp = _filtered(logits, t, k).to(logits.dtype)
            got = c.call(temperature_probs, logits, t, k, forbidden=FORBIDDEN["temperature_probs"])
            c.close(got, exp, f"logits {(B, V)} {str(logits.dtype)[6:]}, temperature={t}, top_k={k}"
                    + (" (non-contiguous)" if n == 3 else ""), dtype=logits.dtype, mistakes=[
                        ((logits.double() * t).softmax(-1) if k is None else _filtered(logits * t * t, t, k),
                         "divide the logits by the temperature, don't multiply"),
                        (logits.double().softmax(-1) / t, "apply the temperature to the logits, before the softmax"),
                        (_filtered(logits, 1.0, k), "the temperature is ignored"),
                        (_filtered(logits, t, None), "top_k is ignored: keep only the k largest logits"),
                        (_filtered(logits, t, k, renorm=False),
                         "after dropping tokens, renormalise so the probabilities sum to 1"),
                        (_filtered(logits, t, k, drop_fill=0.0),
                         "set the dropped logits to -inf before the softmax (a logit of 0 still gets probability)"),
                    ])


# ----------------------------------------------------------------------------------- think questions
def _wavelengths(D=32, base=10000.0, step=2, two_pi=True):
    theta = base ** (-torch.arange(0, D, step, dtype=torch.float64)[: D // 2] / D)
    lam = (2 * math.pi if two_pi else 1.0) / theta
    return lam[0].item(), lam[-1].item(), int((lam <= 64).sum())


def check_rope_wavelengths(answer) -> None:
    """answer = {"fastest": wavelength of pair 0 in tokens, "slowest": of pair D/2 - 1,
    "full_turns_in_64": how many of the 16 pairs turn at least once within 64 positions,
    "yarn_interpolates": "fast" | "slow" | "all"} for the baseline's head dim D = 32, base 10,000."""
    with Checker("rope_wavelengths") as c:
        c.answer(answer)
        c.keys(answer, ["fastest", "slowest", "full_turns_in_64", "yarn_interpolates"], "the answer")
        fast, slow, turns = _wavelengths()
        f1, s1, t1 = _wavelengths(step=1)
        f2, s2, t2 = _wavelengths(two_pi=False)
        c.number(answer["fastest"], fast, "the fastest pair's wavelength (tokens)", rtol=0.01, mistakes=[
            (f2, "a full turn is 2*pi radians: the wavelength is 2*pi / theta_j")])
        c.number(answer["slowest"], slow, "the slowest pair's wavelength (tokens)", rtol=0.01, mistakes=[
            (s1, "theta_j = base^(-2j/D) for j = 0 .. D/2 - 1: the slowest pair has exponent -(D-2)/D = -30/32"),
            (s2, "a full turn is 2*pi radians: the wavelength is 2*pi / theta_j"),
            (2 * math.pi * 10000.0, "the last pair is j = D/2 - 1 = 15, exponent -30/32, not -1"),
        ])
        c.number(answer["full_turns_in_64"], turns, "pairs that turn at least once in 64 positions", integer=True,
                 mistakes=[(t1, "theta_j = base^(-2j/D): count the j with 2*pi*base^(2j/D) <= 64"),
                           (t2, "a full turn is 2*pi radians: the wavelength is 2*pi / theta_j")])
        c.choice(answer["yarn_interpolates"], "slow", ["fast", "slow", "all"], "which pairs YaRN interpolates",
                 mistakes={"fast": "the fast pairs already turn many times within the original context; YaRN "
                                   "keeps them and stretches the slow ones (long wavelengths)",
                           "all": "that is plain position interpolation; YaRN keeps the fast pairs as they are"})


def check_temperature_limits(answer) -> None:
    """answer = {"loss_T_infinity": the cross-entropy (nats) of any model as T -> infinity with a
    vocabulary of 82 characters, "loss_T_zero": "zero" | "finite" | "infinite" (for a model whose
    most likely character is sometimes wrong), "best_T_converged": the T that minimises the
    training loss of a model trained to convergence (its last layer can scale its logits)}."""
    with Checker("temperature_limits") as c:
        c.answer(answer)
        c.keys(answer, ["loss_T_infinity", "loss_T_zero", "best_T_converged"], "the answer")
        c.number(answer["loss_T_infinity"], math.log(82), "the loss as T -> infinity", rtol=2e-3, mistakes=[
            (math.log2(82), "the loss is in nats: ln(82), not log2"), (1 / 82, "that is each probability; the "
                                                                      "loss is -ln(1/82)"),
            (math.log10(82), "the loss is in nats: ln(82), not log10")])
        c.choice(answer["loss_T_zero"], "infinite", ["zero", "finite", "infinite"], "the loss as T -> 0",
                 mistakes={"zero": "at T -> 0 all the probability goes to the most likely character: where it is "
                                   "wrong, the true character gets probability -> 0 and -ln(p) -> infinity",
                           "finite": "where the most likely character is wrong, the true one gets probability "
                                     "-> 0, and -ln(p) grows without bound"})
        c.number(answer["best_T_converged"], 1.0, "the best temperature of a converged model", rtol=1e-6, mistakes=[
            (0.8, "0.8 is a popular sampling temperature, not the loss optimum: dividing the logits by T is something "
                  "the last layer could have learned, so at convergence T = 1 is already optimal")])


# ----------------------------------------------------------------------------------- experiment
TEMPERATURES = (0.5, 0.8, 1.0, 1.25, 2.0)
POSITIONS = (0, 1, 3, 15, 63)


def _float_keys(d: dict, what: str) -> dict:
    try:
        return {float(k): v for k, v in d.items()}
    except (TypeError, ValueError):
        raise CheckFailed(f"{what}: the keys must be numbers, got {list(d)}") from None


def check_temperature_experiment(results) -> None:
    """results = {"steps": training steps run, "val_loss": {T: validation cross-entropy of
    softmax(logits / T)} for T in 0.5, 0.8, 1.0, 1.25, 2.0, "loss_by_position": {t: validation loss at
    position t} for t in 0, 1, 3, 15, 63}. Checks that the measurements were made on a trained model:
    values in plausible ranges, and the loss convex in 1/T as every real cross-entropy is."""
    with Checker("temperature_experiment") as c:
        c.answer(results)
        c.keys(results, ["steps", "val_loss", "loss_by_position"], "the results")
        c.in_range(results["steps"], 50, 100_000, "training steps")
        vl = _float_keys(results["val_loss"], "val_loss")
        c.keys(vl, TEMPERATURES, "val_loss (by temperature)")
        for t in TEMPERATURES:
            c.in_range(vl[t], 0.5, 8.0, f"val loss at T={t}")
        c.in_range(vl[1.0], 1.0, math.log(82) - 0.3, "val loss at T=1",
                   why=f"below ln(82) = {math.log(82):.2f} once the model has trained a little")
        temps = sorted(TEMPERATURES, reverse=True)                     # 1/T increasing
        beta, loss = [1 / t for t in temps], [float(vl[t]) for t in temps]
        slopes = [(loss[i + 1] - loss[i]) / (beta[i + 1] - beta[i]) for i in range(len(beta) - 1)]
        c.true(all(slopes[i + 1] >= slopes[i] - 0.05 for i in range(len(slopes) - 1)),
               "the val losses are not convex in 1/T, which every cross-entropy of softmax(logits / T) is: "
               f"were they all measured on the same logits? slopes {[round(s, 3) for s in slopes]}")
        lp = _float_keys(results["loss_by_position"], "loss_by_position")
        c.keys(lp, POSITIONS, "loss_by_position")
        c.in_range(lp[0], 1.5, 5.0, "loss at position 0", why="with no context the model can only learn how often "
                   "each character occurs (about 3.3 nats)")
        for t in POSITIONS[1:]:
            c.in_range(lp[t], 0.5, 5.0, f"loss at position {t}")
