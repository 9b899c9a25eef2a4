"""Every chapter-04 check passes on the solution, fails on the stub, and rejects plausible mistakes."""

import pytest
import torch
from nbutil import check_contract, notebook_namespace

from minids.checks import (
    CheckFailed,
    check_group_mask,
    check_moe_dispatch,
    check_topk_gate,
    check_update_bias,
)

SOL = notebook_namespace("solutions/04_moe.ipynb")
STUB = notebook_namespace("solutions/04_moe.ipynb", stubbed=True)


def _gate_wrong(select_with_bias=True, weigh_with_bias=False, normalise=True, use_scale=True):
    def gate(scores, bias, k, scale=1.0):
        idx = (scores + bias if select_with_bias else scores).topk(k, dim=-1).indices
        w = (scores + bias if weigh_with_bias else scores).gather(1, idx)
        if normalise:
            w = w / w.sum(-1, keepdim=True)
        return w * (scale if use_scale else 1.0), idx
    return gate


def _mask_wrong(how):
    def mask(choice, n_group, topk_group):
        N, E = choice.shape
        grouped = choice.view(N, n_group, E // n_group)
        gs = {"max": grouped.amax(-1), "sum": grouped.sum(-1),
              "lowest": -grouped.topk(2, dim=-1).values.sum(-1)}[how]
        keep = gs.topk(topk_group, dim=-1).indices
        m = torch.zeros(N, n_group, dtype=torch.bool).scatter(1, keep, True)
        return m[..., None].expand(N, n_group, E // n_group).reshape(N, E)
    return mask


def _dispatch_per_token(x, weights, indices, experts):      # right numbers, one call per token
    y = torch.zeros_like(x)
    for t in range(x.size(0)):
        for k in range(indices.size(1)):
            y[t] += weights[t, k] * experts[int(indices[t, k])](x[t:t + 1])[0]
    return y


def _dispatch_unweighted(x, weights, indices, experts):
    y = torch.zeros_like(x)
    for e, f in enumerate(experts):
        tok, _ = torch.where(indices == e)
        if tok.numel():
            y.index_add_(0, tok, f(x[tok]))
    return y


def _dispatch_first_slot(x, weights, indices, experts):
    return SOL["moe_dispatch"](x, weights[:, :1], indices[:, :1], experts)


CASES = {
    "topk_gate": (check_topk_gate, [
        _gate_wrong(select_with_bias=False),              # the bias ignored
        _gate_wrong(weigh_with_bias=True),                # the bias leaks into the weights
        _gate_wrong(normalise=False),
        _gate_wrong(use_scale=False),
    ]),
    "group_mask": (check_group_mask, [_mask_wrong("max"), _mask_wrong("sum"), _mask_wrong("lowest")]),
    "update_bias": (check_update_bias, [
        lambda b, load, g: b - g * torch.sign(load.mean() - load),        # sign reversed
        lambda b, load, g: b + g * (load.mean() - load),                  # proportional, not sign
        lambda b, load, g: g * torch.sign(load.mean() - load),            # forgets the old bias
    ]),
    "moe_dispatch": (check_moe_dispatch, [_dispatch_unweighted, _dispatch_first_slot, _dispatch_per_token]),
}


test_check_passes_on_solution, test_check_fails_on_stub, test_check_rejects_plausible_mistakes = \
    check_contract(CASES, SOL, STUB)


@pytest.mark.parametrize("name,wrong,hint", [
    ("topk_gate", _gate_wrong(weigh_with_bias=True), "UNBIASED"),
    ("group_mask", _mask_wrong("max"), "TWO best"),
    ("update_bias", lambda b, load, g: b - g * torch.sign(load.mean() - load), "reversed"),
    ("moe_dispatch", _dispatch_unweighted, "gate weight"),
    ("moe_dispatch", _dispatch_per_token, "once"),
])
def test_mistake_is_named(name, wrong, hint):
    check, _ = CASES[name]
    with pytest.raises(CheckFailed, match=hint):
        check(wrong)
