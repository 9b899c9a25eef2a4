"""Cached decoding: cache size and speed of MHA, GQA and MLA's three cache layouts, on CPU.

All models share the width, depth, FFN and vocabulary; only the attention differs. With the
defaults (width 1024 = 32 heads of 32, 2 layers, SwiGLU FFN 1024, vocab 256, float32):

    attention    cached per token and layer                           values   bytes (fp32)
    MHA          a key and a value per head, 2 * 32 * 32                2048       8192
    GQA          8 KV heads, 2 * 8 * 32                                  512       2048
    MLA naive    every head's key [k_C ; k_R] and value, as V3's
                 reference `naive`: 32 * (32 + 16) + 32 * 32             2560      10240
    MLA absorb   the latent c_KV (kv_lora_rank 128 = 4 x head dim, as V3's 512 = 4 x 128) and
                 the shared rope key k_R (16 = head dim / 2, as V3's 64): 128 + 16
                                                                          144        576
    MLA reexpand the same latent cache as absorb, expanded again through W^UKV at every step
                 (what Hugging Face's DeepseekV3 does)                    144        576

The three MLA rows are ONE model (the same weights) run in three modes: the same function,
three cache layouts. MLA's cache shrinks against the expanded one by
H (d_h + d_R + d_v) / (d_c + d_R) = 17.8x here (71x for V3's 128 heads).

For each batch size and context, every model gets a cache filled with `context` positions of
random values (decoding speed does not depend on the cached values, and a real prefill of 8 x 8K
tokens would take longer than the whole benchmark on one thread), then decodes `--steps` tokens
one at a time (a run stops early after `--max-seconds`, with at least one step). Tokens/s =
batch x steps / time, the best of `--repeats` runs, the models timed round robin so that
background load hits all alike.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from ..attention import KVCache, mla_cache_values_per_token
from ..config import ModelConfig
from ..flops import kv_cache_values_per_token
from ..model import MiniDeepSeek

HEADS, HEAD_DIM = 32, 32
WIDTH = HEADS * HEAD_DIM
NAMES = ("MHA", "GQA", "MLA naive", "MLA absorb", "MLA reexpand")


def configs(max_len: int, layers: int = 2, heads: int = HEADS, head_dim: int = HEAD_DIM) -> dict[str, ModelConfig]:
    """The five attentions at one size. GQA: heads / 4 KV heads. MLA keeps V3's proportions:
    d_c = 4 d_h, d_R = d_h / 2."""
    common = dict(vocab_size=256, hidden_size=heads * head_dim, intermediate_size=heads * head_dim,
                  num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=max_len)
    mla = dict(kv_lora_rank=4 * head_dim, qk_nope_head_dim=head_dim, qk_rope_head_dim=head_dim // 2,
               v_head_dim=head_dim)
    return {
        "MHA": ModelConfig(**common, head_dim=head_dim),
        "GQA": ModelConfig(**common, head_dim=head_dim, num_key_value_heads=max(heads // 4, 1)),
        "MLA naive": ModelConfig(**common, **mla, mla_mode="naive"),
        "MLA absorb": ModelConfig(**common, **mla, mla_mode="absorb"),
        "MLA reexpand": ModelConfig(**common, **mla, mla_mode="reexpand"),
    }


def cache_values_per_token(cfg: ModelConfig) -> int:
    """Values one layer caches per token, for the mode the config runs in."""
    return mla_cache_values_per_token(cfg) if cfg.is_mla else kv_cache_values_per_token(cfg)


def attention_decode_cost(cfg: ModelConfig, context: int, mode: str | None = None,
                          bytes_per_value: int = 2) -> dict[str, int]:
    """FLOPs and cache bytes read when ONE new token of ONE sequence attends, in ONE layer, to
    `context` cached positions: the scores and the weighted sum, plus what the layout adds
    (absorb: the two absorbed projections, W^UK into the query and W^UV after attending, once
    per token; reexpand: expanding the whole cache through W^UKV). The projections every layout
    shares (queries, c_KV, k_R, W^O) are left out. `mode` defaults to cfg.mla_mode."""
    S = context
    if not cfg.is_mla:                                   # MHA / GQA / MQA
        H, n_kv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        macs, values = 2 * H * S * D, 2 * n_kv * S * D
    else:
        H, r, n, R, v = (cfg.num_attention_heads, cfg.kv_lora_rank, cfg.qk_nope_head_dim,
                         cfg.qk_rope_head_dim, cfg.v_head_dim)
        mode = cfg.mla_mode if mode is None else mode
        attend = H * S * (n + R) + H * S * v             # q.k over n + R dims, then a.v over v
        if mode == "naive":
            macs, values = attend, S * H * (n + R + v)
        elif mode == "absorb":                           # q~ = W^UK^T q_C; q~.c + q_R.k_R; W^UV (sum a c)
            macs, values = H * n * r + H * S * (r + R) + H * S * r + H * r * v, S * (r + R)
        elif mode == "reexpand":
            macs, values = S * r * H * (n + v) + attend, S * (r + R)
        else:
            raise ValueError(f"mode={mode!r} must be 'naive', 'absorb' or 'reexpand'")
    return {"flops": 2 * macs, "bytes": values * bytes_per_value}


def build_models(cfgs: dict[str, ModelConfig]) -> dict[str, MiniDeepSeek]:
    """One model per attention; the MLA modes share one set of weights (the same function)."""
    torch.manual_seed(0)
    models, mla = {}, None
    for name, c in cfgs.items():
        if c.is_mla and mla is not None:
            m = MiniDeepSeek(c).eval()
            m.load_state_dict(mla.state_dict())
        else:
            m = MiniDeepSeek(c).eval()
        if c.is_mla and mla is None:
            mla = m
        models[name] = m
    return models


@torch.no_grad()
def fill_cache(model: MiniDeepSeek, batch: int, context: int, room: int) -> list[KVCache]:
    """A cache holding `context` positions of random values for `batch` sequences, in the
    model's own layout, with room for `room` more positions."""
    cache = model.new_cache(context + room)
    model(torch.zeros(batch, 1, dtype=torch.long), cache=cache)          # allocates the layout
    g = torch.Generator().manual_seed(0)
    for c in cache[:model.config.num_hidden_layers]:          # 64 random positions, tiled (fast)
        c.update(0, **{k: torch.randn(batch, 64, *b.shape[2:], generator=g).repeat(1, -(-context // 64),
                                                                                     *[1] * (b.dim() - 2))[:, :context]
                       for k, b in c.buffers.items()})
    return cache


@torch.no_grad()
def decode_tokens_per_s(model: MiniDeepSeek, cache: list[KVCache], context: int, steps: int,
                        max_seconds: float = float("inf")) -> float:
    """Tokens/s (all sequences of the batch) of up to `steps` one-token steps after `context`
    cached positions; stops after `max_seconds` (at least one step). The cache is rolled back."""
    B = cache[0].buffers[next(iter(cache[0].buffers))].size(0)
    nxt = torch.randint(0, model.config.vocab_size, (B, steps), generator=torch.Generator().manual_seed(1))
    t0 = time.perf_counter()
    done = 0
    while done < steps:
        model(nxt[:, done:done + 1], start_pos=context + done, cache=cache)
        done += 1
        if time.perf_counter() - t0 > max_seconds:
            break
    tps = B * done / (time.perf_counter() - t0)
    for c in cache:
        c.crop(context)                             # forget the decoded tokens for the next run
    return tps


def measure(contexts, batches, steps: int = 8, repeats: int = 3, max_seconds: float = 1.0, layers: int = 2,
            heads: int = HEADS, head_dim: int = HEAD_DIM, names=NAMES) -> list[dict]:
    """One row per (batch, context, attention): cache values/bytes and tokens/s."""
    cfgs = {k: c for k, c in configs(max(contexts) + steps, layers, heads, head_dim).items() if k in names}
    models = build_models(cfgs)
    rows = []
    for batch in batches:
        for ctx in contexts:
            caches = {name: fill_cache(m, batch, ctx, steps) for name, m in models.items()}
            best = dict.fromkeys(models, 0.0)
            for _ in range(repeats):               # round robin: background noise hits all alike
                for name, m in models.items():
                    best[name] = max(best[name], decode_tokens_per_s(m, caches[name], ctx, steps, max_seconds))
            for name, c in cfgs.items():
                nbytes = sum(x.nbytes() for x in caches[name][:layers])
                vals = cache_values_per_token(c)
                assert nbytes == batch * ctx * layers * vals * 4, (name, nbytes)
                rows.append(dict(attention=name, batch=batch, context=ctx, values_per_token_layer=vals,
                                 bytes_per_token=layers * vals * 4, cache_bytes=nbytes, tokens_per_s=best[name]))
            del caches
    return rows


def format_table(rows: list[dict]) -> str:
    naive = {(r["batch"], r["context"]): r["tokens_per_s"] for r in rows if r["attention"] == "MLA naive"}
    lines = [f"{'attention':<17} {'batch':>5} {'context':>7} {'B/token':>8} {'cache MiB':>10} "
             f"{'tokens/s':>9} {'vs naive':>8}"]
    for r in rows:
        base = naive.get((r["batch"], r["context"]))
        ratio = f"{r['tokens_per_s'] / base:>7.2f}x" if base else f"{'':>8}"
        lines.append(f"{r['attention']:<17} {r['batch']:>5} {r['context']:>7} {r['bytes_per_token']:>8,} "
                     f"{r['cache_bytes'] / 2**20:>10,.1f} {r['tokens_per_s']:>9,.1f} {ratio}")
    return "\n".join(lines)


def format_ratios(rows: list[dict]) -> str:
    """absorb / naive: cache bytes and tokens/s, one line per batch size."""
    get = {(r["attention"], r["batch"], r["context"]): r for r in rows}
    ctxs = sorted({r["context"] for r in rows})
    out = [f"{'absorb / naive':<22}" + "".join(f"{c:>8}" for c in ctxs)]
    for b in sorted({r["batch"] for r in rows}):
        if ("MLA absorb", b, ctxs[0]) not in get or ("MLA naive", b, ctxs[0]) not in get:
            continue
        a = [get["MLA absorb", b, c] for c in ctxs]
        n = [get["MLA naive", b, c] for c in ctxs]
        out.append(f"{f'tokens/s, batch {b}':<22}" + "".join(
            f"{x['tokens_per_s'] / y['tokens_per_s']:>7.2f}x" for x, y in zip(a, n, strict=True)))
    a = next(r for r in rows if r["attention"] == "MLA absorb")
    n = next(r for r in rows if r["attention"] == "MLA naive")
    out.append(f"{'cache bytes':<22}{a['cache_bytes'] / n['cache_bytes']:>8.3f} (every context and batch)")
    return "\n".join(out)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m minids bench decode", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", default="256,1024,2048,4096,8192", help="comma-separated cached lengths")
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--steps", type=int, default=8, help="decoded tokens per timed run")
    ap.add_argument("--max-seconds", type=float, default=1.0, help="a timed run stops after this long")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=HEADS)
    ap.add_argument("--head-dim", type=int, default=HEAD_DIM)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    contexts = [int(c) for c in args.contexts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} thread(s), "
          f"float32, {args.layers} layers, width {args.heads * args.head_dim} = {args.heads} heads of "
          f"{args.head_dim} (GQA: {max(args.heads // 4, 1)} KV heads); up to {args.steps} steps or "
          f"{args.max_seconds:g} s per run, best of {args.repeats}")
    t0 = time.perf_counter()
    rows = measure(contexts, batches, args.steps, args.repeats, args.max_seconds, args.layers, args.heads,
                   args.head_dim)
    print(format_table(rows))
    print()
    print(format_ratios(rows))
    print(f"({time.perf_counter() - t0:.0f} s)")
