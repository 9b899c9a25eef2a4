"""Checks for chapter 04 (DeepSeekMoE): group-limited selection, the whole V3 routing rule, the
aux-loss-free bias update with its edge cases, the sequence-wise balance loss (eqs 17-20), a
batched dispatch without a loop over experts; a think question on balance numbers; the gamma
sweep experiment."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .checking import Checker, CheckFailed, Watch

FORBIDDEN = {
    "group_mask": ["minids.moe.Router.forward"],
    "route": ["minids.moe.Router.forward"],
    "sequence_balance_loss": ["minids.moe.sequence_balance_loss"],
    "moe_dispatch": ["minids.moe.dispatch_loop", "minids.moe.Experts.expert", "minids.moe_dispatch.dispatch_fast",
                     "minids.moe.dispatch_fast"],
}
POINTS = {"group_mask": 1, "route": 2, "update_bias": 2, "sequence_balance_loss": 2, "moe_dispatch": 3,
          "balance_numbers": 2, "gamma_experiment": 2}
NOT_MUTATED = {"gamma_experiment": "an experiment: each mutant would re-train four models; its check is tested "
                                   "on made-up and real measurements instead"}
# Reviewed equivalent mutants of the solutions (python -m minids mutation 04 -v lists the survivors).
_DEFAULT_DIM = "topk's default dimension is -1"
_2D = "the tensor is 2-D by the task's contract, so dimension 1 is dimension -1"
_ROWS = ("another consistent assignment of buffer rows: each pair is written to and read from the same row, "
         "distinct within its expert (negative rows wrap around inside the capacity)")
EQUIVALENT_MUTANTS = {
    "group_mask": {
        "`grouped.topk(2, dim=-1).values.sum(-1)` -> `grouped.topk(2, dim=-1).values.mean(-1)`": "the mean of the "
        "two best is half their sum: the same ranking of groups",
        "`grouped.topk(2, dim=-1)` -> `grouped.topk(2)`": _DEFAULT_DIM,
        "`group_scores.topk(topk_group, dim=-1)` -> `group_scores.topk(topk_group)`": _DEFAULT_DIM,
        "`-1` -> `1` #3": _2D},
    "route": {"`choice.topk(k, dim=-1)` -> `choice.topk(k)`": _DEFAULT_DIM, "`-1` -> `1`": _2D, "`-1` -> `1` #2": _2D},
    "sequence_balance_loss": {
        "`torch.zeros(B, T, E, dtype=scores.dtype)` -> `torch.zeros(B, T, E)`": "0/1 indicators are exact in any "
        "float dtype; the product is promoted to the scores' dtype",
        "`-1` -> `1` #3": "f * P is (B, E): dimension 1 is dimension -1"},
    "moe_dispatch": {
        "`experts.argsort(stable=True)` -> `experts.argsort()`": "any order of the pairs within an expert works",
        "`True` -> `False`": "any order of the pairs within an expert works (stable=False)",
        "`torch.bincount(experts, minlength=E)` -> `torch.bincount(experts)`": "counts are only read at experts that "
        "occur; the buffer has E blocks either way",
        "`counts.cumsum(0) - counts` -> `counts.cumsum(0)`": _ROWS,
        "`0` -> `-1` #2": "cumsum over the only dimension of a 1-D tensor",
        "`torch.arange(N * K) - first[e_sorted]` -> `first[e_sorted] - torch.arange(N * K)`": _ROWS},
    "balance_numbers": {d: "256 / 8 = 32 exactly" for d in ("`E / K` -> `E // K`", "`E / K` -> `E // K` #2")},
}

GAMMAS = (0.0, 0.001, 0.01, 0.1)


def _dense_gate(weights, indices, n_experts: int) -> torch.Tensor:
    """(N, K) weights and expert ids -> (N, E) with each token's gate weights at its experts, so
    two answers that list the same experts in another order compare equal."""
    weights, indices = torch.as_tensor(weights), torch.as_tensor(indices).long()
    return torch.zeros(weights.size(0), n_experts, dtype=torch.float64).scatter(1, indices, weights.double())


# ----------------------------------------------------------------------------------- group mask
def _group_mask(choice, n_group, topk_group, how="top2"):
    N, E = choice.shape
    grouped = choice.double().reshape(N, n_group, E // n_group)           # (N, G, E/G)
    if how == "max":
        gs = grouped.amax(-1)
    elif how == "sum":
        gs = grouped.sum(-1)
    else:                                                                 # "top2" or "lowest"
        gs = grouped.topk(min(2, E // n_group), dim=-1).values.sum(-1)
    keep = gs.topk(topk_group, dim=-1, largest=how != "lowest").indices
    mask = torch.zeros(N, n_group, dtype=torch.bool).scatter(1, keep, True)
    return mask[..., None].expand(N, n_group, E // n_group).reshape(N, E)


def check_group_mask(group_mask) -> None:
    """group_mask(choice, n_group, topk_group) -> bool (N, E): True for the experts a token may pick,
    i.e. those in its topk_group best groups, a group scored by the SUM OF ITS TWO BEST entries."""
    with Checker("group_mask") as c:
        g = torch.Generator().manual_seed(5)
        for n, (N, E, G, keep, dtype) in enumerate([
                (6, 16, 4, 2, torch.float32), (5, 12, 3, 1, torch.float32), (1, 8, 2, 2, torch.float32),
                (8, 32, 8, 4, torch.float64), (4, 24, 6, 3, torch.float32)]):
            choice = (torch.rand(N, E, generator=g, dtype=dtype) - 0.3)       # biased scores may be negative
            if n == 4:                                                         # non-contiguous
                choice = torch.rand(E, N, generator=g).T - 0.3
            got = c.call(group_mask, choice, G, keep, forbidden=FORBIDDEN["group_mask"])
            c.equal(got, _group_mask(choice, G, keep), f"N={N}, E={E}, n_group={G}, topk_group={keep}"
                    + (" (non-contiguous)" if n == 4 else ""), dtype=torch.bool, mistakes=[
                        (_group_mask(choice, G, keep, "max"),
                         "V3 scores a group by the sum of its TWO best experts, not its single best"),
                        (_group_mask(choice, G, keep, "sum"), "score a group by its two best experts, not by all"),
                        (_group_mask(choice, G, keep, "lowest"), "keep the groups with the HIGHEST scores"),
                    ])
        choice = torch.tensor([[0.99, 0.0, 0.6, 0.6, 0.1, 0.1]])
        c.equal(c.call(group_mask, choice, 3, 1), torch.tensor([[False, False, True, True, False, False]]),
                "groups (0.99, 0.0), (0.6, 0.6), (0.1, 0.1), keep 1: the second group wins (1.2 > 0.99)",
                dtype=torch.bool)


# ----------------------------------------------------------------------------------- routing
def _route(scores, bias, k, n_group, topk_group, scale, fill=float("-inf"), select_bias=True, weigh_bias=False,
           normalise=True, groups=True):
    choice = scores.double() + bias.double() if select_bias else scores.double()
    if groups and n_group > 1:
        choice = choice.masked_fill(~_group_mask(scores.double() + bias.double(), n_group, topk_group), fill)
    idx = choice.topk(k, dim=-1).indices
    w = (scores.double() + bias.double() if weigh_bias else scores.double()).gather(1, idx)
    if normalise:
        w = w / w.sum(-1, keepdim=True)
    return w * scale, idx


def check_route(route) -> None:
    """route(scores, bias, k, n_group, topk_group, scale) -> (weights (N, k), indices (N, k)): V3's
    rule (eqs 13-16): among the experts of each token's topk_group best groups (group_mask on
    scores + bias), the k with the largest scores + bias; their weights are their UNBIASED scores,
    normalised to sum 1, times scale. Weights in the dtype of scores."""
    with Checker("route") as c:
        g = torch.Generator().manual_seed(6)
        for n, (N, E, k, G, keep, scale, dtype) in enumerate([
                (5, 8, 2, 1, 1, 1.0, torch.float32), (7, 16, 4, 4, 2, 2.5, torch.float32),
                (1, 12, 3, 3, 1, 1.5, torch.float32), (6, 32, 8, 8, 4, 2.5, torch.float64),
                (4, 16, 1, 2, 1, 1.0, torch.float32)]):
            scores = torch.rand(N, E, generator=g, dtype=dtype) * 0.4 + 0.05   # sigmoid scores in (0, 1)
            bias = (torch.randn(E, generator=g, dtype=dtype) * 0.3).to(torch.float32)
            if n == 2:                                 # every allowed expert's s + b < 0: masking with 0 picks others
                bias = torch.full((E,), -0.6)
                bias[:E // G] = -0.5
            if n == 4:                                 # non-contiguous scores
                scores = (torch.rand(E, N, generator=g) * 0.4 + 0.05).T
            got = c.call(route, scores, bias, k, G, keep, scale, forbidden=FORBIDDEN["route"])
            what = f"N={N}, E={E}, k={k}, n_group={G}, topk_group={keep}, scale={scale}, {str(dtype)[6:]}"
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                raise CheckFailed(f"{what}: return (weights, indices), got {type(got).__name__}")
            w, idx = got
            shape = tuple(torch.as_tensor(idx).shape)
            c.true(shape == (N, k), f"{what}: indices must have shape {(N, k)}, got {shape}")
            c.true(not torch.as_tensor(idx).is_floating_point(), f"{what}: indices must be integers")
            c.true(torch.as_tensor(w).dtype == scores.dtype,
                   f"{what}: weights must have the dtype of scores ({scores.dtype}), got {torch.as_tensor(w).dtype}")
            mistakes = [
                (_dense_gate(*_route(scores, bias, k, G, keep, scale, fill=0.0), E), "mask the experts of dropped "
                 "groups with -inf, not 0: scores + bias can be negative, and a masked 0 then beats them"),
                (_dense_gate(*_route(scores, bias, k, G, keep, scale, groups=False), E),
                 "pick only among the experts of the topk_group best groups (apply the group mask)"),
                (_dense_gate(*_route(scores, bias, k, G, keep, scale, select_bias=False), E),
                 "select the experts with scores + bias: the bias exists to change the choice"),
                (_dense_gate(*_route(scores, bias, k, G, keep, scale, weigh_bias=True), E),
                 "the weights must use the UNBIASED scores; the bias only selects (eq 16)"),
                (_dense_gate(*_route(scores, bias, k, G, keep, scale, normalise=False), E),
                 "normalise the chosen scores so they sum to 1 (eq 13), then multiply by scale"),
                (_dense_gate(*_route(scores, bias, k, G, keep, 1.0), E), "multiply the weights by `scale`"),
            ]
            c.close(_dense_gate(w, idx, E), _dense_gate(*_route(scores, bias, k, G, keep, scale), E),
                    what + " (as an (N, E) matrix of gate weights)", mistakes=mistakes)


# ----------------------------------------------------------------------------------- bias update
def check_update_bias(update_bias) -> None:
    """update_bias(bias, load, gamma) -> the new bias, b + gamma * sign(mean(load) - load), the mean
    taken over the experts (the last dimension) of each row: bias and load are (E,) or (L, E) (one
    row per MoE layer); load may be an integer tensor (token counts). Returns bias's shape and dtype."""
    with Checker("update_bias") as c:
        g = torch.Generator().manual_seed(7)
        cases = [
            ("counts with an expert exactly at the mean", torch.tensor([3, 7, 5, 5, 9, 1]), 0.001),
            ("float loads, 8 experts", torch.rand(8, generator=g) * 50, 0.01),
            ("two layers (L, E) with different means", torch.tensor([[4, 0, 8, 4], [10, 30, 20, 20]]), 0.1),
            ("no tokens at all (every load 0)", torch.zeros(5, dtype=torch.int64), 0.01),
            ("gamma 0", torch.tensor([1.0, 2.0, 6.0]), 0.0),
            ("three layers, int32 counts", torch.randint(0, 40, (3, 6), generator=g, dtype=torch.int32), 0.001),
        ]
        for what, load, gamma in cases:
            bias = torch.randn(load.shape, generator=g) * 0.01
            ld = load.double()
            mean = ld.mean(-1, keepdim=True)
            exp = (bias.double() + gamma * torch.sign(mean - ld)).float()
            got = c.call(update_bias, bias, load, gamma,
                         hint="take the mean over the experts with keepdim=True: mean(-1, keepdim=True)",
                         error_hints={"could not infer output dtype": "load holds integer token counts: convert it "
                                                                      "to a float dtype before taking its mean"})
            mistakes = [
                ((bias.double() - gamma * torch.sign(mean - ld)).float(),
                 "the sign is reversed: an OVERloaded expert's bias must go DOWN"),
                ((bias.double() + gamma * (mean - ld)).float(),
                 "move by gamma * sign(...), a fixed step, not in proportion to the imbalance"),
                ((gamma * torch.sign(mean - ld)).float(), "add the step to the current bias"),
                ((bias.double() + gamma * torch.sign(ld.median(-1, keepdim=True).values - ld)).float(),
                 "compare with the MEAN load"),
            ]
            if load.dim() == 2:
                mistakes.append(((bias.double() + gamma * torch.sign(ld.mean() - ld)).float(),
                                 "each layer (row) has its own mean load: mean over the last dimension, not over "
                                 "everything"))
            if (ld == mean).any():
                mistakes.append(((bias.double() + gamma * torch.where(ld >= mean, -1.0, 1.0)).float(),
                                 "an expert exactly at the mean load keeps its bias: sign(0) = 0"))
            c.close(got, exp, f"{what}, gamma={gamma}", atol=1e-7, rtol=1e-6, dtype=torch.float32, mistakes=mistakes)


# ----------------------------------------------------------------------------------- balance loss
def _balance(scores, indices, alpha, batchwise=False, norm_s=True, f_scale=True, weights=None):
    s = scores.double()
    B, T, E = s.shape
    K = indices.size(-1)
    chosen = torch.zeros(B, T, E, dtype=torch.float64).scatter(2, indices.long(), 1.0)
    if weights is not None:
        chosen = torch.zeros(B, T, E, dtype=torch.float64).scatter(2, indices.long(), weights.double())
    sp = s / s.sum(-1, keepdim=True) if norm_s else s
    if batchwise:
        f = chosen.sum((0, 1)) * (E / (K * B * T) if f_scale else 1.0)
        return alpha * (f * sp.mean((0, 1))).sum()
    f = chosen.sum(1) * (E / (K * T) if f_scale else 1.0)                 # (B, E) eq 18
    return alpha * (f * sp.mean(1)).sum(-1).mean()                        # eqs 17, 19, 20


def check_sequence_balance_loss(sequence_balance_loss) -> None:
    """sequence_balance_loss(scores, indices, alpha) -> one number: V3's eqs 17-20 for each sequence,
    averaged over the B sequences. scores (B, T, E) the router's (sigmoid) scores s_i,t; indices
    (B, T, K) the chosen experts. f_i = E / (K T) * #{t: i chosen at t}; P_i = mean_t of s_i,t /
    sum_j s_j,t; L = alpha * sum_i f_i P_i."""
    with Checker("sequence_balance_loss") as c:
        g = torch.Generator().manual_seed(8)
        for n, (B, T, E, K, alpha) in enumerate([(2, 6, 8, 2, 1e-4), (1, 1, 4, 1, 0.01), (3, 5, 16, 4, 0.1),
                                                 (2, 4, 6, 3, 1.0)]):
            logits = torch.randn(B, T, E, generator=g) * 2
            if n == 3:                                 # two sequences that collapse on different experts
                logits[0, :, :3] += 6
                logits[1, :, 3:] += 6
            scores = logits.sigmoid()
            indices = (scores + torch.rand(B, T, E, generator=g) * 0.1).topk(K, dim=-1).indices
            if n == 2:                                 # non-contiguous scores (every other element of a buffer)
                scores = torch.stack([scores, scores], -1)[..., 0]
            exp = _balance(scores, indices, alpha)
            got = c.call(sequence_balance_loss, scores, indices, alpha, forbidden=FORBIDDEN["sequence_balance_loss"])
            c.number(got, exp.item(), f"(B, T, E, K) = {(B, T, E, K)}, alpha={alpha}"
                     + (": two sequences collapsed onto different experts, balanced over the batch" if n == 3 else ""),
                     rtol=1e-5, atol=1e-12, mistakes=[
                         (_balance(scores, indices, alpha, batchwise=True).item(), "the loss is SEQUENCE-wise: f and "
                          "P of each sequence, their product summed, then the mean over sequences (eqs 17-20) -- "
                          "not f and P of the whole batch"),
                         (_balance(scores, indices, alpha, norm_s=False).item(), "normalise each token's scores "
                          "first, s_i,t / sum_j s_j,t (eq 19)"),
                         (_balance(scores, indices, alpha, f_scale=False).item(), "f_i counts the token-slots of "
                          "expert i times E / (K T) (eq 18): 1 when every expert gets its fair share"),
                         (_balance(scores, indices, 1.0).item(), "multiply by alpha"),
                         (B * exp.item(), "average the B sequences' losses (the mean), don't add them up"),
                     ])


# ----------------------------------------------------------------------------------- dispatch
def _experts_out(x, w, idx, gate_up, down):
    """Reference: sum over slots of w * expert(x), in float64, with a loop (fine for a reference)."""
    y = torch.zeros(x.shape, dtype=torch.float64)
    for e in range(gate_up.size(0)):
        tok, slot = torch.where(idx == e)
        if tok.numel():
            gu = x[tok].double() @ gate_up[e].double().T
            gate, up = gu.chunk(2, dim=-1)
            out = (F.silu(gate) * up) @ down[e].double().T
            y.index_add_(0, tok, out * w[tok, slot, None].double())
    return y


def _balanced_indices(N, E, K, g):
    """Every expert gets exactly N K / E token-slots, no token picks an expert twice."""
    rows = torch.stack([torch.randperm(E, generator=g) for _ in range(N)])      # (N, E)
    idx = rows[:, :K]
    for _ in range(50):                                                            # even out by swaps
        counts = torch.bincount(idx.flatten(), minlength=E)
        if counts.max() == counts.min():
            break
        hi, lo = int(counts.argmax()), int(counts.argmin())
        t = int(torch.where((idx == hi).any(1) & ~(idx == lo).any(1))[0][0])
        idx[t][idx[t] == hi] = lo
    return idx


def check_moe_dispatch(moe_dispatch) -> None:
    """moe_dispatch(x, weights, indices, gate_up, down) -> (N, d): for each token, the sum over its K
    slots of weights[t, k] * expert_e(x[t]) with e = indices[t, k]; expert e computes
    down[e] @ (silu(g) * u) with [g; u] = gate_up[e] @ x (g the first I rows). x (N, d); weights,
    indices (N, K); gate_up (E, 2I, d); down (E, d, I). With a fixed number of tensor operations
    whatever E and N (no Python loop over experts or tokens), and no tensor much larger than the routed
    work itself (N K rows of width 2I)."""
    with Checker("moe_dispatch") as c:
        g = torch.Generator().manual_seed(9)
        ops = {}
        for n, (N, E, K, d, inter, dtype) in enumerate([
                (10, 4, 2, 8, 6, torch.float32), (23, 8, 3, 16, 12, torch.float32), (5, 6, 1, 8, 4, torch.float64),
                (1, 4, 2, 8, 6, torch.float32), (64, 4, 2, 8, 6, torch.float32), (64, 16, 2, 8, 6, torch.float32),
                (32, 16, 2, 8, 6, torch.float32)]):
            gate_up = torch.randn(E, 2 * inter, d, generator=g, dtype=dtype) * 0.3
            down = torch.randn(E, d, inter, generator=g, dtype=dtype) * 0.3
            x = torch.randn(N, d, generator=g, dtype=dtype)
            if n >= 4:
                idx = _balanced_indices(N, E, K, g)
            else:
                idx = torch.rand(N, E, generator=g).topk(K, dim=-1).indices
            w = torch.rand(N, K, generator=g, dtype=dtype)
            if n == 1:                                 # a non-contiguous x and weight
                x = torch.randn(d, N, generator=g).T
                gate_up = torch.randn(E, d, 2 * inter, generator=g).transpose(1, 2) * 0.3
            watch = Watch()
            got = c.call(moe_dispatch, x, w, idx, gate_up, down, watch=watch, forbidden=FORBIDDEN["moe_dispatch"],
                         hint="gate_up[e] is (2I, d): x @ gate_up[e].T is (n, 2I); down[e] is (d, I)")
            exp = _experts_out(x, w, idx, gate_up, down).to(dtype)
            what = f"N={N}, E={E}, K={K}, d={d}, I={inter}, {str(dtype)[6:]}" + (" (non-contiguous)" if n == 1 else "")
            c.close(got, exp, what, dtype=dtype, mistakes=[
                (_experts_out(x, torch.ones_like(w), idx, gate_up, down),
                 "multiply each expert's output by the token's gate weight for that slot"),
                (_experts_out(x[:, :], w[:, :1], idx[:, :1], gate_up, down), "sum over ALL K slots of each token"),
                (_experts_out(x, w.flip(-1), idx, gate_up, down),
                 "weights[t, k] belongs to expert indices[t, k]: keep slots and weights aligned"),
                (_experts_out(x, w, idx, torch.cat(gate_up.chunk(2, dim=1)[::-1], 1), down),
                 "g is the FIRST I rows of gate_up[e] (silu(g) * u), u the last I"),
            ])
            if n >= 4:
                ops[(N, E)] = watch.ops
                routed = N * K * max(2 * inter, d) * x.element_size()
                if watch.observed and watch.peak_bytes > 4 * routed:
                    raise CheckFailed(f"{what}: your code made a tensor of {watch.peak_bytes:,} bytes, over 4x the "
                                      f"routed work ({routed:,} bytes = N K rows of width max(2I, d)): compute only "
                                      "the K chosen experts of each token, without copying an expert's weights per "
                                      "token or running every expert on every token")
        if ops[(64, 4)]:                               # observed here (not through a remote call)
            c.true(ops[(64, 16)] <= ops[(64, 4)] + 4, "your code runs more tensor operations with 16 experts "
                   f"({ops[(64, 16)]}) than with 4 ({ops[(64, 4)]}): a Python loop over experts? Sort the "
                   "(token, expert) pairs by expert and run all experts in a few batched operations")
            c.true(ops[(64, 16)] <= ops[(32, 16)] + 4, "your code runs more tensor operations with 64 tokens "
                   f"({ops[(64, 16)]}) than with 32 ({ops[(32, 16)]}): a Python loop over tokens?")


# ----------------------------------------------------------------------------------- think
def check_balance_numbers(answer) -> None:
    """answer = {"balanced": L_Bal / alpha for a perfectly balanced router, "collapsed": L_Bal / alpha
    when every token of the sequence picks the same K experts and puts equal normalised score on them
    (none elsewhere), "maxvio_collapsed": the MaxVio of that collapse, "large_loss": "sequence" |
    "batch" | "both" | "neither" (two sequences, each collapsed onto different experts, the batch as a
    whole balanced: which balance loss is large?)} for V3: 256 routed experts, top-8."""
    with Checker("balance_numbers") as c:
        c.answer(answer)
        c.keys(answer, ["balanced", "collapsed", "maxvio_collapsed", "large_loss"], "the answer")
        E, K = 256, 8
        c.number(answer["balanced"], 1.0, "L_Bal / alpha, balanced", rtol=1e-6, mistakes=[
            (1 / E, "f_i = 1 for every expert when balanced (the E / (K T) factor), P_i = 1/E: the sum is 1"),
            (K / E, "f_i = 1 for every expert when balanced (the E / (K T) factor), P_i = 1/E: the sum is 1")])
        c.number(answer["collapsed"], E / K, "L_Bal / alpha, collapsed", rtol=1e-6, mistakes=[
            (E, "P_i = 1/K on each of the K chosen experts (the normalised scores sum to 1), f_i = E/K there"),
            (E / K - 1, "that is MaxVio; the loss is sum_i f_i P_i = K * (E/K) * (1/K)")])
        c.number(answer["maxvio_collapsed"], E / K - 1, "MaxVio of the collapse", rtol=1e-6, mistakes=[
            (E / K, "MaxVio = max load / mean load - 1: (E/K) - 1"),
            (E - 1, "K experts share the tokens: max load N, mean load N K / E")])
        c.choice(answer["large_loss"], "sequence", ["sequence", "batch", "both", "neither"],
                 "which balance loss is large", mistakes={
                     "batch": "over the whole batch every expert gets its share, so a batch-wise loss stays at its "
                              "minimum; within each sequence the routing collapsed",
                     "both": "over the whole batch every expert gets its share: a batch-wise loss stays small",
                     "neither": "within each sequence the routing collapsed: f_i P_i concentrates on few experts"})


# ----------------------------------------------------------------------------------- experiment
def check_gamma_experiment(results) -> None:
    """results = {gamma: {"max_vio": MaxVio averaged over the last 30 steps, "val_loss": final
    validation loss}} for gamma = 0, 0.001, 0.01, 0.1: the chapter's small MoE (8 routed experts,
    top-2, one MoE layer) trained for the same number of steps with aux-loss-free balancing at bias
    update speed gamma."""
    with Checker("gamma_experiment") as c:
        c.answer(results)
        try:
            res = {float(k): v for k, v in results.items()}
        except (TypeError, ValueError, AttributeError):
            raise CheckFailed("results: expected {gamma: {'max_vio': ..., 'val_loss': ...}}") from None
        c.keys(res, GAMMAS, "results (by gamma)")
        for gm in GAMMAS:
            c.keys(res[gm], ["max_vio", "val_loss"], f"results[{gm}]")
            c.in_range(res[gm]["max_vio"], 0.0, 3.0, f"MaxVio at gamma={gm}",
                       why="with 8 experts and top-2, MaxVio = max load / mean load - 1 is at most 8/2 - 1 = 3")
            c.in_range(res[gm]["val_loss"], 1.2, math.log(82) - 0.3, f"val loss at gamma={gm}",
                       why="below ln(82) once the model has trained a little")
