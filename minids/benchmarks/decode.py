"""Cached decoding speed and cache size of MHA, GQA, MLA (naive) and MLA (absorb) on CPU.

Each model is prefilled with a random prompt of `context` tokens (MLA prefills in naive mode,
as a server would: both modes write the same latent cache), then decodes `--steps` tokens one
at a time through the cache. Tokens/s is the best of `--repeats` runs of those steps. All models
share the width, depth, FFN and vocabulary; only the attention differs:

    MHA        16 heads of 64, a key and a value per head cached       2*16*64 = 2048 values
    GQA        16 query heads, 4 KV heads                                2*4*64 =  512 values
    MLA        16 heads, kv_lora_rank 256 (= 4 x head dim, as V3's 512 = 4 x 128),
               rope dim 32 (= head dim / 2, as V3's 64), cache c_KV + k_R    256+32 =  288 values
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from ..attention import KVCache
from ..config import ModelConfig
from ..flops import kv_cache_bytes, kv_cache_values_per_token
from ..model import MiniDeepSeek

WIDTH, HEADS, HEAD_DIM = 1024, 16, 64


def configs(max_len: int, layers: int = 2) -> dict[str, ModelConfig]:
    common = dict(vocab_size=256, hidden_size=WIDTH, intermediate_size=1024, num_hidden_layers=layers,
                  num_attention_heads=HEADS, max_position_embeddings=max_len)
    mla = dict(kv_lora_rank=4 * HEAD_DIM, qk_nope_head_dim=HEAD_DIM, qk_rope_head_dim=HEAD_DIM // 2,
               v_head_dim=HEAD_DIM)
    return {
        "MHA": ModelConfig(**common, head_dim=HEAD_DIM),
        "GQA (4 KV heads)": ModelConfig(**common, head_dim=HEAD_DIM, num_key_value_heads=4),
        "MLA naive": ModelConfig(**common, **mla, mla_mode="naive"),
        "MLA absorb": ModelConfig(**common, **mla, mla_mode="absorb"),
    }


def set_mla_mode(model: MiniDeepSeek, mode: str) -> None:
    for m in model.modules():
        if hasattr(m, "mode") and hasattr(m, "kv_lora_rank"):
            m.mode = mode


@torch.no_grad()
def prefill(model: MiniDeepSeek, context: int, steps: int) -> list[KVCache]:
    """A cache holding a random prompt of `context` tokens, with room for `steps` more."""
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (1, context), generator=g)
    cache = model.new_cache(context + steps)
    set_mla_mode(model, "naive")                   # prefill: expand K and V once (fast sdpa)
    model(prompt, cache=cache)
    set_mla_mode(model, model.config.mla_mode)
    return cache


@torch.no_grad()
def decode_tokens_per_s(model: MiniDeepSeek, cache: list[KVCache], context: int, steps: int) -> float:
    """Tokens/s of `steps` cached one-token steps after the prefilled context (then rolled back)."""
    nxt = torch.randint(0, model.config.vocab_size, (1, steps), generator=torch.Generator().manual_seed(1))
    t0 = time.perf_counter()
    for i in range(steps):
        model(nxt[:, i:i + 1], start_pos=context + i, cache=cache)
    tps = steps / (time.perf_counter() - t0)
    for c in cache:
        c.crop(context)                             # forget the decoded tokens for the next run
    return tps


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m minids bench decode", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", default="256,1024,2048", help="comma-separated prefill lengths")
    ap.add_argument("--steps", type=int, default=32, help="decoded tokens per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    contexts = [int(c) for c in args.contexts.split(",")]
    cfgs = configs(max(contexts) + args.steps, args.layers)
    models = {name: MiniDeepSeek(c).eval() for name, c in cfgs.items()}
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s), float32, batch 1, {args.layers} layers, width {WIDTH}, "
          f"{HEADS} heads; {args.steps} steps, best of {args.repeats}")
    print(f"{'attention':<18} {'params':>10} {'vals/tok/layer':>14} {'context':>8} "
          f"{'cache KiB':>10} {'tokens/s':>9} {'vs MLA naive':>12}")
    rows = {}
    for ctx in contexts:
        caches = {name: prefill(model, ctx, args.steps) for name, model in models.items()}
        best = dict.fromkeys(models, 0.0)
        for _ in range(args.repeats):              # round robin: background noise hits all alike
            for name, model in models.items():
                best[name] = max(best[name], decode_tokens_per_s(model, caches[name], ctx, args.steps))
        for name in models:
            rows[name, ctx] = best[name], sum(c.nbytes() for c in caches[name])
        for name, model in models.items():
            tps, nbytes = rows[name, ctx]
            assert nbytes == kv_cache_bytes(cfgs[name], ctx, torch.float32)
            print(f"{name:<18} {model.num_params():>10,} {kv_cache_values_per_token(cfgs[name]):>14,} "
                  f"{ctx:>8} {nbytes / 1024:>10,.0f} {tps:>9,.1f} "
                  f"{tps / rows['MLA naive', ctx][0]:>11.2f}x")
