"""An MoE layer against a dense SwiGLU MLP with the same ACTIVE parameters, on the same tokens,
forward + backward on CPU; and the fast (sorted, batched) dispatch against the readable loop.

Dense comparator: one SwiGLU with hidden size (K + shared) * moe_intermediate_size, i.e. the
expert weights a token actually uses (the router's E*d weights are the MoE's only extra).
Every variant is timed in the same rounds, interleaved, and the minimum per variant is reported,
so a busy machine slows them alike; CPU time of this process, best of the rounds.
Ratios are to the dense MLP of the same row."""

from __future__ import annotations

import argparse
import platform
import time

import torch

from ..config import ModelConfig
from ..layers import MLP
from ..moe import MoE, dispatch_fast, dispatch_loop

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
                 rounds: int = 15, reps: int = 3, seed: int = 0) -> dict:
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
    ms = _time(fns, rounds, reps)
    return {"E": E, "K": K, "I": I, "S": S, "pad": E * int(counts.max()) / (tokens * K),
            "ms": ms}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m minids bench moe", description=__doc__)
    ap.add_argument("--dim", type=int, default=128, help="hidden size d")
    ap.add_argument("--tokens", type=int, default=768, help="tokens per step (12 x 64 = 768)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skew", type=float, default=0.0, help="router bias skew (unbalanced load)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s); d={args.dim}, {args.tokens} tokens, forward+backward, "
          f"CPU ms, best of {args.rounds} interleaved rounds")
    print(f"{'E':>3} {'K':>2} {'I':>3} {'S':>2} {'pad':>5} {'dense ms':>9} {'loop ms':>8} "
          f"{'fast ms':>8} {'bmm ms':>7} {'slices ms':>9}  {'fast/dense':>10} {'loop/fast':>9}")
    for E, K, I, S in CONFIGS:
        I = I * args.dim // 128
        r = bench_config(E, K, I, S, args.dim, args.tokens, args.skew, args.rounds)
        ms = r["ms"]
        print(f"{E:>3} {K:>2} {I:>3} {S:>2} {r['pad']:>5.2f} {ms['dense']:>9.2f} {ms['loop']:>8.2f} "
              f"{ms['fast']:>8.2f} {ms['bmm']:>7.2f} {ms['slices']:>9.2f}  "
              f"{ms['fast'] / ms['dense']:>9.2f}x {ms['loop'] / ms['fast']:>8.2f}x")
    print("pad = rows bmm computes / real (token, expert) pairs; fast = bmm while pad <= "
          "PAD_LIMIT, else slices")
