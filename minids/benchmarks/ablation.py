"""Chapter 06: the dense baseline, each of DeepSeek-V3's three ideas alone (+MLA, +MoE, +MTP),
and all three together (mini-v3), trained on Shakespeare characters on CPU.

Every preset costs the same training FLOPs per token at context 64 (minids.flops.flops_per_token,
MTP module included: it runs in every training step), so the same tokens mean the same compute.
Two modes:
  tokens  (default) every model trains for --iters steps of batch x block tokens: equal tokens,
          equal FLOPs. Same seeds, hence the same batches and the same evaluation batches.
  time    every model gets --seconds of WALL-CLOCK training: first every model's seconds per step
          are measured (wall-clock, at the run's thread count, models interleaved round-robin and
          the fastest of --calibration-rounds kept, so load on a shared machine hits all alike),
          then each run is given the steps that fit (its cosine schedule then ends on time). The
          table shows the training wall-clock each run really took ("train s", the final eval
          excluded) beside the budget. Unequal FLOPs: what a model buys per second is the point.
          With --compile the steps are compiled (torch.compile); compiling is not in the budget.
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


def seconds_per_iter(cfg, tc: TrainConfig, dataset, steps: int = 12) -> float:
    """Wall-clock seconds of one training step of `cfg` as `train` runs it (forward, backward,
    clipping, AdamW, router-bias update), from a short run of `steps` steps (its first step, and
    the compile with tc.compile, are not counted)."""
    from ..train import train
    stamps = []
    train(cfg, tc.replace(max_iters=steps + 1, eval_interval=10**9, eval_iters=1, log_interval=1,
                          progress=False, out_dir=None),
          dataset=dataset, callback=lambda it, rec: stamps.append(time.perf_counter()))
    return (stamps[-1] - stamps[0]) / steps


def calibrate(cfgs: dict, tc: TrainConfig, dataset, rounds: int = 2, steps: int = 12) -> dict[str, float]:
    """Seconds per step of every config, measured round-robin `rounds` times; the fastest kept."""
    best = {name: math.inf for name in cfgs}
    for _ in range(rounds):
        for name, cfg in cfgs.items():
            best[name] = min(best[name], seconds_per_iter(cfg, tc, dataset, steps))
    return best


def run_ablation(models=MODELS, iters: int = 2000, seeds=(1337,), threads: int = 1,
                 lr: float = 1e-3, lrs: dict | None = None, eval_iters: int = 200,
                 eval_interval: int | None = None, seconds: float | None = None,
                 batch_size: int = 12, block_size: int = 64, dataset=None, progress: bool = False,
                 log=print, keep_models: bool = False, compile: bool = False,
                 calibration_rounds: int = 2, interleave: bool = False) -> list[dict]:
    """Train every model in `models` once per seed; return one dict per (model, seed).
    With `seconds` (time mode), each run gets the steps that fit in that many wall-clock seconds
    at its calibrated speed; else `iters`. `interleave` runs seed by seed (all models for the
    first seed, then the next) instead of model by model. `keep_models` puts each trained model
    in its row (key "trained")."""
    from ..train import train
    if threads:
        torch.set_num_threads(threads)
    dataset = dataset or load_dataset("shakespeare", "char")
    V = dataset.tokenizer.vocab_size
    cfgs = {name: get_preset(name, vocab_size=V) for name in models}

    def config(name, seed, n):
        model_lr = (lrs or {}).get(name, lr)
        return TrainConfig(batch_size=batch_size, block_size=block_size, learning_rate=model_lr,
                           min_lr=model_lr / 10, max_iters=n, seed=seed, num_threads=threads,
                           eval_iters=eval_iters, eval_interval=eval_interval or n,
                           warmup_iters=min(100, max(n // 20, 1)), progress=progress, compile=compile)

    spi = calibrate(cfgs, config(models[0], seeds[0], 10), dataset, calibration_rounds) if seconds else {}
    order = ([(name, seed) for seed in seeds for name in models] if interleave
             else [(name, seed) for name in models for seed in seeds])
    rows = []
    for name, seed in order:
        cfg = cfgs[name]
        p = param_count(cfg)
        n = max(int(seconds / spi[name]), 10) if seconds is not None else iters
        tc = config(name, seed, n)
        stamps = []                               # after step 0, ..., after the last step (before its eval)
        cpu0 = time.process_time()
        res = train(cfg, tc, dataset=dataset, callback=lambda it, rec, s=stamps: s.append(time.perf_counter()))
        cpu_s = time.process_time() - cpu0
        train_s = (stamps[-1] - stamps[0]) * n / max(n - 1, 1) if len(stamps) > 1 else res.wall_s
        row = dict(model=name, seed=seed, lr=tc.learning_rate, params_total=p.total,
                   params_active=p.active, flops_per_token=flops_per_token(cfg, block_size),
                   iters=n, tokens=n * batch_size * block_size, wall_s=res.wall_s, train_s=train_s,
                   cpu_s=cpu_s, compile_s=res.compile_s, budget_s=seconds,
                   s_per_iter_calibrated=spi.get(name), tokens_per_s=res.tokens_per_s,
                   val_loss=res.final_val_loss, train_loss=res.evals[-1]["train"] if res.evals else math.nan,
                   evals=res.evals)
        if keep_models:
            row["trained"] = res.model
        rows.append(row)
        if log:
            log(f"  {name:<13} seed {seed}: {n} iters, {train_s:.1f} s training + eval = {res.wall_s:.1f} s "
                f"wall, {cpu_s:.1f} s CPU" + (f", compile {res.compile_s:.1f} s" if compile else "")
                + f", val {row['val_loss']:.4f}", flush=True)
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
                    "train_s": sum(r["train_s"] for r in rs) / len(rs),
                    "cpu_s": sum(r["cpu_s"] for r in rs) / len(rs),
                    "tokens_per_s": sum(r["tokens_per_s"] for r in rs) / len(rs),
                    "val_loss": sum(vals) / len(vals),
                    "val_spread": max(vals) - min(vals)})
    return out


def format_table(summary: list[dict]) -> str:
    base = next((s for s in summary if s["model"] == "baseline"), summary[0])
    lines = [f"{'model':<13} {'params':>10} {'active':>9} {'FLOPs/tok':>9} {'lr':>7} {'iters':>6} "
             f"{'train s':>7} {'wall s':>7} {'CPU s':>7} {'tokens/s':>9} {'val loss':>9} {'spread':>7} {'vs base':>8}"]
    for s in summary:
        lines.append(
            f"{s['model']:<13} {s['params_total']:>10,} {s['params_active']:>9,} "
            f"{s['flops_per_token'] / 1e6:>8.3f}M {s['lr']:>7.0e} {s['iters']:>6.0f} "
            f"{s['train_s']:>7.1f} {s['wall_s']:>7.1f} {s['cpu_s']:>7.1f} "
            f"{s['tokens_per_s']:>9,.0f} {s['val_loss']:>9.4f} {s['val_spread']:>7.4f} "
            f"{s['val_loss'] - base['val_loss']:>+8.4f}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m minids bench ablation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated preset names")
    ap.add_argument("--iters", type=int, default=2000, help="steps per run (tokens mode)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="time mode: wall-clock seconds of training per run (final eval and compile "
                         "not included; nanoGPT's CPU run: ~105)")
    ap.add_argument("--calibration-rounds", type=int, default=2,
                    help="time mode: round-robin speed measurements per model (fastest kept)")
    ap.add_argument("--compile", action="store_true", help="compiled training steps (torch.compile)")
    ap.add_argument("--interleave", action="store_true",
                    help="run seed by seed (all models, then the next seed) instead of model by model")
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
                        seconds=args.seconds, batch_size=args.batch_size, compile=args.compile,
                        calibration_rounds=args.calibration_rounds, interleave=args.interleave)
    print(format_table(summarise(rows)))
    print("params = total incl. the MTP module; active = per token in the main model; FLOPs/tok = "
          "training FLOPs per token at context 64 incl. MTP; train s = wall-clock of the training steps "
          "(what --seconds budgets); wall s = train s + the final eval; CPU s = this process's CPU time "
          "(all threads) of the run; tokens/s = trained tokens / wall s; val loss = main head, seed mean; "
          "spread = max - min over seeds")
