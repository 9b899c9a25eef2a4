"""Checks for chapter 04 (DeepSeekMoE): the top-k gate, group-limited selection, the
aux-loss-free bias update, and dispatching tokens to experts."""

from __future__ import annotations

import torch

from ..moe import Experts, dispatch_loop
from .checking import Checker


def _dense_gate(weights, indices, n_experts: int) -> torch.Tensor:
    """(N, K) weights and expert ids -> (N, E) with each token's gate weights at its experts, so
    two answers that list the same experts in another order compare equal."""
    weights, indices = torch.as_tensor(weights), torch.as_tensor(indices).long()
    return torch.zeros(weights.size(0), n_experts, dtype=torch.float64).scatter(
        1, indices, weights.double())


def _gate(scores, bias, k, scale, select_with_bias=True, weigh_with_bias=False, normalise=True):
    choice = scores + bias if select_with_bias else scores
    idx = choice.topk(k, dim=-1).indices
    w = (scores + bias if weigh_with_bias else scores).gather(1, idx)
    if normalise:
        w = w / w.sum(-1, keepdim=True)
    return w * scale, idx


def check_topk_gate(topk_gate) -> None:
    """topk_gate(scores, bias, k, scale) -> (weights (N, k), indices (N, k)): the k experts with the
    largest scores + bias; weights = their UNBIASED scores, normalised to sum 1, times scale."""
    with Checker("topk_gate") as c:
        g = torch.Generator().manual_seed(4)
        for N, E, k, scale in [(5, 8, 2, 1.0), (7, 16, 4, 2.5), (3, 6, 1, 1.0)]:
            scores = torch.rand(N, E, generator=g)                       # sigmoid scores in (0, 1)
            bias = torch.randn(E, generator=g) * 0.3
            w, idx = topk_gate(scores, bias, k, scale)
            shape = tuple(torch.as_tensor(idx).shape)
            c.true(shape == (N, k), f"indices for N={N}, k={k}: expected shape {(N, k)}, got {shape}")
            exp = _dense_gate(*_gate(scores, bias, k, scale), E)
            got = _dense_gate(w, idx, E)
            c.close(got, exp, f"gate of N={N}, E={E}, k={k}, scale={scale} (as an (N, E) matrix)", mistakes=[
                (_dense_gate(*_gate(scores, bias, k, scale, select_with_bias=False), E),
                 "select the experts with scores + bias: the bias exists to change the choice"),
                (_dense_gate(*_gate(scores, bias, k, scale, weigh_with_bias=True), E),
                 "the weights must use the UNBIASED scores; the bias only selects (eq 16)"),
                (_dense_gate(*_gate(scores, bias, k, scale, normalise=False), E),
                 "normalise the chosen scores so they sum to 1 (eq 13), then multiply by scale"),
                (_dense_gate(*_gate(scores, bias, k, 1.0), E), "multiply the weights by `scale`"),
                (_dense_gate(*_gate(scores.softmax(-1), bias, k, scale), E),
                 "the scores are already sigmoid scores; do not apply a softmax"),
            ])


def _group_mask(choice, n_group, topk_group, how="top2"):
    N, E = choice.shape
    grouped = choice.view(N, n_group, E // n_group)                  # (N, G, E/G)
    if how == "max":
        gs = grouped.amax(-1)
    elif how == "sum":
        gs = grouped.sum(-1)
    else:                                                            # "top2" or "lowest"
        gs = grouped.topk(2, dim=-1).values.sum(-1)
    keep = gs.topk(topk_group, dim=-1, largest=how != "lowest").indices
    mask = torch.zeros(N, n_group, dtype=torch.bool).scatter(1, keep, True)
    return mask[..., None].expand(N, n_group, E // n_group).reshape(N, E)


def check_group_mask(group_mask) -> None:
    """group_mask(choice, n_group, topk_group) -> bool (N, E): True for the experts a token may pick,
    i.e. those in its topk_group best groups, a group scored by the SUM OF ITS TWO BEST scores."""
    with Checker("group_mask") as c:
        g = torch.Generator().manual_seed(5)
        for N, E, G, keep in [(6, 16, 4, 2), (5, 12, 3, 1), (4, 8, 2, 2), (8, 32, 8, 4)]:
            choice = torch.rand(N, E, generator=g)
            got = torch.as_tensor(group_mask(choice, G, keep))
            c.true(got.dtype == torch.bool, f"the mask must be a bool tensor, got {got.dtype}")
            c.close(got.float(), _group_mask(choice, G, keep).float(),
                    f"N={N}, E={E}, n_group={G}, topk_group={keep}", mistakes=[
                        (_group_mask(choice, G, keep, "max").float(),
                         "V3 scores a group by the sum of its TWO best experts, not its single best"),
                        (_group_mask(choice, G, keep, "sum").float(),
                         "score a group by its two best experts, not by all of them"),
                        (_group_mask(choice, G, keep, "lowest").float(),
                         "keep the groups with the HIGHEST scores"),
                    ])
        # a token whose best single expert sits in a group that is otherwise poor
        choice = torch.tensor([[0.99, 0.0, 0.6, 0.6, 0.1, 0.1]])
        c.close(torch.as_tensor(group_mask(choice, 3, 1)).float(),
                torch.tensor([[0.0, 0, 1, 1, 0, 0]]),
                "groups (0.99, 0.0), (0.6, 0.6), (0.1, 0.1), keep 1: the second group wins (1.2 > 0.99)")


def check_update_bias(update_bias) -> None:
    """update_bias(bias, load, gamma) -> new bias: b_i + gamma * sign(mean(load) - load_i)."""
    with Checker("update_bias") as c:
        g = torch.Generator().manual_seed(6)
        for E, gamma in [(8, 0.001), (4, 0.01), (16, 0.1)]:
            bias = torch.randn(E, generator=g) * 0.01
            load = torch.randint(0, 50, (E,), generator=g).float()
            load[0] = load.mean()                        # an expert exactly at the mean: no change
            exp = bias + gamma * torch.sign(load.mean() - load)
            got = update_bias(bias.clone(), load.clone(), gamma)
            c.close(got, exp, f"E={E}, gamma={gamma}", mistakes=[
                (bias - gamma * torch.sign(load.mean() - load),
                 "the sign is reversed: an OVERloaded expert's bias must go DOWN"),
                (bias + gamma * (load.mean() - load),
                 "move by gamma * sign(...), a fixed step, not in proportion to the imbalance"),
                (gamma * torch.sign(load.mean() - load), "add the step to the current bias"),
                (bias + gamma * torch.sign(load.float().median() - load), "compare with the MEAN load"),
            ])


def check_moe_dispatch(moe_dispatch) -> None:
    """moe_dispatch(x, weights, indices, experts) -> (N, d): for each token, the sum over its K slots
    of weights[t, k] * experts[indices[t, k]](x[t]). `experts` is a list of functions (n, d) -> (n, d)."""
    with Checker("moe_dispatch") as c:
        g = torch.Generator().manual_seed(7)
        for N, E, K, d in [(10, 4, 2, 8), (23, 8, 3, 16), (5, 6, 1, 8)]:
            ex = Experts(E, d, 12)
            with torch.no_grad():
                for p in ex.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            calls = [0] * E

            def make(e, ex=ex, calls=calls):
                def f(t):
                    calls[e] += 1
                    return ex.expert(e, t)
                return f
            experts = [make(e) for e in range(E)]
            x = torch.randn(N, d, generator=g)
            idx = torch.rand(N, E, generator=g).topk(K, dim=-1).indices
            w = torch.rand(N, K, generator=g)
            with torch.no_grad():
                exp = dispatch_loop(ex, x, w, idx)
                unweighted = dispatch_loop(ex, x, torch.ones_like(w), idx)
                first_only = dispatch_loop(ex, x, w[:, :1], idx[:, :1])
                got = moe_dispatch(x, w, idx, experts)
            c.close(got, exp, f"N={N}, E={E}, K={K}", mistakes=[
                (unweighted, "multiply each expert's output by the token's gate weight for that slot"),
                (first_only, "sum over ALL K slots of each token, not just the first"),
                (dispatch_loop(ex, x, w.flip(-1), idx),
                 "weights[t, k] belongs to expert indices[t, k]: keep slots and weights aligned"),
            ])
            c.true(max(calls) <= K, "run each expert on all of its tokens at once (a batch), not once "
                   f"per token: calls per expert were {calls}")
