"""An MoE layer against a dense SwiGLU MLP with the same ACTIVE parameters, on the same tokens,
forward + backward on CPU; and the fast (sorted, batched) dispatch against the readable loop.

Dense comparator: one SwiGLU with hidden size (K + shared) * moe_intermediate_size, i.e. the
expert weights a token actually uses (the router's E*d weights are the MoE's only extra).
Every variant is timed in the same rounds, interleaved, and the minimum per variant is reported,
so a busy machine slows them alike; CPU time of this process, best of the rounds.
Ratios are to the dense MLP of the same row."""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from ..config import ModelConfig
from ..layers import MLP
from ..moe import MoE, dispatch_fast, dispatch_loop
from ..moe_dispatch import choose_backend, grouped_mm_usable

# (routed experts E, experts per token K, expert hidden size I at d=128 (scaled with --dim), shared)
CONFIGS = [(8, 2, 88, 1), (16, 4, 44, 1), (64, 8, 22, 1)]


def _moe_step(moe: MoE, x: torch.Tensor, how: str):
    def step():
        w, idx, _ = moe.router(x)
        if how == "loop":
            y = dispatch_loop(moe.experts, x, w, idx)
        else:
            y = dispatch_fast(moe.experts, x, w, idx, backend=how)
        y = y + moe.shared_experts(x)
        y.backward(grad)
    grad = torch.randn_like(x)
    return step


def _time(fns: dict, rounds: int, reps: int) -> dict:
    """Fastest ms per call of each fn over the rounds, measured round-robin after a warm-up.
    CPU time of this process (time.process_time), not wall time: with one thread it is the time
    the work itself took, and other jobs on a shared machine do not inflate it; the minimum over
    rounds drops what interference remains (caches, frequency)."""
    for f in fns.values():
        for _ in range(2):
            f()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.process_time()
            for _ in range(reps):
                f()
            times[k].append((time.process_time() - t) / reps * 1e3)
    return {k: min(v) for k, v in times.items()}


def bench_config(E: int, K: int, I: int, S: int, d: int, tokens: int, skew: float = 0.0,
                 rounds: int = 15, reps: int = 3, seed: int = 0, compile: bool = False) -> dict:
    torch.manual_seed(seed)
    cfg = ModelConfig(hidden_size=d, n_routed_experts=E, num_experts_per_tok=K,
                      moe_intermediate_size=I, n_shared_experts=S)
    moe = MoE(cfg)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.02)
    with torch.no_grad():      # skew > 0: a router bias that favours the first experts
        moe.router.bias.copy_(-skew * torch.linspace(0, 0.05, E))
    dense = MLP(d, (K + S) * I)
    x = torch.randn(tokens, d, requires_grad=True)
    g = torch.randn(tokens, d)
    _, idx, _ = moe.router(x)
    counts = torch.bincount(idx.flatten(), minlength=E)
    fns = {"dense": lambda: dense(x).backward(g),
           "loop": _moe_step(moe, x, "loop"),
           "fast": _moe_step(moe, x, "auto"),
           "bmm": _moe_step(moe, x, "bmm"),
           "slices": _moe_step(moe, x, "slices")}
    if grouped_mm_usable(x, I):
        fns["grouped_mm"] = _moe_step(moe, x, "grouped_mm")
    # the floor of any dispatch: the same expert FLOPs with no routing at all, all N*K rows through
    # one expert-shaped SwiGLU (width I), plus the shared expert
    rows = x.detach().repeat(K, 1).requires_grad_()
    w_rows, g_rows = torch.rand(tokens * K), torch.randn(tokens * K, d)

    def floor():
        moe.experts.expert(0, rows).mul(w_rows[:, None]).backward(g_rows)
        moe.shared_experts(x).backward(g)
    fns["floor"] = floor
    compile_s = {}
    if compile:                 # the layer as the compiled training step runs it (one graph)
        xb, gb = x.detach().view(1, tokens, d).requires_grad_(), g.view(1, tokens, d)
        for name, module in (("dense compiled", dense), ("fast compiled", moe)):
            fn = torch.compile(module)
            t = time.perf_counter()
            fn(xb).backward(gb)
            compile_s[name] = time.perf_counter() - t
            fns[name] = lambda fn=fn: fn(xb).backward(gb)
    ms = _time(fns, rounds, reps)
    return {"E": E, "K": K, "I": I, "S": S, "pad": E * int(counts.max()) / (tokens * K),
            "ms": ms, "compile_s": compile_s, "fast_backend": choose_backend(x, counts, I)}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m minids bench moe", description=__doc__)
    ap.add_argument("--dim", default="128", help="hidden size d, or several: 128,256,512")
    ap.add_argument("--tokens", type=int, default=768, help="tokens per step (12 x 64 = 768)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skew", type=float, default=0.0, help="router bias skew (unbalanced load)")
    ap.add_argument("--configs", default="all", help="'all' or indices into CONFIGS, e.g. 0 (E=8, K=2)")
    ap.add_argument("--compile", action="store_true",
                    help="also time the layers compiled (torch.compile, inductor), compile time apart")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dims = [int(v) for v in args.dim.split(",")]
    configs = CONFIGS if args.configs == "all" else [CONFIGS[int(i)] for i in args.configs.split(",")]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s); {args.tokens} tokens, forward+backward, "
          f"CPU ms, best of {args.rounds} interleaved rounds; load average {load:.2f} at start")
    head = (f"{'d':>4} {'E':>3} {'K':>2} {'I':>3} {'S':>2} {'pad':>5} {'dense ms':>9} {'loop ms':>8} "
            f"{'fast ms':>8} {'bmm ms':>7} {'slices ms':>9} {'gmm ms':>7} {'floor ms':>8}  {'fast/dense':>10} "
            f"{'floor/dense':>11} {'loop/fast':>9}")
    print(head + (f" {'compiled fast/dense':>19}" if args.compile else "") + "  fast =")
    for d in dims:
        for E, K, I, S in configs:
            I = I * d // 128
            r = bench_config(E, K, I, S, d, args.tokens, args.skew, args.rounds, compile=args.compile)
            ms = r["ms"]
            line = (f"{d:>4} {E:>3} {K:>2} {I:>3} {S:>2} {r['pad']:>5.2f} {ms['dense']:>9.2f} {ms['loop']:>8.2f} "
                    f"{ms['fast']:>8.2f} {ms['bmm']:>7.2f} {ms['slices']:>9.2f} "
                    f"{ms.get('grouped_mm', float('nan')):>7.2f} {ms['floor']:>8.2f}  "
                    f"{ms['fast'] / ms['dense']:>9.2f}x {ms['floor'] / ms['dense']:>10.2f}x "
                    f"{ms['loop'] / ms['fast']:>8.2f}x")
            if args.compile:
                line += f" {ms['fast compiled'] / ms['dense compiled']:>18.2f}x"
            print(line + f"  {r['fast_backend']}", flush=True)
            if args.compile:
                print(f"      compiled: dense {ms['dense compiled']:.2f} ms, fast {ms['fast compiled']:.2f} ms; "
                      f"compile {r['compile_s']['dense compiled']:.0f} s + {r['compile_s']['fast compiled']:.0f} s")
    print("pad = rows bmm computes / real (token, expert) pairs; gmm = torch._grouped_mm (where this torch "
          "runs it: 16-byte rows); fast = what 'auto' picks: grouped_mm where it applies, else bmm while "
          "pad <= PAD_LIMIT, else slices; floor = no routing at all: the N*K expert rows through ONE "
          "expert-shaped SwiGLU + the shared expert (what any dispatch costs at least)")
