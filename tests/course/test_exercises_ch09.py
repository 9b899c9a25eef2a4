"""Every chapter-09 check passes on the solution and on valid alternatives, fails on the stub,
rejects plausible mistakes and names the ones it lists."""

import math
import types

import numpy as np
import torch
from nbutil import Wrong, check_contract, notebook_namespace

from minids.checks import (
    check_accumulator,
    check_bubbles,
    check_ib_bytes,
    check_no_byte_saver,
    check_optimizer_memory,
    check_pipeline_idle,
    check_quantize_tiles,
    check_tile_experiment,
)
from minids.pipeline import simulate

# a copy of the simulator the check does not forbid (it forbids the package's function by swapping its code)
_simulate = types.FunctionType(simulate.__code__, simulate.__globals__, "simulate_copy", simulate.__defaults__)

SOL = notebook_namespace("solutions/09_training_systems.ipynb")
STUB = notebook_namespace("solutions/09_training_systems.ipynb", stubbed=True)

# measured by the solution's experiment cell (2026-11-29, this machine; quantization is deterministic)
MEASURED = {"errors": {16: 0.0389, 32: 0.0514, 64: 0.0615, 128: 0.0703, 256: 0.0962, 1024: 0.1360, "tensor": 0.1382},
            "scale_bytes_per_value": {t: 4 / t for t in (16, 32, 64, 128, 256, 1024)}}
SOL["tile_results"] = MEASURED


# ------------------------------------------------------------------ quantize_tiles
def _tiles(x, tile, mode="tile", invert=False, divide=True):
    K = x.shape[-1]
    pad = (-K) % tile
    g = torch.nn.functional.pad(x.float(), (0, pad)).reshape(*x.shape[:-1], -1, tile)
    if mode == "tile":
        amax = g.abs().amax(-1)
    elif mode == "tensor":
        amax = x.float().abs().amax().expand(g.shape[:-1])
    elif mode == "row":
        amax = x.float().abs().amax(-1, keepdim=True).expand(g.shape[:-1])
    elif mode == "max":
        amax = g.amax(-1).clamp_min(1e-30)
    s = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
    if invert:
        s = 1.0 / s
    q = (g / s[..., None] if divide else g).clamp(-448, 448).to(torch.float8_e4m3fn)
    return q.reshape(*x.shape[:-1], -1)[..., :K], s.contiguous()


def _tiles_loop(x, tile):                      # valid: a Python loop over the groups, float64 inside
    K = x.shape[-1]
    flat = x.double().reshape(-1, K)
    G = math.ceil(K / tile)
    q = torch.empty(flat.shape, dtype=torch.float8_e4m3fn)
    s = torch.empty(flat.size(0), G)
    for i in range(flat.size(0)):
        for j in range(G):
            part = flat[i, j * tile:(j + 1) * tile]
            a = part.abs().max().item()
            s[i, j] = a / 448 if a > 0 else 1.0
            q[i, j * tile:(j + 1) * tile] = (part / s[i, j].item()).clamp(-448, 448).float().to(torch.float8_e4m3fn)
    return q.reshape(x.shape), s.reshape(*x.shape[:-1], G)


def _tiles_list(x, tile):                      # valid: a list instead of a tuple, no clamp (torch saturates)
    q, s = _tiles(x, tile)
    return [q, s]


# ------------------------------------------------------------------ pipeline_idle
def _idle_free(orders, F, B):                 # wrong: no waiting at all
    m = len(orders[0]) // 2
    return m * (F + B), [0.0] * len(orders)


def _idle_formula(orders, F, B):              # wrong: the 1F1B formula for every order
    pp, m = len(orders), len(orders[0]) // 2
    return m * (F + B) + (pp - 1) * (F + B), [(pp - 1) * (F + B)] * pp


def _idle_start(orders, F, B):                # wrong: only the wait before the first op
    tl = _simulate(orders, {"F": F, "B": B})
    return tl.makespan, [min(s for r2, _, s, _ in tl.events if r2 == r) for r in sorted(orders)]


def _idle_numpy(orders, F, B):                # valid: NumPy outputs
    T, idle = SOL["pipeline_idle"](orders, F, B)
    return np.float64(T), np.array(idle)


# ------------------------------------------------------------------ ib_bytes
def _ib(indices, per_node, hidden, per="node", d=1, c=2, scales=True):
    idx = torch.as_tensor(np.asarray(indices)).long()
    if per == "node":
        n = sum(len(set((row // per_node).tolist())) for row in idx)
    elif per == "expert":
        n = idx.numel()
    else:
        n = len(set((idx // per_node).flatten().tolist()))
    return n * (hidden * d + (math.ceil(hidden / 128) * 4 if scales else 0) + hidden * c)


def _ib_numpy(indices, per_node, hidden):     # valid: NumPy all the way, np.int64 out
    nodes = np.asarray(indices) // per_node
    n = sum(len(np.unique(r)) for r in nodes)
    return np.int64(n) * (3 * hidden + 4 * ((hidden + 127) // 128))


# ------------------------------------------------------------------ optimizer_memory
def _mem(routed, other, pp, ep, gpus, dual, zero=True, ep_split=True, dp_for_experts=False, adam=2, grad=4,
         ignore_dual=False):
    copies = 1 if ignore_dual or not dual else 2
    ho, he = copies * other / pp, copies * routed / (pp * (ep if ep_split else 1))
    so = copies * gpus / pp if zero else 1
    se = (copies * gpus / pp if dp_for_experts else copies * gpus / (pp * ep)) if zero else 1
    return {"weights": (ho + he) * 2 / 1e9, "gradients": (ho + he) * grad / 1e9,
            "optimizer": (ho / so + he / se) * (4 + 2 * adam) / 1e9}


CASES = {
    "quantize_tiles": (check_quantize_tiles, [
        Wrong(lambda x, t: _tiles(x, t, "tensor"), named="not one for the whole tensor"),
        Wrong(lambda x, t: _tiles(x, t, "row"), named="not one per token"),
        Wrong(lambda x, t: _tiles(x, t, "max"), named="MAGNITUDE"),
        Wrong(lambda x, t: _tiles(x, t, invert=True), named="not 448 / max|x|"),
        Wrong(lambda x, t: _tiles(x, t, divide=False), named="divide x by its group's scale"),
        lambda x, t: (_tiles(x, t)[0].float(), _tiles(x, t)[1]),                    # q not in FP8
        lambda x, t: _tiles(x.reshape(*x.shape[:-1], -1, t), t),                    # K % tile != 0 crashes
        lambda x, t: (_tiles(x, t)[0], _tiles(x, t)[1].double()),                   # scales not float32
    ], [_tiles_loop, _tiles_list]),
    "pipeline_idle": (check_pipeline_idle, [
        Wrong(_idle_free, named="a rank waits for its inputs"),
        Wrong(_idle_formula, named="simulate the order you are given"),
        Wrong(_idle_start, named="count ALL the time"),
    ], [_idle_numpy]),
    "ib_bytes": (check_ib_bytes, [
        Wrong(lambda i, n, h: _ib(i, n, h, per="expert"), named="one copy per NODE"),
        Wrong(lambda i, n, h: _ib(i, n, h, per="batch"), named="of EACH token"),
        Wrong(lambda i, n, h: _ib(i, n, h, d=2, scales=False), named="dispatch is FP8"),
        Wrong(lambda i, n, h: _ib(i, n, h, c=0), named="combine comes back"),
        Wrong(lambda i, n, h: _ib(i, n, h, scales=False), named="with their scales"),
        Wrong(lambda i, n, h: _ib(i, n, h, c=1), named="stays in BF16"),
        lambda i, n, h: _ib(i, n, h) + 0.5,
    ], [_ib_numpy, lambda i, n, h: float(_ib(i, n, h)), lambda i, n, h: torch.tensor(_ib(i, n, h))]),
    "optimizer_memory": (check_optimizer_memory, [
        Wrong(lambda *a: _mem(*a, zero=False), named="ZeRO-1 shards"),
        Wrong(lambda *a: _mem(*a, ep_split=False), named="1/ep"),
        Wrong(lambda *a: _mem(*a, dp_for_experts=True), named="gpus/(pp*ep)"),
        Wrong(lambda *a: _mem(*a, adam=4), named="4 + 2 + 2"),
        Wrong(lambda *a: _mem(*a, grad=2), named="gradients in FP32"),
        Wrong(lambda *a: _mem(*a, ignore_dual=True), named="two stages"),
        lambda *a: {k: v for k, v in _mem(*a).items() if k != "optimizer"},
    ], [lambda *a: {k: np.float64(v) for k, v in _mem(*a).items()},
        lambda *a: {k: torch.tensor(v, dtype=torch.float64) for k, v in _mem(*a).items()}]),
    "bubble_answer": (check_bubbles, [
        Wrong({"1F1B": 48, "ZB1P": 16, "DualPipe": 16}, named="PP - 1 stages, not PP"),
        Wrong({"1F1B": 42, "ZB1P": 28, "DualPipe": 12}, named="TWO weight-gradient"),
        Wrong({"1F1B": 42, "ZB1P": 14, "DualPipe": 28}, named="PP/2 - 1"),
        {"1F1B": 42, "ZB1P": 14},
    ], [{"1F1B": 42.0, "ZB1P": np.int64(14), "DualPipe": torch.tensor(12)}]),
    "stall_answer": (check_accumulator, [
        Wrong(2 ** 13, named="14 bits"), Wrong(2 ** 15, named="worth 2"), 16383, 16384.5,
    ], [16384.0, np.int64(16384), torch.tensor(16384)]),
    "byte_answer": (check_no_byte_saver, [
        Wrong("a", named="half the bytes"), Wrong("b", named="4 copies"), Wrong("d", named="one BF16 vector"), "e",
    ], ["C", " c)", "(c)"]),
    "tile_results": (check_tile_experiment, [
        {**MEASURED, "scale_bytes_per_value": {t: 1 / t for t in (16, 32, 64, 128, 256, 1024)}},
        {**MEASURED, "errors": {**MEASURED["errors"], 16: 0.14, 1024: 0.039}},            # swapped ends
        {**MEASURED, "errors": {k: 0.026 for k in MEASURED["errors"]}},                     # clean tokens only
        {"errors": MEASURED["errors"]},
    ], [{"errors": {str(k): np.float32(v) for k, v in MEASURED["errors"].items()},
         "scale_bytes_per_value": {str(k): v for k, v in MEASURED["scale_bytes_per_value"].items()}}]),
}


test_check_passes_on_solution, test_check_fails_on_stub, test_check_rejects_plausible_mistakes = \
    check_contract(CASES, SOL, STUB)


def test_solution_answers_match_the_lesson():
    assert SOL["ib_bytes"](torch.tensor([[0, 1, 40, 41, 100, 101, 200, 201]]), 32, 7168) == 86_912
    assert SOL["bubble_answer"] == {"1F1B": 42, "ZB1P": 14, "DualPipe": 12}
