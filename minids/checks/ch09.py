"""Checks for chapter 09 (training systems): 1x128-tile FP8 quantization, the idle time of a pipeline
schedule from its action lists, the InfiniBand bytes of a routing, the per-GPU memory of a layout;
think questions (Table 2's bubbles, where a 14-bit accumulator stalls, which technique does not
save bytes); the tile-size experiment."""

from __future__ import annotations

import math

import torch

from .. import fp8 as F8
from .. import parallel as PAR
from .. import pipeline as PP
from .checking import Checker, CheckFailed

FORBIDDEN = {
    "quantize_tiles": ["minids.fp8.quantize_tilewise", "minids.fp8.fake_quant_tiles", "minids.fp8.dequantize_tilewise"],
    "pipeline_idle": ["minids.pipeline.simulate"],
    "ib_bytes": ["minids.parallel.alltoall_bytes", "minids.parallel.nodes_per_token", "minids.parallel.gpus_per_token",
                 "minids.parallel.v3_ib_bytes_per_token"],
    "optimizer_memory": ["minids.parallel.memory_per_gpu"],
}
POINTS = {"quantize_tiles": 2, "pipeline_idle": 3, "ib_bytes": 2, "optimizer_memory": 2, "bubbles": 1,
          "accumulator": 1, "no_byte_saver": 1, "tile_experiment": 2}
NOT_MUTATED = {"tile_experiment": "an experiment: its check is tested on recorded and made-up measurements instead"}
# Reviewed equivalent mutants of the solutions (python -m minids mutation -v 09 lists the survivors).
_DIVISIBLE = "valid layouts have gpus divisible by pp * ep: / and // give the same number of GPUs"
EQUIVALENT_MUTANTS = {
    "quantize_tiles": {"`448.0` -> `896.0` #2": "x / scale never exceeds 448 (the scale maps max|x| to 448): the clamp "
                                               "is a no-op either way",
                       "`448.0` -> `896.0` #3": "as #2, for the upper bound"},
    "pipeline_idle": {"`False` -> `True`": "only the deadlock guard reads `moved`; the task's orders never deadlock",
                      "delete `if not moved: raise ValueError('deadlock: no rank can run its next ...`":
                          "the guard only fires on a deadlock, which valid orders never have"},
    "ib_bytes": {"`torch.as_tensor(indices).long()` -> `torch.as_tensor(indices)`": "// works on any integer dtype",
                 "`hidden * 1` -> `hidden / 1`": "the same number as a float (a whole number is accepted as a float)",
                 "`hidden * 1` -> `hidden`": "multiplying by 1"},
    "optimizer_memory": {"`copies * gpus // pp` -> `copies * gpus / pp`": _DIVISIBLE,
                         "`copies * gpus // (pp * ep)` -> `copies * gpus / (pp * ep)`": _DIVISIBLE},
    "bubbles": {"`2 * 2` -> `2 + 2`": "2 * 2 == 2 + 2", "`8 // 2` -> `8 / 2`": "4 == 4.0",
                "`8` -> `9`": "9 // 2 - 1 == 8 // 2 - 1"},
}


# ------------------------------------------------------------------------------- 1. FP8 tiles
def _tiles_ref(x: torch.Tensor, tile: int, mode: str = "tile"):
    """Reference 1 x tile quantization (and wrong variants): returns (q as float64 values, scales)."""
    xf = x.double()
    K = xf.size(-1)
    pad = (-K) % tile
    groups = torch.nn.functional.pad(xf, (0, pad)).reshape(*xf.shape[:-1], -1, tile)
    if mode == "tile":
        amax = groups.abs().amax(-1)
    elif mode == "tensor":
        amax = xf.abs().amax().expand(groups.shape[:-1])
    elif mode == "max":                                     # max instead of max |x|
        amax = groups.amax(-1).clamp_min(1e-30)
    elif mode == "row":                                     # one scale per token
        amax = xf.abs().amax(-1, keepdim=True).expand(groups.shape[:-1])
    elif mode == "drop":                                    # the last, shorter tile forgotten
        amax = groups.abs().amax(-1)
        if pad:
            amax = amax.clone()
            amax[..., -1] = 0
    else:
        raise ValueError(mode)
    scales = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax)).float()
    q = (groups / scales.double()[..., None]).clamp(-448, 448).float().to(torch.float8_e4m3fn).double()
    return q.reshape(*xf.shape[:-1], -1)[..., :K], scales


def check_quantize_tiles(quantize_tiles) -> None:
    """quantize_tiles(x, tile) -> (q, scales): x (..., K) any float dtype; scales (..., ceil(K/tile))
    float32, one per 1 x tile group along the last dim, scale = max|group| / 448 (an all-zero group:
    1.0); q (..., K) torch.float8_e4m3fn = x / scale of its group, rounded to E4M3."""
    with Checker("quantize_tiles") as c:
        g = torch.Generator().manual_seed(9)
        cases = [((1, 1, 128), 128, torch.float32, "batch 1, T = 1"),
                 ((2, 3, 300), 128, torch.float32, "K = 300: a last tile of 44"),
                 ((4, 256), 64, torch.float32, "tile 64"),
                 ((3, 96), 32, torch.float64, "float64 input"),
                 ((2, 5, 128), 128, torch.bfloat16, "bfloat16 input"),
                 ((64, 40), 16, torch.float32, "a non-contiguous (transposed) input"),
                 ((2, 256), 128, torch.float32, "a tile of zeros")]
        for shape, tile, dtype, label in cases:
            x = (torch.randn(*shape, generator=g) * torch.logspace(-3, 3, shape[-1])).to(dtype)
            if "transposed" in label:
                x = torch.randn(shape[1], shape[0], generator=g).t()
            if "zeros" in label:
                x[0, :128] = 0
            if label.startswith("K = 300"):
                x[0, 0, 10] = -5e4                               # a negative outlier
            what = f"x {tuple(x.shape)} {str(x.dtype)[6:]}, tile {tile} ({label})"
            got = c.call(quantize_tiles, x, tile, forbidden=FORBIDDEN["quantize_tiles"],
                         hint="group the last dimension: x.reshape(..., K // tile, tile) (pad K up to a "
                              "multiple of tile first)")
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                raise CheckFailed(f"{what}: return (q, scales), got {type(got).__name__}")
            q, scales = got
            _, s_ref = _tiles_ref(x, tile)
            mistakes = [(_tiles_ref(x, tile, m)[1], why) for m, why in [
                ("tensor", "one scale per 1 x tile group, not one for the whole tensor"),
                ("row", "one scale per group of `tile` channels, not one per token (row)"),
                ("max", "use the largest MAGNITUDE, max |x|: a negative outlier must set the scale too"),
                ("drop", "the last group may be shorter than `tile`: it still needs its own scale")]]
            mistakes += [(1.0 / s_ref.double(), "scale = max|x| / 448 (what one unit of q is worth), not 448 / max|x|"),
                         (s_ref.double() * 448.0, "divide the largest magnitude by 448 (E4M3's largest value)")]
            c.close(scales, s_ref, what + ": scales", rtol=1e-6, atol=0, dtype=torch.float32, mistakes=mistakes)
            if not torch.is_tensor(q) or q.dtype != torch.float8_e4m3fn:
                raise CheckFailed(f"{what}: q must be a tensor of dtype torch.float8_e4m3fn, got "
                                  f"{getattr(q, 'dtype', type(q).__name__)}")
            # q against the learner's own scales (they passed above), within one E4M3 step: a float32 or
            # float64 division may round a value that sits on a tie the other way
            K = x.size(-1)
            s_full = torch.as_tensor(scales).double().repeat_interleave(tile, -1)[..., :K]
            q_ref = (x.double() / s_full).clamp(-448, 448).float().to(torch.float8_e4m3fn).double()
            c.close(q.double(), q_ref, what + ": q (as numbers)", atol=2 ** -9, rtol=0.13, mistakes=[
                (x.double().clamp(-448, 448).float().to(torch.float8_e4m3fn).double(),
                 "divide x by its group's scale before the cast to float8_e4m3fn"),
                ((x.double() * s_full).clamp(-448, 448).float().to(torch.float8_e4m3fn).double(),
                 "DIVIDE by the scale (q = x / scale), so that max|q| = 448")])


# ------------------------------------------------------------------------ 2. pipeline idle
def _idle_ref(orders, F, B):
    tl = PP.simulate(orders, {"F": F, "B": B})
    return tl.makespan, [tl.bubble[r] for r in sorted(orders)]


def _gpipe(pp, m):
    return {r: [f"{r}F{j}" for j in range(m)] + [f"{r}B{j}" for j in range(m)] for r in range(pp)}


def _lazy(pp, m):
    """GPipe, except that rank 0 runs its backwards last micro-batch first (a valid, worse order)."""
    o = _gpipe(pp, m)
    o[0] = [f"0F{j}" for j in range(m)] + [f"0B{j}" for j in reversed(range(m))]
    return o


def _start_delay(orders, F, B):
    tl = PP.simulate(orders, {"F": F, "B": B})
    first = {r: min(s for rr, _, s, _ in tl.events if rr == r) for r in orders}
    return tl.makespan, [first[r] for r in sorted(orders)]


def check_pipeline_idle(pipeline_idle) -> None:
    """pipeline_idle(orders, F, B) -> (makespan, idle): orders = {rank: ["0F0", "0B0", ...]} with rank r
    running stage r (ops "<stage>F<mb>" forward, "<stage>B<mb>" full backward); a forward needs the
    previous stage's forward of that micro-batch, a backward the next stage's backward (the last
    stage: its own forward); each rank runs its list in order, each op as soon as it can. F, B:
    durations. idle[r] = makespan - the time rank r computes (a list, rank order)."""
    with Checker("pipeline_idle") as c:
        cases = [("1F1B", PP.order_1f1b(4, 8), 1, 2), ("1F1B", PP.order_1f1b(3, 5), 2.5, 4),
                 ("GPipe", _gpipe(2, 3), 1, 1), ("one stage", PP.order_1f1b(1, 3), 1, 2),
                 ("one micro-batch", PP.order_1f1b(4, 1), 1, 3),
                 ("GPipe, rank 0 backwards reversed", _lazy(4, 6), 1, 2), ("GPipe", _gpipe(3, 4), 2, 3)]
        for name, orders, F, B in cases:
            orders = {r: [repr(o) if not isinstance(o, str) else o for o in ops] for r, ops in orders.items()}
            pp_, m = len(orders), len(orders[0]) // 2
            what = f"{name}, {pp_} ranks, {m} micro-batches, F={F}, B={B}"
            got = c.call(pipeline_idle, orders, F, B, forbidden=FORBIDDEN["pipeline_idle"])
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                raise CheckFailed(f"{what}: return (makespan, idle), got {type(got).__name__}")
            makespan, idle = got
            exp_T, exp_idle = _idle_ref(orders, F, B)
            closed = (pp_ - 1) * (F + B)
            c.number(makespan, exp_T, what + ": makespan", rtol=1e-9, atol=1e-9, mistakes=[
                (m * (F + B), "a rank waits for its inputs: a forward for the previous stage, a backward for the "
                              "next stage (the time is not just the work of one rank)"),
                (m * (F + B) + closed, "simulate the order you are given: the formula (PP - 1)(F + B) holds for "
                                       "1F1B and GPipe, not for every order")])
            c.close(idle, exp_idle, what + ": idle per rank", rtol=1e-9, atol=1e-9, mistakes=[
                ([closed] * pp_, "simulate the order you are given: (PP - 1)(F + B) is 1F1B's idle time, not that "
                                 "of every order"),
                (_start_delay(orders, F, B)[1], "count ALL the time a rank waits (until the last rank finishes), "
                                                "not only before its first op")])


# ------------------------------------------------------------------------ 3. IB bytes
def _ib_ref(indices, per_node, hidden, d_bytes=1, c_bytes=2, scales=True, per="node", drop_combine=False):
    idx = torch.as_tensor(indices).long()
    if per == "node":
        n = PAR.nodes_per_token(idx, per_node).sum().item()
    elif per == "expert":
        n = idx.numel()
    elif per == "batch":                                    # distinct nodes over the whole batch
        n = torch.unique(idx // per_node).numel()
    s = math.ceil(hidden / 128) * 4 if scales else 0
    return n * (hidden * d_bytes + s + (0 if drop_combine else hidden * c_bytes))


def check_ib_bytes(ib_bytes) -> None:
    """ib_bytes(indices, experts_per_node, hidden) -> the InfiniBand bytes of one MoE layer's forward for
    a batch of routing decisions (indices: (N, K) expert ids; node n holds experts n*experts_per_node ...):
    each token crosses IB once per distinct node of its experts, out in FP8 (hidden bytes, plus one 4-byte
    FP32 scale per 128 values, rounded up) and back in BF16 (2 * hidden bytes). A whole number."""
    import numpy as np

    with Checker("ib_bytes") as c:
        g = torch.Generator().manual_seed(11)
        cases = [(torch.randint(0, 256, (64, 8), generator=g), 32, 7168, "V3 shape, unlimited routing"),
                 (torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7]]), 32, 7168, "one token, 8 experts on one node"),
                 (torch.tensor([[0, 32, 64, 96, 128, 160, 192, 224]]), 32, 7168, "one token, 8 nodes"),
                 (torch.randint(0, 16, (10, 2), generator=g).int(), 4, 256, "int32 ids, hidden 256"),
                 (torch.randint(0, 8, (7, 3), generator=g).numpy(), 1, 129, "NumPy ids, one expert per node, "
                                                                                "hidden 129 (2 scales)"),
                 (torch.randint(0, 64, (4, 16), generator=g).t(), 16, 384, "non-contiguous (16, 4)")]
        for idx, per_node, hidden, label in cases:
            N, K = tuple(idx.shape)
            what = f"{label}: N={N}, K={K}, {per_node} experts/node, hidden {hidden}"
            got = c.call(ib_bytes, idx if not isinstance(idx, np.ndarray) else idx.copy(), per_node, hidden,
                         forbidden=FORBIDDEN["ib_bytes"])
            exp = _ib_ref(idx, per_node, hidden)
            c.number(got, exp, what, integer=True, mistakes=[
                (_ib_ref(idx, per_node, hidden, per="expert"), "IB carries one copy per NODE, not per expert: "
                                                                "NVLink fans it out inside the node"),
                (_ib_ref(idx, per_node, hidden, per="batch"), "count the distinct nodes of EACH token, not of the "
                                                               "whole batch"),
                (_ib_ref(idx, per_node, hidden, d_bytes=2, scales=False), "dispatch is FP8: 1 byte per value "
                                                                          "(plus the scales)"),
                (_ib_ref(idx, per_node, hidden, drop_combine=True), "the combine comes back over IB too, in BF16"),
                (_ib_ref(idx, per_node, hidden, scales=False), "FP8 values travel with their scales: 4 bytes per "
                                                               "128 values"),
                (_ib_ref(idx, per_node, hidden, c_bytes=1), "the combine stays in BF16 (2 bytes), only the "
                                                            "dispatch is FP8")])


# ------------------------------------------------------------------------ 4. optimizer memory
def _mem_ref(routed, other, pp, ep, gpus, dualpipe, zero=True, ep_split=True, holders_dp_for_experts=False,
             adam_bytes=2, grad_bytes=4):
    copies = 2 if dualpipe else 1
    dp = gpus // pp
    expert_dp = dp // ep
    held_other = copies * other / pp
    held_exp = copies * routed / (pp * (ep if ep_split else 1))
    opt_bytes = 4 + 2 * adam_bytes
    h_other = copies * dp if zero else 1
    h_exp = copies * (dp if holders_dp_for_experts else expert_dp) if zero else 1
    return {"weights": (held_other + held_exp) * 2 / 1e9,
            "gradients": (held_other + held_exp) * grad_bytes / 1e9,
            "optimizer": (held_other / h_other + held_exp / h_exp) * opt_bytes / 1e9}


def check_optimizer_memory(optimizer_memory) -> None:
    """optimizer_memory(routed, other, pp, ep, gpus, dualpipe) -> {"weights", "gradients", "optimizer"} in
    GB (1e9 bytes) per GPU, V3's recipe: every GPU holds 1/pp of the `other` parameters and 1/(pp*ep)
    of the `routed` experts (twice that with DualPipe: two stages per GPU); weights BF16 (2 bytes),
    gradients FP32 (4); FP32 master + BF16 AdamW moments (8 bytes) sharded by ZeRO-1 over all the GPUs
    holding the same parameters: gpus/pp of them for `other`, gpus/(pp*ep) for experts (each doubled by
    DualPipe)."""
    with Checker("optimizer_memory") as c:
        for routed, other, pp, ep, gpus, dual in [(665.18e9, 17.45e9, 16, 64, 2048, True),
                                                   (665.18e9, 17.45e9, 16, 64, 2048, False),
                                                   (665.18e9, 17.45e9, 8, 32, 1024, True),
                                                   (1.2e9, 3.0e8, 4, 8, 64, False),
                                                   (6e9, 1e9, 2, 2, 8, True),
                                                   (3001.0, 1003.0, 4, 2, 16, False)]:     # fractional shares
            what = f"routed {routed / 1e9:g}B, other {other / 1e9:g}B, PP {pp}, EP {ep}, {gpus} GPUs, DualPipe {dual}"
            got = c.call(optimizer_memory, routed, other, pp, ep, gpus, dual, forbidden=FORBIDDEN["optimizer_memory"])
            c.keys(got, ["weights", "gradients", "optimizer"], what)
            exp = _mem_ref(routed, other, pp, ep, gpus, dual)
            wrong = {
                "no ZeRO": _mem_ref(routed, other, pp, ep, gpus, dual, zero=False),
                "no EP": _mem_ref(routed, other, pp, ep, gpus, dual, ep_split=False),
                "dp for experts": _mem_ref(routed, other, pp, ep, gpus, dual, holders_dp_for_experts=True),
                "fp32 adam": _mem_ref(routed, other, pp, ep, gpus, dual, adam_bytes=4),
                "bf16 grads": _mem_ref(routed, other, pp, ep, gpus, dual, grad_bytes=2),
                "no dual": _mem_ref(routed, other, pp, ep, gpus, False),
            }
            for key in ("weights", "gradients", "optimizer"):
                c.number(got[key], exp[key], f"{what}: {key}", rtol=1e-6, mistakes=[
                    (wrong["no EP"][key], "each GPU holds only 1/ep of a stage's routed experts"),
                    (wrong["no dual"][key], "DualPipe puts two stages on every GPU: twice the parameters held")
                    if key != "optimizer" else (-1, ""),
                    (wrong["bf16 grads"][key], "V3 keeps the gradients in FP32 (4 bytes)") if key == "gradients"
                    else (-1, ""),
                    (wrong["no ZeRO"][key], "ZeRO-1 shards the master weights and moments over the GPUs holding "
                                            "the same parameters"),
                    (wrong["dp for experts"][key], "a routed expert is held by gpus/(pp*ep) GPUs, not gpus/pp: "
                                                   "shard its optimizer state over those"),
                    (wrong["fp32 adam"][key], "V3 keeps AdamW's moments in BF16: 4 + 2 + 2 = 8 bytes")])


# ------------------------------------------------------------------------ 5-7. think
def check_bubbles(answer) -> None:
    """answer = {"1F1B": t, "ZB1P": t, "DualPipe": t}: idle time per rank for PP = 8 pipeline ranks with
    F = 2, B = 4 (full backward), W = 2 and F&B = F + B (Table 2 of the V3 report)."""
    with Checker("bubbles") as c:
        c.answer(answer)
        c.keys(answer, ["1F1B", "ZB1P", "DualPipe"], "the answer")
        c.number(answer["1F1B"], 42, "1F1B: (PP - 1)(F + B)", mistakes=[
            (48, "the first rank does not wait: PP - 1 stages, not PP"), (14, "B is the FULL backward: F + B = 6")])
        c.number(answer["ZB1P"], 14, "ZB1P: (PP - 1)(F + B - 2W)", mistakes=[
            (28, "ZB1P moves TWO weight-gradient chunks per stage into the gaps: F + B - 2W"),
            (16, "PP - 1 stages, not PP")])
        c.number(answer["DualPipe"], 12, "DualPipe: (PP/2 - 1)(F&B + B - 3W)", mistakes=[
            (28, "DualPipe's factor is PP/2 - 1 (micro-batches enter from both ends), not PP - 1"),
            (16, "PP/2 - 1 = 3, not PP/2 = 4"), (9, "F&B = F + B = 6 here, not B")])


def check_accumulator(answer) -> None:
    """answer: the value at which a running sum of 1 + 1 + 1 + ... stops growing when the sum keeps
    only its top 14 bits and chops the rest (truncation) after every addition."""
    with Checker("accumulator") as c:
        c.answer(answer)
        c.number(answer, 2 ** 14, "the sum where adding 1 no longer changes it", integer=True, mistakes=[
            (2 ** 13, "14 bits: the top bit and 13 more; the last kept bit of 2^13 is still 1"),
            (2 ** 15, "at 2^14 the last kept bit is worth 2: adding 1 is chopped already"),
            (2 ** 14 - 1, "it can still reach 2^14 (16383 + 1 = 16384 fits in 14 bits)")])


def check_no_byte_saver(answer) -> None:
    """answer: the letter of the technique that does NOT reduce the InfiniBand bytes of the all-to-all:
    a) FP8 instead of BF16 dispatch, b) node-limited routing (at most 4 nodes), c) DualPipe,
    d) summing a node's expert outputs before they cross IB."""
    with Checker("no_byte_saver") as c:
        c.answer(answer)
        c.choice(answer, "c", ["a", "b", "c", "d"], "which one does not save bytes", mistakes={
            "a": "FP8 values are half the bytes of BF16 (the scales add ~3%)",
            "b": "at most 4 copies per token cross IB instead of up to 8",
            "d": "one BF16 vector per node comes back instead of one per expert"})


# ------------------------------------------------------------------------ 8. experiment
TILE_SIZES = (16, 32, 64, 128, 256, 1024)


def tile_experiment_reference(magnitude: float = 1e5) -> dict:
    """The measurement the experiment asks for, with minids.fp8 (the check's reference)."""
    x = F8.outlier_activations(magnitude=magnitude)
    rows = torch.arange(0, x.size(0), 8)
    sub = x[rows]
    keep = sub.abs() < magnitude / 2                                  # the ordinary values of those tokens
    out = {t: F8.relative_error(F8.fake_quant_tiles(sub, t)[keep], sub[keep]) for t in TILE_SIZES}
    out["tensor"] = F8.relative_error(F8.fake_quant_tensor(x)[rows][keep], sub[keep])
    return out


def check_tile_experiment(results) -> None:
    """results = {"errors": {tile: relative error, ..., "tensor": ...}, "scale_bytes_per_value": {tile: ...}}
    for tile in 16, 32, 64, 128, 256, 1024: the relative error of the ORDINARY values of the tokens that
    carry an outlier (fp8.outlier_activations(magnitude=1e5)), quantized in 1 x tile groups, and per tensor;
    and the bytes of FP32 scales per value stored."""
    with Checker("tile_experiment") as c:
        c.answer(results)
        c.keys(results, ["errors", "scale_bytes_per_value"], "the results")
        errs = {(k if k == "tensor" else int(k)): v for k, v in results["errors"].items()}
        over = {int(k): v for k, v in results["scale_bytes_per_value"].items()}
        c.keys(errs, [*TILE_SIZES, "tensor"], "errors")
        c.keys(over, list(TILE_SIZES), "scale_bytes_per_value")
        ref = tile_experiment_reference()
        for t in TILE_SIZES:
            c.in_range(errs[t], 0.5 * ref[t], 1.5 * ref[t], f"error with 1 x {t} tiles",
                       why=f"quantizing the ordinary values of the outlier tokens gives about {ref[t]:.3f}")
            c.number(over[t], 4 / t, f"scale bytes per value, tile {t}", mistakes=[
                (1 / t, "each scale is an FP32 number: 4 bytes"), (4 * t, "one scale per t values: 4 / t")])
        c.in_range(errs["tensor"], 0.5 * ref["tensor"], 1.5 * ref["tensor"], "error per tensor")
        c.true(errs[16] < errs[1024], "the error must grow with the tile size (16 vs 1024): check your measurement")
