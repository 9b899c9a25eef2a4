"""Self-speculative decoding with the MTP module as the draft, against plain cached decoding, on
a trained character model (Shakespeare). The model is trained once (--iters steps, MTP lambda
0.3 -> 0.1 as in V3) and its checkpoint kept in the user's cache folder ($MINIDS_CACHE or
~/.cache/minids/bench-speculative/..., or --out-dir), so later runs only decode; --checkpoint
names another one, --retrain trains again. Then the same prompts are decoded both ways, greedy and
sampled, and acceptance rate, tokens per main-model forward and wall-clock tokens/s are printed
side by side. Greedy outputs are checked to be identical.

Where the time goes: one speculative round costs a draft (the MTP block) plus one main forward
over two tokens (the verify) and gives 1 + (accepted) tokens; a plain step is one main forward
over one token. So speed-up <= tokens per forward x t_step / (t_verify + t_draft): the bench
measures the three costs on the trained model and prints that bound and how close the measured
speed-up comes to tokens per forward ("of bound" = speed-up / tokens per forward). V3 reports
85-90% acceptance of the second token and 1.8x tokens/s (§5.4.3)."""

import argparse
import platform
import time
from pathlib import Path

import torch

from ..checkpoint import CHECKPOINT, load_model
from ..config import ModelConfig, TrainConfig
from ..data.corpus import cache_dir
from ..generate import generate, speculative_generate
from ..mtp import mtp_forward
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


def step_costs(model, prompt: torch.Tensor, repeats: int = 30) -> dict[str, float]:
    """Seconds of a plain decoding step (1 token), a verify (2 tokens) and a draft (the MTP block
    on 1 position), each on a cache filled with `prompt`; the fastest of `repeats` rounds."""
    L = model.config.num_hidden_layers
    cache = model.new_cache()
    with torch.no_grad():
        o = model(prompt, cache=cache[:L])
        mtp_forward(model, 1, o.hidden[:, :-1], prompt[:, 1:], 0, cache[L])
    n, m = cache[0].length, cache[L].length

    def plain():
        model(prompt[:, -1:], start_pos=n, cache=cache[:L])

    def verify():
        model(prompt[:, -2:], start_pos=n, cache=cache[:L])

    def draft():
        mtp_forward(model, 1, o.hidden[:, -1:], prompt[:, -1:], m, cache[L])

    best = {}
    with torch.no_grad():
        for _ in range(repeats):
            for name, fn in (("step", plain), ("verify", verify), ("draft", draft)):
                t = time.perf_counter()
                fn()
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
                for c in cache[:L]:
                    c.crop(n)
                cache[L].crop(m)
    return best


def default_out_dir(args) -> Path:
    return (cache_dir() / "bench-speculative" /
            f"w{args.width}-l{args.layers}-h{args.heads}-c{args.ctx}-i{args.iters}-b{args.batch_size}-s{args.seed}")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m minids bench speculative", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="a trained MTP model (ckpt.safetensors) to decode with")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=128, help="context = training block size")
    ap.add_argument("--iters", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="train with torch.compile")
    ap.add_argument("--temperatures", default="0,0.5,0.8,1.0")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes per prompt (best kept)")
    ap.add_argument("--out-dir", default=None,
                    help="where the trained checkpoint is kept (default: the cache folder, by shape and iters)")
    ap.add_argument("--retrain", action="store_true", help="train again even if a checkpoint is cached")
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir(args)
    ckpt = Path(args.checkpoint) if args.checkpoint else out_dir / CHECKPOINT
    trained = ""
    if args.checkpoint or (ckpt.exists() and not args.retrain):
        model, tok, _ = load_model(ckpt)
        trained = f"loaded {ckpt}"
    else:
        tc = TrainConfig(max_iters=args.iters, batch_size=args.batch_size, block_size=args.ctx,
                         warmup_iters=min(100, args.iters // 10), eval_interval=args.iters,
                         eval_iters=20, num_threads=args.threads, seed=args.seed, progress=False,
                         mtp_loss_weight_final=0.1, mtp_loss_switch=0.7, out_dir=str(out_dir),
                         compile=args.compile)
        res, t_train = timed(lambda: train(model_config(args.width, args.layers, args.heads, args.ctx), tc,
                                           overwrite=True))          # --retrain replaces the cached run
        model, tok = res.model.eval(), res.tokenizer
        trained = (f"trained {args.iters} iters in {t_train:.0f} s (compile {res.compile_s:.0f} s), "
                   f"val loss {res.final_val_loss:.3f}; kept in {ckpt}")
    cfg = model.config
    ctx = cfg.max_position_embeddings
    prompts = [torch.tensor([tok.encode(p)]) for p in PROMPTS]
    new = [ctx - p.size(1) for p in prompts]                  # fill the context, no further
    n_tokens = sum(new)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s), seed {args.seed}")
    print(f"model: width {cfg.hidden_size}, {cfg.num_hidden_layers} layers + 1 MTP block, "
          f"{model.num_params():,} params, context {ctx}; {trained}")
    costs = step_costs(model, prompts[0].repeat(1, 4)[:, : ctx // 2])
    print(f"costs (best of 30, context {ctx // 2}): plain step {costs['step'] * 1e3:.2f} ms, verify (2 tokens) "
          f"{costs['verify'] * 1e3:.2f} ms, draft {costs['draft'] * 1e3:.2f} ms: a round costs "
          f"{(costs['verify'] + costs['draft']) / costs['step']:.2f} plain steps")
    print(f"decoding {len(prompts)} prompts x up to {max(new)} new tokens ({n_tokens} tokens), "
          f"best of {args.repeats}")
    print()
    print(f"{'temperature':>11} {'method':<12} {'accept':>7} {'tok/fwd':>8} {'tokens/s':>9} "
          f"{'speed-up':>9} {'of bound':>9} {'cost bound':>10}  same tokens")
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
        speedup = tps_spec / tps_plain
        bound = tpf * costs["step"] / (costs["verify"] + costs["draft"])
        print(f"{T:>11.2f} {'plain':<12} {'-':>7} {1.0:>8.2f} {tps_plain:>9,.0f} {1.0:>8.2f}x")
        print(f"{T:>11.2f} {'speculative':<12} {acc:>7.1%} {tpf:>8.2f} {tps_spec:>9,.0f} "
              f"{speedup:>8.2f}x {speedup / tpf:>9.2f} {bound:>9.2f}x  "
              f"{'' if same is None else ('yes' if same else 'NO')}")
        rows.append({"temperature": T, "acceptance": acc, "tokens_per_forward": tpf, "speedup": speedup,
                     "of_bound": speedup / tpf, "cost_bound": bound, "same": same})
    print()
    print("of bound = speed-up / tokens per forward (1.0 if a round cost one plain step); cost bound = "
          "tokens per forward x t_step / (t_verify + t_draft).")
    print("V3 report §5.4.3: 85-90% acceptance of the second token, 1.8x tokens/s (on GPUs, BPE tokens).")
    text = speculative_generate(model, prompts[0], min(new[0], 100), temperature=0)[0][0]
    print(f"greedy sample: {tok.decode(text)!r}")
    return rows
