"""Checks for chapter 01 (a GPT baseline): RMSNorm, causal attention, shifted targets, temperature."""

from __future__ import annotations

import math

import torch

from ..attention import causal_sdpa as _sdpa
from ..generate import filtered_probs
from ..layers import RMSNorm
from .checking import Checker, CheckFailed


def _call(fn, *args, hint: str):
    """Call the learner's function; a broadcasting/shape RuntimeError gets a likely cause."""
    try:
        return fn(*args)
    except RuntimeError as e:
        if any(s in str(e) for s in ("size of tensor", "shape", "mat1 and mat2", "Expected size")):
            raise CheckFailed(f"your code raised RuntimeError: {e}\n    likely mistake: {hint}") from None
        raise


def check_rms_norm(rms_norm) -> None:
    """rms_norm(x, weight, eps) -> x / sqrt(mean(x^2 over the last dim) + eps) * weight."""
    with Checker("rms_norm") as c:
        g = torch.Generator().manual_seed(0)
        for shape in [(3, 8), (2, 5, 16), (1, 1, 4)]:
            x = torch.randn(*shape, generator=g) * 3 + 1
            w = torch.rand(shape[-1], generator=g) + 0.5
            ref = RMSNorm(shape[-1], eps=1e-6)
            ref.weight.data.copy_(w)
            exp = ref(x)
            got = _call(rms_norm, x, w, 1e-6, hint="keep the reduced dimension, `mean(-1, keepdim=True)`, "
                        "so that it broadcasts against x")
            c.close(got, exp, f"x of shape {shape}", mistakes=[
                ((x - x.mean(-1, keepdim=True))
                 / torch.sqrt((x - x.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True) + 1e-6) * w,
                 "you subtracted the mean (that is LayerNorm); RMSNorm does not centre x"),
                (x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6) * w,
                 "use the MEAN of x^2 over the last dimension, not the sum"),
                (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6),
                 "multiply by `weight` at the end"),
                (x / torch.sqrt(x.pow(2).mean(0, keepdim=True) + 1e-6) * w,
                 "normalise over the LAST dimension (features), not the first"),
                (x / torch.sqrt(x.pow(2).mean() + 1e-6) * w,
                 "normalise each token on its own: the mean over the last dimension only, not the whole tensor"),
                (x / (x.pow(2).mean(-1, keepdim=True) + 1e-6) * w,
                 "take the square ROOT of the mean of x^2 (the RMS), then divide by it"),
                (x / torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w,
                 "rsqrt is 1/sqrt: MULTIPLY x by it (or divide by sqrt)"),
            ])
        big = torch.full((2, 4), 1e4)
        c.close(rms_norm(big, torch.ones(4), 1e-6), torch.ones(2, 4), "large inputs stay finite")


def _reference_attention(q, k, v):
    return _sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), q.size(-1) ** -0.5).transpose(1, 2)


def check_causal_attention(causal_attention) -> None:
    """causal_attention(q, k, v): q, k, v of shape (B, H, T, D) -> (B, H, T, D), each position
    attending to itself and earlier positions only, scores scaled by 1/sqrt(D)."""
    with Checker("causal_attention") as c:
        g = torch.Generator().manual_seed(1)
        for B, H, T, D in [(1, 1, 4, 8), (2, 3, 7, 16)]:
            q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
            exp = _reference_attention(q, k, v)
            s = q @ k.transpose(-2, -1)
            mask = torch.ones(T, T, dtype=torch.bool).tril()
            got = _call(causal_attention, q, k, v, hint="scores are q @ k.transpose(-2, -1): (B, H, T, D) @ "
                        "(B, H, D, T) -> (B, H, T, T), then weights @ v")
            if torch.as_tensor(got).isnan().any():
                raise CheckFailed(f"(B, H, T, D) = {(B, H, T, D)}: the output has NaN: a row of scores is all "
                                  "-inf. `masked_fill(mask, -inf)` fills where mask is True: fill the FUTURE "
                                  "positions (above the diagonal), keep t' <= t")
            c.close(got, exp, f"(B, H, T, D) = {(B, H, T, D)}", mistakes=[
                ((s / math.sqrt(D)).softmax(-1) @ v, "the causal mask is missing: position t sees the future"),
                (s.masked_fill(~mask, float("-inf")).softmax(-1) @ v, "scale the scores by 1/sqrt(D)"),
                ((s / D).masked_fill(~mask, float("-inf")).softmax(-1) @ v,
                 "scale by 1/sqrt(D), not 1/D"),
                ((s / math.sqrt(D)).masked_fill(~mask.T, float("-inf")).softmax(-1) @ v,
                 "the mask is upside down (triu instead of tril): keep positions <= t, the lower triangle"),
                ((s / math.sqrt(D)).masked_fill(~mask, 0.0).softmax(-1) @ v,
                 "fill the masked scores with -inf, not 0: exp(0) = 1 still gives the future a weight"),
                ((s / math.sqrt(T)).masked_fill(~mask, float("-inf")).softmax(-1) @ v,
                 "scale by 1/sqrt(D), the head dimension q.size(-1), not the sequence length"),
                ((s / math.sqrt(D)).masked_fill(~mask, float("-inf")).softmax(-2) @ v,
                 "softmax over the keys (last dim), not the queries"),
            ])
        x = torch.randn(1, 1, 5, 4, generator=g)
        out = causal_attention(x, x, x)
        c.close(out[..., 0, :], x[..., 0, :], "the first position can only attend to itself")


def check_shift_targets(make_example) -> None:
    """make_example(ids, i, T) -> (x, y): x = ids[i : i+T], y = ids[i+1 : i+T+1]."""
    with Checker("shift_targets") as c:
        ids = torch.arange(100) * 7 % 13
        for i, T in [(0, 8), (5, 16), (83, 16)]:
            x, y = make_example(ids, i, T)
            for name, got in (("x", x), ("y", y)):
                n = torch.as_tensor(got).numel()
                if n != T:
                    raise CheckFailed(f"{name} for i={i}, T={T} has {n} tokens, expected T = {T}: slice "
                                      "ids[i : i+T] for x and ids[i+1 : i+T+1] for y (the end is i+T, not T)")
            c.close(x, ids[i:i + T], f"x for i={i}, T={T}",
                    mistakes=[(ids[i + 1:i + T + 1], "x starts at i, not i+1")])
            c.close(y, ids[i + 1:i + T + 1], f"y for i={i}, T={T}", mistakes=[
                (ids[i:i + T], "y must be x shifted one step to the left: the NEXT token at each position"),
            ])


def check_temperature_probs(temperature_probs) -> None:
    """temperature_probs(logits, temperature, top_k) -> probabilities over the vocabulary:
    softmax(logits / temperature) restricted to the top_k largest logits (renormalised)."""
    with Checker("temperature_probs") as c:
        g = torch.Generator().manual_seed(2)
        logits = torch.randn(3, 10, generator=g) * 2
        for t, k in [(1.0, None), (0.5, None), (2.0, 3), (1.0, 1)]:
            exp = filtered_probs(logits, t, k)
            got = temperature_probs(logits, t, k)
            c.close(got, exp, f"temperature={t}, top_k={k}", mistakes=[
                ((logits * t).softmax(-1), "divide the logits by the temperature, don't multiply"),
                (logits.softmax(-1) / t, "apply the temperature to the logits, before the softmax"),
                (filtered_probs(logits, 1.0, k), "the temperature is ignored"),
                (filtered_probs(logits, t, None), "top_k is ignored: keep only the k largest logits"),
                (filtered_probs(logits, t, None) * (filtered_probs(logits, t, k) > 0),
                 "after dropping tokens, renormalise so the probabilities sum to 1"),
                ((logits / t).masked_fill(filtered_probs(logits, t, k) == 0, 0.0).softmax(-1),
                 "set the dropped logits to -inf before the softmax (a logit of 0 still gets probability)"),
            ])
        sums = temperature_probs(logits, 0.7, 4).sum(-1)
        c.close(sums, torch.ones(3), "each row sums to 1")
