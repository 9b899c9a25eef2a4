"""Command line: python -m minids train | sample | bench | cost | grade | exercises."""

from __future__ import annotations

import argparse
import sys


def _train(argv):
    import os

    from .config import PRESETS, ModelConfig, TrainConfig, get_preset, gpu_train_config
    from .train import train

    ap = argparse.ArgumentParser(prog="python -m minids train", description="Many GPUs: the same "
                                 "command under torchrun: torchrun --nproc_per_node=8 -m minids train ...")
    ap.add_argument("--preset", default="baseline", choices=sorted(PRESETS))
    ap.add_argument("--model-config", default=None,
                    help="a config.json (ModelConfig fields) instead of --preset")
    ap.add_argument("--out-dir", default="out", help="checkpoint and metrics.jsonl go here")
    ap.add_argument("--resume", action="store_true", help="continue exactly from out-dir's checkpoint")
    ap.add_argument("--max-iters", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step (per rank)")
    ap.add_argument("--warmup-iters", type=int, default=None)
    ap.add_argument("--lr-decay-iters", type=int, default=None)
    ap.add_argument("--eval-interval", type=int, default=None)
    ap.add_argument("--eval-iters", type=int, default=None)
    ap.add_argument("--log-interval", type=int, default=None)
    ap.add_argument("--checkpoint-interval", type=int, default=None)
    ap.add_argument("--dataset", default=None, help="'shakespeare' or a token folder (prepare_dataset)")
    ap.add_argument("--tokenizer", default=None, help="'char', 'bpe' or 'bpe:N'")
    ap.add_argument("--fsdp", action="store_true", help="under torchrun: shard with FSDP2 instead of DDP")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    changes = {k: v for k, v in dict(max_iters=args.max_iters, batch_size=args.batch_size,
                                     block_size=args.block_size, learning_rate=args.lr,
                                     device=args.device, dtype=args.dtype, num_threads=args.threads,
                                     seed=args.seed, grad_accum_steps=args.grad_accum,
                                     warmup_iters=args.warmup_iters, lr_decay_iters=args.lr_decay_iters,
                                     eval_interval=args.eval_interval,
                                     eval_iters=args.eval_iters, log_interval=args.log_interval,
                                     checkpoint_interval=args.checkpoint_interval, dataset=args.dataset,
                                     tokenizer=args.tokenizer).items() if v is not None}
    flags = dict(out_dir=args.out_dir, fsdp=args.fsdp, progress=not args.no_progress)
    if args.compile is not None:
        flags["compile"] = args.compile
    model_cfg = ModelConfig.from_json(args.model_config) if args.model_config else get_preset(args.preset)
    base = gpu_train_config(args.preset) if args.preset.startswith("gpu") and not args.model_config else None
    tc = base.replace(**flags, **changes) if base else TrainConfig(**flags, **changes)
    res = train(model_cfg, tc, resume=args.resume)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"done: {tc.max_iters} iters, val loss {res.final_val_loss:.4f}, "
              f"{res.tokens_per_s:,.0f} tokens/s; checkpoint in {args.out_dir}/")


def _sample(argv):
    import torch

    from .checkpoint import CHECKPOINT, load_model
    from .generate import generate

    ap = argparse.ArgumentParser(prog="python -m minids sample")
    ap.add_argument("--out-dir", default="out")
    ap.add_argument("--prompt", default="\n")
    ap.add_argument("--tokens", type=int, default=500)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--top-p", type=float, default=None)
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args(argv)
    model, tok, _ = load_model(f"{args.out_dir}/{CHECKPOINT}")
    idx = torch.tensor([tok.encode(args.prompt)])
    g = torch.Generator().manual_seed(args.seed)
    out = generate(model, idx, args.tokens, args.temperature, args.top_k, args.top_p, generator=g)
    print(tok.decode(out[0]))


def _bench(argv):
    from .benchmarks import available, run

    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m minids bench NAME [options]; NAME in: {', '.join(available())}")
        return
    run(argv[0], argv[1:])


def _grade(argv):
    from .checks.grade import grade

    ap = argparse.ArgumentParser(prog="python -m minids grade",
                                 description="Run learners' notebooks and score their checks.")
    ap.add_argument("paths", nargs="+", help="notebooks, or folders of them (a learner per sub-folder)")
    ap.add_argument("--csv", default=None, help="write one row per notebook here")
    ap.add_argument("--timeout", type=int, default=120, help="seconds per cell")
    args = ap.parse_args(argv)
    grade(args.paths, args.timeout, args.csv)


def _exercises(argv):
    from .checks.build import build

    ap = argparse.ArgumentParser(prog="python -m minids exercises")
    ap.add_argument("--src", default="solutions")
    ap.add_argument("--dst", default="exercises")
    args = ap.parse_args(argv)
    for p in build(args.src, args.dst):
        print(f"wrote {p}")


def _cost(argv):
    from .config import PRESETS, get_preset
    from .flops import PEAK_FLOPS, cost_table

    ap = argparse.ArgumentParser(prog="python -m minids cost",
                                 description="FLOPs, GPU-hours and dollars of training a preset on N tokens.")
    ap.add_argument("--preset", default="deepseek-v3", choices=sorted(PRESETS))
    ap.add_argument("--tokens", type=float, default=14.8e12, help="training tokens (V3: 14.8T)")
    ap.add_argument("--device", default="H800", help=f"one of {', '.join(sorted(PEAK_FLOPS))}")
    ap.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation in (0, 1]")
    ap.add_argument("--price", type=float, default=2.0, help="dollars per GPU-hour")
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args(argv)
    print(cost_table(get_preset(args.preset), args.tokens, args.device, args.mfu, args.price, dtype=args.dtype))


COMMANDS = {"train": _train, "sample": _sample, "bench": _bench, "cost": _cost, "grade": _grade,
            "exercises": _exercises}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m minids {{{'|'.join(COMMANDS)}}} ...")
        raise SystemExit(0 if not argv or argv[0] in ("-h", "--help") else 2)
    try:
        COMMANDS[argv[0]](argv[1:])
    except (ValueError, FileNotFoundError) as e:       # bad input: one clear line, no traceback
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
