"""Sampling: temperature, top-k and top-p, with or without the KV cache."""

from __future__ import annotations

import torch

from .model import MiniDeepSeek, check_context
from .mtp import mtp_forward


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
    check_context(idx.size(1), model.config)
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


# ------------------------------------------------------------------------ speculative decoding
def speculative_accept(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The speculative-sampling rule (Leviathan et al. 2023; Chen et al. 2023). p: (B, V) the
    main model's distribution, q: (B, V) the draft's, draft: (B,) a token drawn from q.
    Keep the draft with probability min(1, p(d)/q(d)); otherwise draw from max(0, p - q),
    renormalised. The token that comes out is distributed exactly as p, whatever q is.
    Returns (token (B,), accepted (B,) bool)."""
    d = draft.view(-1, 1)
    p_d, q_d = p.gather(-1, d).squeeze(-1), q.gather(-1, d).squeeze(-1)           # (B,)
    u = torch.rand(p_d.shape, generator=generator, device=p.device, dtype=p.dtype)
    accepted = u * q_d < p_d                                   # u < p(d)/q(d), without dividing
    residual = (p - q).clamp_min(0)                            # (B, V)
    mass = residual.sum(-1, keepdim=True)
    residual = torch.where(mass > 0, residual / mass.clamp_min(1e-30), p)   # p == q: never used
    resampled = torch.multinomial(residual, 1, generator=generator).squeeze(-1)
    return torch.where(accepted, draft.view(-1), resampled), accepted


@torch.no_grad()
def speculative_generate(model: MiniDeepSeek, idx: torch.Tensor, max_new_tokens: int,
                         temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                         generator: torch.Generator | None = None, cache: list | None = None
                         ) -> tuple[torch.Tensor, dict]:
    """Self-speculative decoding with the first MTP module as the draft (V3 report §5.4.3).

    Each round: the MTP module drafts t_{n+1} from the main model's last hidden state and the
    embedding of the just-chosen t_n (its own KV cache); ONE main forward over [t_n, draft]
    checks the draft and already gives the token after it. A rejected draft is rolled back
    (KVCache.crop). Greedy (temperature 0) gives exactly the tokens of `generate(...,
    temperature=0)`; with temperature > 0 the acceptance rule keeps the output distribution the
    main model's. Past the context (max_position_embeddings) it falls back to plain steps, as
    `generate` does. `cache` (from model.new_cache(), empty) may be passed to inspect it later;
    batch size 1 then. Returns (tokens (B, T + max_new_tokens), stats)."""
    if not len(model.mtp):
        raise ValueError("speculative decoding drafts with the MTP module: the model needs "
                         "num_nextn_predict_layers >= 1")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0")
    limit = model.config.max_position_embeddings
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"idx must be (B, T) with T >= 1; got shape {tuple(idx.shape)}")
    check_context(idx.size(1), model.config)
    if idx.size(0) > 1:                    # rows accept different drafts: decode them one by one
        if cache is not None:
            raise ValueError("cache can only be given for a batch of one sequence")
        rows = [speculative_generate(model, r[None], max_new_tokens, temperature, top_k, top_p,
                                     generator) for r in idx]
        stats = {k: sum(s[k] for _, s in rows) for k in
                 ("new_tokens", "main_forwards", "mtp_forwards", "drafted", "accepted")}
        stats["accept_log"] = [a for _, s in rows for a in s["accept_log"]]
        return torch.cat([t for t, _ in rows]), _finish_stats(stats)
    was_training = model.training
    model.eval()
    L = model.config.num_hidden_layers
    cache = cache if cache is not None else model.new_cache()
    if any(c.length for c in cache):
        raise ValueError("cache must be empty (fresh from model.new_cache())")
    main_cache, mtp_cache = cache[:L], cache[L]
    greedy = temperature == 0

    def probs(logits):                                        # (1, V) -> (1, V)
        return filtered_probs(logits, temperature, top_k, top_p)

    def pick(logits):                                         # (1, V) -> (1, 1)
        return sample_next(logits, temperature, top_k, top_p, generator)

    P = idx.size(1)
    out = torch.empty(1, P + max_new_tokens, dtype=idx.dtype, device=idx.device)
    out[:, :P] = idx
    st = {"new_tokens": max_new_tokens, "main_forwards": 0, "mtp_forwards": 0, "drafted": 0,
          "accepted": 0, "accept_log": []}     # accept_log: (position of the draft, accepted?)
    n = P                                      # committed tokens: out[:, :n]
    if max_new_tokens:
        o = model(idx, cache=main_cache)                      # prefill
        st["main_forwards"] += 1
        out[:, n] = pick(o.logits[:, -1])[:, 0]
        n += 1
        h_prev, mtp_pos = o.hidden, 0
    # Invariant: the main cache holds positions 0..n-2 (all but the newest token); h_prev holds
    # the main hidden states of positions mtp_pos..n-2, which the MTP module has not read yet;
    # the MTP cache holds positions 0..mtp_pos-1.
    while n < P + max_new_tokens:
        if P + max_new_tokens - n >= 2 and n + 1 <= limit:
            # draft t_n: the MTP module at positions mtp_pos..n-2 reads (h_i, t_{i+1}); its last
            # row (position n-2, token t_{n-1}) predicts t_n, the token after the newest one
            _, d_logits = mtp_forward(model, 1, h_prev, out[:, mtp_pos + 1:n], mtp_pos, mtp_cache)
            st["mtp_forwards"] += 1
            q_logits = d_logits[:, -1]                                         # (1, V)
            if greedy:
                draft = q_logits.argmax(-1, keepdim=True)                      # (1, 1)
            else:
                q = probs(q_logits)
                draft = torch.multinomial(q, 1, generator=generator)
            # verify: one main forward over [t_{n-1}, draft] at positions n-1, n
            o = model(torch.cat([out[:, n - 1:n], draft], dim=1), start_pos=n - 1, cache=main_cache)
            st["main_forwards"] += 1
            st["drafted"] += 1
            if greedy:
                tok = o.logits[:, 0].argmax(-1)                                # (1,)
                ok = bool(tok == draft[:, 0])
            else:
                tok, acc = speculative_accept(probs(o.logits[:, 0]), q, draft[:, 0], generator)
                ok = bool(acc)
            st["accept_log"].append((n, ok))
            out[:, n] = tok
            n += 1
            if ok:                             # the draft was right: the verify pass gave one more
                st["accepted"] += 1
                out[:, n] = pick(o.logits[:, 1])[:, 0]
                n += 1
                h_prev, mtp_pos = o.hidden, n - 3
            else:                              # roll back the position computed from the draft
                for c in main_cache:
                    c.crop(n - 1)
                h_prev, mtp_pos = o.hidden[:, :1], n - 2
        elif n <= limit:                       # plain cached step (last token, or no room for 2)
            o = model(out[:, n - 1:n], start_pos=n - 1, cache=main_cache)
            st["main_forwards"] += 1
            out[:, n] = pick(o.logits[:, -1])[:, 0]
            n += 1
            h_prev = torch.cat([h_prev, o.hidden], dim=1)
        else:                                  # past the context: re-read the last `limit` tokens
            o = model(out[:, n - limit:n])
            st["main_forwards"] += 1
            out[:, n] = pick(o.logits[:, -1])[:, 0]
            n += 1
    model.train(was_training)
    return out, _finish_stats(st)


def _finish_stats(st: dict) -> dict:
    st["acceptance_rate"] = st["accepted"] / st["drafted"] if st["drafted"] else float("nan")
    st["tokens_per_forward"] = st["new_tokens"] / st["main_forwards"] if st["main_forwards"] else float("nan")
    return st
