"""Every chapter-01 check passes on the solution, fails on the stub, and rejects plausible mistakes."""

import math

import pytest
import torch
from nbutil import check_contract, notebook_namespace

from minids.checks import (
    CheckFailed,
    check_causal_attention,
    check_rms_norm,
    check_shift_targets,
    check_temperature_probs,
)

SOL = notebook_namespace("solutions/01_gpt_baseline.ipynb")
STUB = notebook_namespace("solutions/01_gpt_baseline.ipynb", stubbed=True)

CASES = {
    "rms_norm": (check_rms_norm, [
        lambda x, w, eps=1e-6: ((x - x.mean(-1, keepdim=True))
                                / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps) * w),
        lambda x, w, eps=1e-6: x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps),
        lambda x, w, eps=1e-6: x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + eps) * w,
    ]),
    "causal_attention": (check_causal_attention, [
        lambda q, k, v: (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))).softmax(-1) @ v,
        lambda q, k, v: (q @ k.transpose(-2, -1)).masked_fill(
            ~torch.ones(q.size(-2), q.size(-2), dtype=torch.bool).tril(), float("-inf")).softmax(-1) @ v,
    ]),
    "make_example": (check_shift_targets, [
        lambda ids, i, T: (ids[i:i + T], ids[i:i + T]),
        lambda ids, i, T: (ids[i + 1:i + T + 1], ids[i + 2:i + T + 2]),
    ]),
    "temperature_probs": (check_temperature_probs, [
        lambda logits, t, k=None: (logits * t).softmax(-1),
        lambda logits, t, k=None: (logits / t).softmax(-1),                     # ignores top_k
    ]),
}


test_check_passes_on_solution, test_check_fails_on_stub, test_check_rejects_plausible_mistakes = \
    check_contract(CASES, SOL, STUB)


def test_mistake_is_named(capsys):
    with pytest.raises(CheckFailed, match="LayerNorm"):
        check_rms_norm(CASES["rms_norm"][1][0])
