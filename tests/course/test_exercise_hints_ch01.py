"""Chapter 01's checks name the likely mistake for the errors learners actually make (beyond the
one-per-check cases in test_exercises_ch01.py)."""

import math

import pytest
import torch

from minids.checks import (
    CheckFailed,
    check_causal_attention,
    check_rms_norm,
    check_shift_targets,
    check_temperature_probs,
)


def _mask(q):
    return torch.ones(q.size(-2), q.size(-2), dtype=torch.bool).tril()


def _scores(q, k):
    return q @ k.transpose(-2, -1)


def _topk_zero(logits, t, k=None):
    z = logits / t
    if k is not None:
        z = z.masked_fill(z < z.topk(k, -1).values[..., -1:], 0.0)
    return z.softmax(-1)


MISTAKES = [
    (check_rms_norm, lambda x, w, eps=1e-6: x / torch.sqrt(x.pow(2).mean(-1) + eps) * w, "keepdim=True"),
    (check_rms_norm, lambda x, w, eps=1e-6: x / (x.pow(2).mean(-1, keepdim=True) + eps) * w, "square ROOT"),
    (check_rms_norm, lambda x, w, eps=1e-6: x / torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w,
     "rsqrt is 1/sqrt"),
    (check_rms_norm, lambda x, w, eps=1e-6: x / torch.sqrt(x.pow(2).mean() + eps) * w, "each token on its own"),
    (check_causal_attention, lambda q, k, v: (_scores(q, k) / math.sqrt(q.size(-1))).masked_fill(
        _mask(q), float("-inf")).softmax(-1) @ v, "NaN"),                        # masked the positions to keep
    (check_causal_attention, lambda q, k, v: (_scores(q, k) / math.sqrt(q.size(-1))).masked_fill(
        ~_mask(q).T, float("-inf")).softmax(-1) @ v, "upside down"),              # triu instead of tril
    (check_causal_attention, lambda q, k, v: (_scores(q, k) / math.sqrt(q.size(-1))).masked_fill(
        ~_mask(q), 0.0).softmax(-1) @ v, "not 0"),
    (check_causal_attention, lambda q, k, v: (_scores(q, k) / math.sqrt(q.size(-2))).masked_fill(
        ~_mask(q), float("-inf")).softmax(-1) @ v, "not the number of queries"),
    (check_causal_attention, lambda q, k, v: (q @ k / math.sqrt(q.size(-1))).softmax(-1) @ v, "transpose"),
    (check_shift_targets, lambda ids, i, T: (ids[i:T], ids[i + 1:T + 1]), "the end is i+T, not T"),
    (check_shift_targets, lambda ids, i, T: (ids[i:i + T], ids[i + 1:i + T]), "has 7 tokens"),
    (check_temperature_probs, _topk_zero, "-inf before the softmax"),
]


@pytest.mark.parametrize("check, wrong, hint", MISTAKES, ids=[m[2] for m in MISTAKES])
def test_likely_mistake_is_named(check, wrong, hint, capsys):
    with pytest.raises(CheckFailed, match="likely mistake|NaN|tokens"):
        check(wrong)
    out = capsys.readouterr().out
    assert out.startswith("❌") and hint in out, out
