"""Self-speculative decoding with the MTP module as the draft, against plain cached decoding, on
a briefly trained character model (Shakespeare). Trains the model first (a few hundred
iterations, MTP lambda 0.3 -> 0.1 as in V3) unless --checkpoint names one, then decodes the same
prompts both ways, greedy and sampled, and prints acceptance rate, tokens per main-model
forward and wall-clock tokens/s side by side. Greedy outputs are checked to be identical.

A verify pass over 2 tokens costs about one 1-token forward when the forward is dominated by
reading the weights or by per-layer overhead, so the speed-up approaches
(1 + acceptance) * t_forward / (t_verify + t_draft); the draft is one block, so deeper main
models gain more. V3 reports 85-90% acceptance of the second token and 1.8x tokens/s (§5.4.3)."""

import argparse
import platform
import time

import torch

from ..checkpoint import load_model
from ..config import ModelConfig, TrainConfig
from ..generate import generate, speculative_generate
from ..train import train

PROMPTS = ["ROMEO:\n", "JULIET:\n", "HAMLET:\nTo be", "KING HENRY V:\n", "First Citizen:\n",
           "LADY MACBETH:\n", "OTHELLO:\nO ", "PROSPERO:\n"]


def model_config(width: int, layers: int, heads: int, ctx: int) -> ModelConfig:
    return ModelConfig(hidden_size=width, intermediate_size=int(width * 2.75) // 8 * 8,
                       num_hidden_layers=layers, num_attention_heads=heads,
                       max_position_embeddings=ctx, num_nextn_predict_layers=1, mtp_loss_weight=0.3)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m minids bench speculative", description=__doc__)
    ap.add_argument("--checkpoint", default=None, help="a trained MTP model (ckpt.safetensors); else train one")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=128, help="context = training block size")
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--temperatures", default="0,0.5,0.8,1.0")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes per prompt (best kept)")
    ap.add_argument("--out-dir", default=None, help="keep the trained model's checkpoint here")
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.checkpoint:
        model, tok, _ = load_model(args.checkpoint)
        val = float("nan")
        t_train = 0.0
    else:
        tc = TrainConfig(max_iters=args.iters, batch_size=args.batch_size, block_size=args.ctx,
                         warmup_iters=min(100, args.iters // 10), eval_interval=args.iters,
                         eval_iters=20, num_threads=args.threads, seed=args.seed, progress=False,
                         mtp_loss_weight_final=0.1, mtp_loss_switch=0.7, out_dir=args.out_dir)
        res, t_train = timed(lambda: train(model_config(args.width, args.layers, args.heads, args.ctx), tc))
        model, tok, val = res.model.eval(), res.tokenizer, res.final_val_loss
    cfg = model.config
    ctx = cfg.max_position_embeddings
    prompts = [torch.tensor([tok.encode(p)]) for p in PROMPTS]
    new = [ctx - p.size(1) for p in prompts]                  # fill the context, no further
    n_tokens = sum(new)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s), seed {args.seed}")
    print(f"model: width {cfg.hidden_size}, {cfg.num_hidden_layers} layers + 1 MTP block, "
          f"{model.num_params():,} params, context {ctx}"
          + (f"; trained {args.iters} iters in {t_train:.0f} s, val loss {val:.3f}" if not args.checkpoint else ""))
    print(f"decoding {len(prompts)} prompts x up to {max(new)} new tokens ({n_tokens} tokens), "
          f"best of {args.repeats}")
    print()
    print(f"{'temperature':>11} {'method':<12} {'accept':>7} {'tok/fwd':>8} {'tokens/s':>9} "
          f"{'speed-up':>9}  same tokens")
    rows = []
    for T in [float(t) for t in args.temperatures.split(",")]:
        # interleaved per prompt, best of `repeats` each: other load only ever slows a run down
        t_plain = [float("inf")] * len(prompts)
        t_spec = [float("inf")] * len(prompts)
        ref, out = [None] * len(prompts), [None] * len(prompts)
        for _ in range(args.repeats):
            for j, (p, n) in enumerate(zip(prompts, new, strict=True)):
                g = torch.Generator().manual_seed(args.seed + j)
                ref[j], t = timed(lambda p=p, n=n, T=T, g=g: generate(model, p, n, temperature=T, generator=g))
                t_plain[j] = min(t_plain[j], t)
                g = torch.Generator().manual_seed(args.seed + j)
                out[j], t = timed(lambda p=p, n=n, T=T, g=g: speculative_generate(
                    model, p, n, temperature=T, generator=g))
                t_spec[j] = min(t_spec[j], t)
        t_plain, t_spec = sum(t_plain), sum(t_spec)
        drafted = sum(s["drafted"] for _, s in out)
        acc = sum(s["accepted"] for _, s in out) / drafted
        tpf = n_tokens / sum(s["main_forwards"] for _, s in out)
        same = all(torch.equal(a, b) for a, (b, _) in zip(ref, out, strict=True)) if T == 0 else None
        tps_plain, tps_spec = n_tokens / t_plain, n_tokens / t_spec
        print(f"{T:>11.2f} {'plain':<12} {'-':>7} {1.0:>8.2f} {tps_plain:>9,.0f} {1.0:>8.2f}x")
        print(f"{T:>11.2f} {'speculative':<12} {acc:>7.1%} {tpf:>8.2f} {tps_spec:>9,.0f} "
              f"{tps_spec / tps_plain:>8.2f}x  {'' if same is None else ('yes' if same else 'NO')}")
        rows.append({"temperature": T, "acceptance": acc, "tokens_per_forward": tpf,
                     "speedup": tps_spec / tps_plain, "same": same})
    print()
    print("V3 report §5.4.3: 85-90% acceptance of the second token, 1.8x tokens/s (on GPUs, BPE tokens).")
    text = speculative_generate(model, prompts[0], min(new[0], 100), temperature=0)[0][0]
    print(f"greedy sample: {tok.decode(text)!r}")
    return rows
