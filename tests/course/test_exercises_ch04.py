"""Every chapter-04 check passes on the solution and on valid alternatives, fails on the stub,
rejects plausible mistakes and names the ones it lists."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nbutil import Wrong, check_contract, notebook_namespace

from minids.checks import (
    CheckFailed,
    check_balance_numbers,
    check_gamma_experiment,
    check_group_mask,
    check_moe_dispatch,
    check_route,
    check_sequence_balance_loss,
    check_update_bias,
)
from minids.moe import sequence_balance_loss

SOL = notebook_namespace("solutions/04_moe.ipynb")
STUB = notebook_namespace("solutions/04_moe.ipynb", stubbed=True)

# measured by the solution's experiment cell (2026-11-29, this machine)
MEASURED = {0.0: {"max_vio": 1.97, "val_loss": 2.555}, 0.001: {"max_vio": 0.89, "val_loss": 2.565},
            0.01: {"max_vio": 0.26, "val_loss": 2.560}, 0.1: {"max_vio": 0.98, "val_loss": 2.573}}
SOL["results"] = MEASURED


# ------------------------------------------------------------------ group mask
def _mask(how):
    def mask(choice, n_group, topk_group):
        N, E = choice.shape
        grouped = choice.reshape(N, n_group, E // n_group)
        gs = {"max": grouped.amax(-1), "sum": grouped.sum(-1), "top2": grouped.topk(2, -1).values.sum(-1),
              "lowest": -grouped.topk(2, dim=-1).values.sum(-1)}[how]
        keep = gs.topk(topk_group, dim=-1).indices
        m = torch.zeros(N, n_group, dtype=torch.bool).scatter(1, keep, True)
        return m[..., None].expand(N, n_group, E // n_group).reshape(N, E)
    return mask


def _mask_loops(choice, n_group, topk_group):    # valid: NumPy and loops
    c = np.asarray(choice, dtype=np.float64)
    N, E = c.shape
    size = E // n_group
    out = np.zeros((N, E), dtype=bool)
    for t in range(N):
        score = [np.sort(c[t, g * size:(g + 1) * size])[-2:].sum() for g in range(n_group)]
        for g in np.argsort(score)[::-1][:topk_group]:
            out[t, g * size:(g + 1) * size] = True
    return out


# ------------------------------------------------------------------ route
def _route(fill=float("-inf"), groups=True, select_bias=True, weigh_bias=False, normalise=True):
    def route(scores, bias, k, n_group, topk_group, scale):
        choice = scores + bias if select_bias else scores + 0
        if groups:
            choice = choice.masked_fill(~_mask("top2")(scores + bias, n_group, topk_group), fill)
        idx = choice.topk(k, dim=-1).indices
        w = (scores + bias if weigh_bias else scores).gather(1, idx).to(scores.dtype)
        if normalise:
            w = w / w.sum(-1, keepdim=True)
        return w * scale, idx
    return route


def _route_sorted(scores, bias, k, n_group, topk_group, scale):   # valid: sort instead of topk, int32 ids
    allowed = SOL["group_mask"](scores + bias, n_group, topk_group)
    choice = torch.where(allowed, scores + bias, torch.full_like(scores, -1e30, dtype=torch.float64).to(scores.dtype))
    idx = choice.argsort(-1, descending=True)[:, :k]
    w = scores.gather(1, idx)
    return (w / w.sum(-1, keepdim=True) * scale), idx.to(torch.int32)


# ------------------------------------------------------------------ update_bias
def _update(kind):
    def update(bias, load, gamma):
        ld = load.double()
        mean = ld.mean() if kind == "global" else ld.mean(-1, keepdim=True)
        if kind == "ties_down":
            step = torch.where(ld >= mean, -1.0, 1.0)
        elif kind == "proportional":
            step = mean - ld
        else:
            step = torch.sign(mean - ld)
        return (bias + gamma * step).to(bias.dtype)
    return update


def _update_inplace(bias, load, gamma):        # valid: in place (the check passes copies), float32 maths
    lf = load.float()
    bias += gamma * torch.sign(lf.mean(-1, keepdim=True) - lf)
    return bias


# ------------------------------------------------------------------ balance loss
def _balance_batchwise(scores, indices, alpha):
    B, T, E = scores.shape
    K = indices.size(-1)
    chosen = torch.zeros(B, T, E).scatter(2, indices, 1.0)
    f = chosen.sum((0, 1)) * E / (K * B * T)
    return alpha * (f * (scores / scores.sum(-1, keepdim=True)).mean((0, 1))).sum()


def _balance_no_norm(scores, indices, alpha):
    B, T, E = scores.shape
    K = indices.size(-1)
    f = torch.zeros(B, T, E).scatter(2, indices, 1.0).sum(1) * E / (K * T)
    return alpha * (f * scores.mean(1)).sum(-1).mean()


def _balance_loops(scores, indices, alpha):     # valid: loops, a Python float
    B, T, E = scores.shape
    K = indices.size(-1)
    total = 0.0
    for b in range(B):
        counts = torch.bincount(indices[b].flatten(), minlength=E).double()
        P = (scores[b].double() / scores[b].double().sum(-1, keepdim=True)).mean(0)
        total += float((counts * E / (K * T) * P).sum())
    return alpha * total / B


# ------------------------------------------------------------------ dispatch
def _dispatch_loop(x, weights, indices, gate_up, down):       # right numbers, a loop over experts
    y = torch.zeros_like(x)
    for e in range(gate_up.size(0)):
        tok, slot = torch.where(indices == e)
        if tok.numel():
            g, u = (x[tok] @ gate_up[e].T).chunk(2, -1)
            y.index_add_(0, tok, (F.silu(g) * u) @ down[e].T * weights[tok, slot, None])
    return y


def _dispatch_dense(x, weights, indices, gate_up, down):      # right numbers: every expert on every token
    g, u = torch.einsum("nd,eid->nei", x, gate_up).chunk(2, -1)            # (N, E, I)
    out = torch.einsum("nei,edi->ned", F.silu(g) * u, down)                # (N, E, d)
    gate = torch.zeros(x.size(0), gate_up.size(0), dtype=x.dtype).scatter(1, indices, weights)
    return torch.einsum("ne,ned->nd", gate, out)


def _dispatch_gathered(x, weights, indices, gate_up, down):   # right numbers: a weight copy per (token, slot)
    N, K = indices.shape
    W1, W2 = gate_up[indices.flatten()], down[indices.flatten()]           # (N K, 2I, d), (N K, d, I)
    xs = x.repeat_interleave(K, 0)
    g, u = torch.bmm(W1, xs[:, :, None])[..., 0].chunk(2, -1)
    out = torch.bmm(W2, (F.silu(g) * u)[:, :, None])[..., 0]
    return (out * weights.reshape(-1, 1)).view(N, K, -1).sum(1)


def _dispatch_wrong(kind):
    def f(x, weights, indices, gate_up, down):
        if kind == "unweighted":
            return SOL["moe_dispatch"](x, torch.ones_like(weights), indices, gate_up, down)
        if kind == "first_slot":
            return SOL["moe_dispatch"](x, weights[:, :1].contiguous(), indices[:, :1].contiguous(), gate_up, down)
        if kind == "swapped_gate":
            return SOL["moe_dispatch"](x, weights, indices, torch.cat(gate_up.chunk(2, 1)[::-1], 1), down)
        return SOL["moe_dispatch"](x, weights.flip(-1), indices, gate_up, down)
    return f


BALANCE = {"balanced": 1.0, "collapsed": 32.0, "maxvio_collapsed": 31.0, "large_loss": "sequence"}

CASES = {
    "group_mask": (check_group_mask, [
        Wrong(_mask("max"), named="TWO best"),
        Wrong(_mask("sum"), named="not by all"),
        Wrong(_mask("lowest"), named="HIGHEST"),
        lambda c, n, k: _mask("top2")(c, n, k).float(),                           # dtype contract: bool
    ], [_mask_loops]),
    "route": (check_route, [
        Wrong(_route(fill=0.0), named="-inf, not 0"),
        Wrong(_route(groups=False), named="group mask"),
        Wrong(_route(select_bias=False), named="scores + bias"),
        Wrong(_route(weigh_bias=True), named="UNBIASED"),
        Wrong(_route(normalise=False), named="normalise"),
    ], [_route_sorted]),
    "update_bias": (check_update_bias, [
        Wrong(_update("global"), named="own mean load"),
        Wrong(_update("ties_down"), named="sign(0) = 0"),
        Wrong(_update("proportional"), named="fixed step"),
        lambda b, ld, g: b + g * torch.sign(ld.double().mean(-1, keepdim=True) - ld),   # float64 out
        Wrong(lambda b, ld, g: b + g * torch.sign(ld.mean(-1, keepdim=True) - ld),     # int loads: mean fails
              named="integer token counts"),
    ], [_update_inplace]),
    "sequence_balance_loss": (check_sequence_balance_loss, [
        Wrong(_balance_batchwise, named="SEQUENCE-wise"),
        Wrong(_balance_no_norm, named="normalise each token's scores"),
        Wrong(lambda s, i, a: SOL["sequence_balance_loss"](s, i, a) * s.size(0), named="don't add them up"),
        Wrong(lambda s, i, a: SOL["sequence_balance_loss"](s, i, 1.0), named="alpha"),
        lambda s, i, a: sequence_balance_loss(s, i, a),                                 # forbidden
    ], [_balance_loops, lambda s, i, a: np.float64(SOL["sequence_balance_loss"](s, i, a).item())]),
    "moe_dispatch": (check_moe_dispatch, [
        Wrong(_dispatch_wrong("unweighted"), named="gate weight"),
        Wrong(_dispatch_wrong("first_slot"), named="ALL K slots"),
        Wrong(_dispatch_wrong("flipped"), named="aligned"),
        Wrong(_dispatch_wrong("swapped_gate"), named="FIRST I rows"),
        _dispatch_loop,                                                            # a loop over experts
        _dispatch_dense,                                                           # every expert on every token
        _dispatch_gathered,                                                        # weights copied per token
    ]),
    "balance_answer": (check_balance_numbers, [
        Wrong({**BALANCE, "collapsed": 31.0}, named="that is MaxVio"),
        Wrong({**BALANCE, "large_loss": "batch"}, named="batch-wise loss stays"),
        Wrong({**BALANCE, "maxvio_collapsed": 32.0}, named="(E/K) - 1"),
        {**BALANCE, "balanced": 1 / 256},
    ], [{"balanced": 1, "collapsed": np.int64(32), "maxvio_collapsed": 31, "large_loss": " Sequence"}]),
    "results": (check_gamma_experiment, [
        {**MEASURED, 0.1: {"max_vio": 4.5, "val_loss": 2.5}},                      # MaxVio above its maximum
        {**MEASURED, 0.01: {"max_vio": 0.2, "val_loss": 4.4}},                     # untrained
        {k: v for k, v in MEASURED.items() if k != 0.001},
    ], [{str(k): {"max_vio": np.float64(v["max_vio"]), "val_loss": v["val_loss"]} for k, v in MEASURED.items()}]),
}


test_check_passes_on_solution, test_check_fails_on_stub, test_check_rejects_plausible_mistakes = \
    check_contract(CASES, SOL, STUB)


@pytest.mark.parametrize("wrong, text", [(_dispatch_loop, "16 experts"), (_dispatch_dense, "over 4x the routed"),
                                         (_dispatch_gathered, "over 4x the routed")])
def test_dispatch_work_rules_are_named(wrong, text, capsys):
    with pytest.raises(CheckFailed, match=text):
        check_moe_dispatch(wrong)


def test_the_package_balance_loss_is_the_reference():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(3, 5, 8, generator=g)
    idx = s.topk(2, -1).indices
    assert abs(float(SOL["sequence_balance_loss"](s, idx, 0.1)) - float(sequence_balance_loss(s, idx, 0.1))) < 1e-7
