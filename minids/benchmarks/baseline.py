"""The baseline GPT at nanoGPT's documented CPU config on Shakespeare: 4 layers, 4 heads,
width 128, context 64, batch 12, 2,000 iterations, no dropout, lr 1e-3 -> 1e-4 (cosine).

Runs minids eagerly and compiled (torch.compile, inductor; fused AdamW) and, with --nanogpt
PATH (a checkout of github.com/karpathy/nanoGPT; nothing of it is copied into this project),
nanoGPT's README CPU command on the SAME corpus (this course's Shakespeare, written once into
nanoGPT's data format in a temporary folder): one after the other, --repeats times, interleaved.

Reported per run: the training loop's wall-clock and tokens/s (evals included: minids evaluates
200 batches per split at the end, nanoGPT 20 per split every 250 iterations, 360 vs 400 batches
in all), the compile time separately (minids compiles before its loop; cold = inductor's cache
empty, warm = reused from an earlier run), and the final val loss. nanoGPT's loop time is the sum
of the per-iteration times it prints (its process start and data loading are not in it).
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig, get_preset
from ..data import load_dataset
from ..train import train

NANOGPT_ARGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                "--n_embd=128", "--dropout=0.0"]          # + --max_iters=N --lr_decay_iters=N (README)


def run_minids(iters: int, threads: int, seed: int, compile: bool, dataset) -> dict:
    tc = TrainConfig(max_iters=iters, num_threads=threads, seed=seed, eval_interval=iters,
                     eval_iters=200, progress=False, compile=compile)
    res = train(get_preset("baseline"), tc, dataset=dataset)
    return {"name": "minids baseline" + (" compiled" if compile else ""), "params": res.model.num_params(),
            "loop_s": res.wall_s, "compile_s": res.compile_s if compile else None,
            "tokens_per_s": res.tokens_per_s, "val": res.final_val_loss}


def nanogpt_folder(nanogpt: Path, dataset, work: Path) -> Path:
    """A run folder: nanoGPT's code (linked, not copied) and this course's corpus in its format."""
    for name in ("train.py", "model.py", "configurator.py", "config"):
        if not (nanogpt / name).exists():
            raise SystemExit(f"--nanogpt {nanogpt}: no {name} there (expected a nanoGPT checkout)")
        (work / name).symlink_to((nanogpt / name).resolve())
    data = work / "data" / "minids_shakespeare_char"
    data.mkdir(parents=True)
    np.asarray(dataset.train, dtype=np.uint16).tofile(data / "train.bin")
    np.asarray(dataset.val, dtype=np.uint16).tofile(data / "val.bin")
    chars = dataset.tokenizer.chars
    with open(data / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)),
                     "stoi": {c: i for i, c in enumerate(chars)}}, f)
    return work


def run_nanogpt(work: Path, iters: int, threads: int) -> dict:
    cmd = [sys.executable, "train.py", *NANOGPT_ARGS, f"--max_iters={iters}", f"--lr_decay_iters={iters}",
           "--dataset=minids_shakespeare_char", f"--out_dir={work / 'out'}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"nanoGPT failed ({' '.join(cmd)}):\n{r.stderr[-2000:]}")
    times = [float(m) for m in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", r.stdout, re.M)]
    vals = re.findall(r"^step \d+: train loss [\d.]+, val loss ([\d.]+)", r.stdout, re.M)
    loop = sum(times) / 1e3
    n = len(times)                      # nanoGPT runs iterations 0..max_iters: max_iters + 1 steps
    return {"name": "nanoGPT (README CPU cmd)", "params": None, "loop_s": loop, "compile_s": None,
            "tokens_per_s": n * 12 * 64 / loop, "val": float(vals[-1]) if vals else float("nan"),
            "process_s": wall}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m minids bench baseline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="also run minids compiled (torch.compile, inductor)")
    ap.add_argument("--eager", action=argparse.BooleanOptionalAction, default=True,
                    help="run minids eagerly")
    ap.add_argument("--nanogpt", default=None, help="path to a nanoGPT checkout: run it side by side")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved rounds of all runs")
    args = ap.parse_args(argv)
    if args.iters < 1 or args.repeats < 1:
        raise SystemExit("--iters and --repeats must be >= 1")
    torch.set_num_threads(args.threads)
    dataset = load_dataset("shakespeare", "char")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"seed {args.seed}, {args.iters} iters, load average {load:.2f} at start", flush=True)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        work = nanogpt_folder(Path(args.nanogpt), dataset, Path(tmp)) if args.nanogpt else None
        for r in range(args.repeats):
            rnd = []
            runs = ([lambda: run_minids(args.iters, args.threads, args.seed, False, dataset)] if args.eager else []) \
                + ([lambda: run_minids(args.iters, args.threads, args.seed, True, dataset)] if args.compile else []) \
                + ([lambda: run_nanogpt(work, args.iters, args.threads)] if work else [])
            for run in runs:            # each run printed as it ends: a slow machine keeps what finished
                x = run()
                rnd.append(x)
                print(f"  round {r + 1}: {x['name']}: loop {x['loop_s']:.1f} s, {x['tokens_per_s']:,.0f} tokens/s"
                      + (f", compile {x['compile_s']:.1f} s" if x["compile_s"] is not None else "")
                      + f", val {x['val']:.4f}", flush=True)
            rounds.append(rnd)
    print(format_table(rounds, args.iters))


def format_table(rounds: list[list[dict]], iters: int) -> str:
    """One line per run; ratios to the nanoGPT run of the same round."""
    has_ref = any(x["name"].startswith("nanoGPT") for rnd in rounds for x in rnd)
    lines = [f"{'round':>5} {'run':<26} {'params':>9} {'loop s':>7} {'compile s':>9} {'tokens/s':>9} "
             f"{'val loss':>9}" + (f" {'vs nanoGPT':>10} {'incl. compile':>13}" if has_ref else "")]
    for r, rnd in enumerate(rounds):
        ref = next((x for x in rnd if x["name"].startswith("nanoGPT")), None)
        for x in rnd:
            comp = x["compile_s"]
            line = (f"{r + 1:>5} {x['name']:<26} {x['params'] or 800_000:>9,} {x['loop_s']:>7.1f} "
                    f"{comp if comp is not None else float('nan'):>9.1f} {x['tokens_per_s']:>9,.0f} {x['val']:>9.4f}")
            if ref:
                tps_incl = iters * 12 * 64 / (x["loop_s"] + (comp or 0))
                line += (f" {x['tokens_per_s'] / ref['tokens_per_s']:>9.2f}x "
                         f"{tps_incl / ref['tokens_per_s']:>12.2f}x")
            lines.append(line)
    lines.append("loop s = the training loop, evals included, compile not; tokens/s = trained tokens / loop s; "
                 "incl. compile = minids' tokens/s with its compile time counted (nanoGPT's own rate).")
    return "\n".join(lines)
