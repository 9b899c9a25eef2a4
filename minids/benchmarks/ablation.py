"""Chapter 06: the dense baseline, each of DeepSeek-V3's three ideas alone (+MLA, +MoE, +MTP),
and all three together (mini-v3), trained on Shakespeare characters on CPU.

Every preset costs the same training FLOPs per token at context 64 (minids.flops.flops_per_token,
MTP module included: it runs in every training step), so the same tokens mean the same compute.
Two modes:
  tokens  (default) every model trains for --iters steps of batch x block tokens: equal tokens,
          equal FLOPs. Same seeds, hence the same batches and the same evaluation batches.
  time    every model gets --seconds of compute: a short calibration measures its CPU seconds
          per step (this process's CPU time, which on an idle machine with one thread is the wall
          clock, and which other jobs on a shared machine do not inflate), and the run is given
          that many steps (its cosine schedule then ends on time). Unequal FLOPs: what a model
          buys per second is the point.
The loss reported is the MAIN head's next-token cross-entropy on the validation split (the MTP
module's own loss is never mixed in), averaged over --eval-iters fixed batches.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import torch

from ..config import TrainConfig, get_preset
from ..data import load_dataset
from ..flops import flops_per_token, param_count
from ..model import MiniDeepSeek

MODELS = ["baseline", "baseline+mla", "baseline+moe", "baseline+mtp", "mini-v3"]


def parse_lrs(text: str | None) -> dict[str, float]:
    """'mini-v3=2e-3,baseline=1e-3' -> {'mini-v3': 0.002, 'baseline': 0.001}."""
    out = {}
    for item in filter(None, (text or "").split(",")):
        name, _, value = item.partition("=")
        if not value:
            raise ValueError(f"--lr-for item {item!r} must look like NAME=LR")
        out[name.strip()] = float(value)
    return out


def seconds_per_iter(cfg, tc: TrainConfig, dataset, steps: int = 12, warmup: int = 3) -> float:
    """CPU seconds (this process) of one training step (forward, backward, AdamW, router-bias
    update) of `cfg`, after `warmup` untimed steps."""
    torch.manual_seed(tc.seed)
    model = MiniDeepSeek(cfg.replace(vocab_size=dataset.tokenizer.vocab_size))
    opt = torch.optim.AdamW(model.parameters(), lr=tc.learning_rate)
    g = torch.Generator().manual_seed(tc.seed)
    from ..data import get_batch
    t = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t = time.process_time()
        x, y = get_batch(dataset.train, tc.batch_size, tc.block_size, g)
        model(x, y).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_router_biases()
    return (time.process_time() - t) / steps


def run_ablation(models=MODELS, iters: int = 2000, seeds=(1337,), threads: int = 1,
                 lr: float = 1e-3, lrs: dict | None = None, eval_iters: int = 200,
                 eval_interval: int | None = None, seconds: float | None = None,
                 batch_size: int = 12, block_size: int = 64, dataset=None, progress: bool = False,
                 log=print, keep_models: bool = False) -> list[dict]:
    """Train every model in `models` once per seed; return one dict per (model, seed).
    With `seconds`, each run's step count comes from a calibration (time mode); else `iters`.
    `keep_models` puts each trained model in its row (key "trained")."""
    from ..train import train
    if threads:
        torch.set_num_threads(threads)
    dataset = dataset or load_dataset("shakespeare", "char")
    V = dataset.tokenizer.vocab_size
    rows = []
    for name in models:
        cfg = get_preset(name, vocab_size=V)
        p = param_count(cfg)
        model_lr = (lrs or {}).get(name, lr)
        for seed in seeds:
            tc = TrainConfig(batch_size=batch_size, block_size=block_size, learning_rate=model_lr,
                             min_lr=model_lr / 10, max_iters=iters, seed=seed,
                             num_threads=threads, eval_iters=eval_iters, progress=progress)
            n = iters
            if seconds is not None:
                # the calibration runs at the same thread count; the eval at the end is extra
                spi = seconds_per_iter(cfg, tc, dataset)
                n = max(int(seconds / spi), 10)
            tc = tc.replace(max_iters=n, eval_interval=eval_interval or n,
                            warmup_iters=min(100, max(n // 20, 1)))
            cpu0 = time.process_time()
            res = train(cfg, tc, dataset=dataset)
            cpu_s = time.process_time() - cpu0
            row = dict(model=name, seed=seed, lr=model_lr, params_total=p.total,
                       params_active=p.active, flops_per_token=flops_per_token(cfg, block_size),
                       iters=n, tokens=n * batch_size * block_size, wall_s=res.wall_s, cpu_s=cpu_s,
                       tokens_per_s=res.tokens_per_s, val_loss=res.final_val_loss,
                       train_loss=res.evals[-1]["train"] if res.evals else math.nan,
                       evals=res.evals)
            if keep_models:
                row["trained"] = res.model
            rows.append(row)
            if log:
                log(f"  {name:<13} seed {seed}: {n} iters, {res.wall_s:.1f} s wall, {cpu_s:.1f} s CPU, "
                    f"val {row['val_loss']:.4f}", flush=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """One row per model: seed-mean of val loss (with the spread), wall clock and tokens/s."""
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == name]
        vals = [r["val_loss"] for r in rs]
        out.append({**{k: rs[0][k] for k in ("model", "lr", "params_total", "params_active",
                                             "flops_per_token")},
                    "seeds": [r["seed"] for r in rs], "vals": vals,
                    "iters": sum(r["iters"] for r in rs) / len(rs),
                    "wall_s": sum(r["wall_s"] for r in rs) / len(rs),
                    "cpu_s": sum(r["cpu_s"] for r in rs) / len(rs),
                    "tokens_per_s": sum(r["tokens_per_s"] for r in rs) / len(rs),
                    "val_loss": sum(vals) / len(vals),
                    "val_spread": max(vals) - min(vals)})
    return out


def format_table(summary: list[dict]) -> str:
    base = next((s for s in summary if s["model"] == "baseline"), summary[0])
    lines = [f"{'model':<13} {'params':>10} {'active':>9} {'FLOPs/tok':>9} {'lr':>7} {'iters':>6} "
             f"{'wall s':>7} {'CPU s':>7} {'tokens/s':>9} {'val loss':>9} {'spread':>7} {'vs base':>8}"]
    for s in summary:
        lines.append(
            f"{s['model']:<13} {s['params_total']:>10,} {s['params_active']:>9,} "
            f"{s['flops_per_token'] / 1e6:>8.3f}M {s['lr']:>7.0e} {s['iters']:>6.0f} "
            f"{s['wall_s']:>7.1f} {s['cpu_s']:>7.1f} "
            f"{s['tokens_per_s']:>9,.0f} {s['val_loss']:>9.4f} {s['val_spread']:>7.4f} "
            f"{s['val_loss'] - base['val_loss']:>+8.4f}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m minids bench ablation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated preset names")
    ap.add_argument("--iters", type=int, default=2000, help="steps per run (tokens mode)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="time mode: wall-clock seconds per run (nanoGPT's CPU run: ~105)")
    ap.add_argument("--seeds", default="1337", help="comma-separated seeds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (min_lr = lr / 10)")
    ap.add_argument("--lr-for", default=None, help="per-model peak lr, e.g. mini-v3=2e-3,baseline=1e-3")
    ap.add_argument("--eval-iters", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=12)
    args = ap.parse_args(argv)
    if args.iters < 1:
        raise SystemExit(f"--iters={args.iters} must be >= 1")
    if args.seconds is not None and args.seconds <= 0:
        raise SystemExit(f"--seconds={args.seconds} must be > 0")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    try:
        lrs = parse_lrs(args.lr_for)
        for m in models:
            get_preset(m)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    mode = f"time mode, {args.seconds:g} s per run" if args.seconds else f"tokens mode, {args.iters} iters"
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} "
          f"thread(s), load average {load:.2f} at start; {mode}; batch {args.batch_size} x 64; "
          f"seeds {seeds}; eval {args.eval_iters} batches")
    rows = run_ablation(models, args.iters, seeds, args.threads, args.lr, lrs, args.eval_iters,
                        seconds=args.seconds, batch_size=args.batch_size)
    print(format_table(summarise(rows)))
    print("params = total incl. the MTP module; active = per token in the main model; FLOPs/tok = "
          "training FLOPs per token at context 64 incl. MTP; wall s / CPU s / tokens/s include the "
          "final eval; val loss = main head, seed mean; "
          "spread = max - min over seeds")
