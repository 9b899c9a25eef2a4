"""The baseline GPT at nanoGPT's documented CPU config on Shakespeare: 4 layers, 4 heads,
width 128, context 64, batch 12, 2,000 iterations, no dropout, lr 1e-3 -> 1e-4 (cosine).
Prints tokens/s, ms/iter and the final val loss (nanoGPT measured here: 1.886, ~40-48 ms/iter)."""

import argparse
import platform

import torch

from ..config import TrainConfig, get_preset
from ..train import train


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m minids bench baseline", description=__doc__)
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args(argv)
    tc = TrainConfig(max_iters=args.iters, num_threads=args.threads, seed=args.seed,
                     eval_interval=args.iters, eval_iters=200, progress=False)
    res = train(get_preset("baseline"), tc)
    ms = 1000 * res.wall_s / max(args.iters, 1)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, seed {args.seed}")
    print(f"{'model':<24} {'params':>9} {'iters':>6} {'ms/iter':>8} {'tokens/s':>9} {'val loss':>9}")
    print(f"{'minids baseline':<24} {res.model.num_params():>9,} {args.iters:>6} {ms:>8.1f} "
          f"{res.tokens_per_s:>9,.0f} {res.final_val_loss:>9.4f}")
    print(f"{'nanoGPT (DESIGN.md §7)':<24} {'800,000':>9} {2000:>6} {'40-48':>8} {'~16,000':>9} {1.886:>9.4f}")
