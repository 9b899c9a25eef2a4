"""Sampling: temperature, top-k and top-p, with or without the KV cache."""

from __future__ import annotations

import torch

from .model import MiniDeepSeek


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits: (B, V) -> next token ids (B, 1). temperature 0 means greedy (argmax)."""
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0")
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    probs = filtered_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator)


def filtered_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None) -> torch.Tensor:
    """softmax(logits / temperature), keeping only the top_k tokens and/or the smallest set whose
    probability reaches top_p; (B, V) -> (B, V) probabilities."""
    if top_k is not None and not 1 <= top_k:
        raise ValueError(f"top_k={top_k} must be >= 1")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must be in (0, 1]")
    logits = logits.float() / max(temperature, 1e-8)
    if top_k is not None and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p           # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits.softmax(-1)


@torch.no_grad()
def generate(model: MiniDeepSeek, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Append max_new_tokens tokens to idx (B, T). With the cache each step feeds one token; without
    it, each step re-reads the whole (cropped) context. Both give the same tokens."""
    limit = model.config.max_position_embeddings
    if idx.size(1) > limit:
        raise ValueError(f"the prompt has {idx.size(1)} tokens, more than the context "
                         f"max_position_embeddings={limit}; crop it to its last {limit} tokens")
    if idx.size(1) == 0:
        raise ValueError("the prompt must hold at least one token")
    was_training = model.training
    model.eval()
    cache = None
    for _ in range(max_new_tokens):
        if use_cache and cache is not None and cache[0].length < limit:
            # feed only the newest token; positions before it are in the cache
            logits = model(idx[:, -1:], start_pos=cache[0].length, cache=cache).logits
        elif use_cache:
            # first step, or the cache is full: (re)fill it with the last `limit` tokens
            cache = model.new_cache()
            logits = model(idx[:, -limit:], cache=cache).logits
        else:
            logits = model(idx[:, -limit:]).logits
        nxt = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
        idx = torch.cat([idx, nxt], dim=1)
    model.train(was_training)
    return idx
