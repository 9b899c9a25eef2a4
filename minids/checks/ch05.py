"""Checks for chapter 05 (Multi-Token Prediction and self-speculative decoding): the targets of
every prediction depth, the MTP loss of eqs 24-25 with chained depths, the self-speculative
greedy decoding loop with KV-cache rollback, a think question on speed-ups and costs, and the
experiment on how the draft's acceptance grows with training."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ..attention import KVCache
from ..config import ModelConfig, get_preset
from ..generate import generate, speculative_generate
from ..model import MiniDeepSeek, cast_parameters
from ..mtp import mtp_forward
from .checking import Checker, CheckFailed, as_tensor

FORBIDDEN = {
    "mtp_loss": ["minids.mtp.mtp_losses"],
    # `__wrapped__`: both are decorated (torch.no_grad); the names without it are what the grader flags
    "speculative_decode": ["minids.generate.speculative_generate", "minids.generate.generate",
                           "minids.generate.speculative_generate.__wrapped__", "minids.generate.generate.__wrapped__"],
}
POINTS = {"mtp_targets": 1, "mtp_loss": 2, "speculative_decode": 3, "speculation_numbers": 2,
          "acceptance_experiment": 2}
NOT_MUTATED = {"acceptance_experiment": "an experiment: each mutant would re-train the model; its check is "
                                        "tested on made-up and real measurements instead"}
_BATCH1 = "batch size 1: index 0 and -1 of the batch dimension are the same row"
_RECOMPUTE = ("the MTP module re-reads positions it has cached: its cache is overwritten with the same values "
              "(recomputing is allowed)")
_LAST = "the plain step comes last and feeds one token: position 0 is position -1, and its hidden state is never read"
EQUIVALENT_MUTANTS: dict[str, dict[str, str]] = {
    "mtp_targets": {"`T - 1` -> `T`": "depth k = T has no position: it writes an empty slice, a no-op",
                    "`1` -> `0` #5": "depth k = T has no position: it writes an empty slice, a no-op"},
    "speculative_decode": {
        **{f"`0` -> `-1`{s}": _BATCH1 for s in ("", " #2", " #3", " #7", " #8", " #10", " #12", " #13", " #14")},
        "delete `mtp_done = n - 1`": _RECOMPUTE, "`n - 1` -> `1`": _RECOMPUTE, "`1` -> `2` #6": _RECOMPUTE,
        "`(0, -1)` -> `(-1, 0)` #3": _LAST, "`1` -> `0` #18": _LAST, "`0` -> `-1` #15": _LAST,
        "`0` -> `-1` #16": _LAST, "delete `hidden.append(out.hidden[0, 0])` #2": _LAST,
    },
    "speculation_numbers": {
        **{f"`4096` -> `{v}`{s}": "one key more or less changes the share by 1e-5 of itself, far inside any "
                                   "tolerance" for v in (4095, 4097) for s in ("", " #2")},
    },
}


# ----------------------------------------------------------------------------------- targets
def _targets_ref(ids: torch.Tensor, D: int, shift: int = 1, pad: int = -1, trim: bool = True) -> torch.Tensor:
    """(D+1, B, T): row k holds t_{i+k+shift} = ids[:, i+k+shift] for i < T-k, `pad` after."""
    B, T = ids.size(0), ids.size(1) - 1
    out = torch.full((D + 1, B, T), pad, dtype=ids.dtype)
    for k in range(D + 1):
        n = T - k if trim else T
        src = ids[:, k + shift:k + shift + n]
        n = src.size(1)
        if n > 0:
            out[k, :, :n] = src
    return out


def check_mtp_targets(mtp_targets) -> None:
    """mtp_targets(ids, D) -> (D+1, B, T) with T = ids.size(1) - 1, in ids's dtype: row 0 the main
    targets t_{i+1} = ids[:, i+1]; row k (depth k) t_{i+k+1} = ids[:, i+k+1] at positions
    i < T - k and -1 (ignored by cross_entropy) at the last k positions."""
    with Checker("mtp_targets") as c:
        g = torch.Generator().manual_seed(5)
        for n, (B, T, D, dtype) in enumerate([(2, 8, 1, torch.int64), (1, 6, 3, torch.int64), (3, 5, 0, torch.int64),
                                              (1, 1, 2, torch.int64), (2, 9, 2, torch.int32), (2, 7, 2, torch.int64),
                                              (2, 2, 4, torch.int64)]):
            ids = torch.randint(0, 50, (B, T + 1), generator=g).to(dtype)
            if n == 5:                                          # a non-contiguous view: every other column
                ids = torch.randint(0, 50, (B, 2 * (T + 1)), generator=g)[:, ::2]
            exp = _targets_ref(ids, D)
            got = c.call(mtp_targets, ids, D, hint="stack D+1 rows of shape (B, T): torch.full((D + 1, B, T), -1) "
                                                    "then fill row k's first T-k positions")
            mistakes = [
                (_targets_ref(ids, D, shift=0), "row k holds the token k+1 steps AHEAD of position i: ids[:, i+k+1] "
                                                "(row 0 is the next token, not the input itself)"),
                (_targets_ref(ids, D, pad=0), "pad with -1 (cross_entropy's ignore_index), not 0: token 0 is a real "
                                              "token and would be trained on"),
                (_targets_ref(ids, D, shift=2), "row 0 holds the main model's targets ids[:, i+1]; depth k is "
                                                "k further: ids[:, i+k+1]"),
            ]
            c.equal(got, exp, f"(B, T, D) = {(B, T, D)}, {str(ids.dtype)[6:]}" + (" (a non-contiguous view)" if n == 5
                                                                                  else ""),
                    dtype=ids.dtype, mistakes=mistakes)


# ----------------------------------------------------------------------------------- MTP loss
def _mtp_model(D: int, lam: float, seed: int, mla: bool = False) -> MiniDeepSeek:
    base = dict(vocab_size=29, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=24, num_nextn_predict_layers=D, mtp_loss_weight=lam)
    if mla:
        base.update(kv_lora_rank=8, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8)
    torch.manual_seed(seed)
    model = MiniDeepSeek(ModelConfig(**base)).eval()
    with torch.no_grad():                         # norms away from 1, so a forgotten one shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def _mtp_variant(model, idx, targets, chain=True, told=1, aim=1, normed=False, lam=True, per_depth=True):
    """The MTP loss with one step done differently; (total, [L^k])."""
    with torch.no_grad():
        h0 = model(idx).hidden
        h = model.norm(h0) if normed else h0
        T, D = idx.size(1), len(model.mtp)
        losses = []
        for k in range(1, D + 1):
            n = T - k
            hk, logits = mtp_forward(model, k, (h if chain else h0)[:, :n], idx[:, k * told:k * told + n])
            if chain:
                h = hk
            tgt = targets[:, k * aim:k * aim + n]
            losses.append(F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), ignore_index=-1))
        total = torch.stack(losses).sum()
        if per_depth:
            total = total / D
        if lam:
            total = total * model.mtp_loss_weight
    return total, losses


@functools.lru_cache(maxsize=1)
def _loss_cases() -> list[tuple]:
    """The cases with their reference answers and known wrong answers, built once per process."""
    g = torch.Generator().manual_seed(7)
    out = []
    for n, (D, lam, B, T, seed, mla) in enumerate([(1, 0.3, 2, 8, 0, False), (2, 0.1, 1, 9, 1, False),
                                                   (3, 1.0, 2, 6, 2, True), (2, 0.5, 3, 3, 3, False),
                                                   (3, 0.3, 1, 4, 4, False), (1, 0.2, 1, 2, 5, True)]):
        model = _mtp_model(D, lam, seed, mla)
        V = model.config.vocab_size
        seq = torch.randint(0, V, (B, T + 1), generator=g)
        idx, targets = seq[:, :-1], seq[:, 1:].clone()
        if n == 1:
            targets[:, 5] = -1                            # an ignored target inside depth 1's and 2's window
        if n == 2:                                        # non-contiguous idx and targets
            seq = torch.randint(0, V, (T + 1, B), generator=g).T
            idx, targets = seq[:, :-1], seq[:, 1:]
        with torch.no_grad():
            ref = model(idx, targets)
        what = f"D = {D}, lambda = {lam}, (B, T) = {(B, T)}" + (", MLA" if mla else "") + \
            (", a target -1" if n == 1 else "") + (" (non-contiguous idx, targets)" if n == 2 else "")
        per = torch.stack(ref.mtp_losses).double()
        per_mistakes = [
            (torch.stack(_mtp_variant(model, idx, targets, chain=False)[1]), "chain the depths: depth k reads the "
             "hidden state depth k-1 returned (mtp_forward's first output), not the main model's h^0"),
            (torch.stack(_mtp_variant(model, idx, targets, told=0)[1]), "depth k is told the token k steps ahead, "
             "idx[:, k:], not the current token"),
            (torch.stack(_mtp_variant(model, idx, targets, aim=0)[1]), "depth k is scored on targets[:, k:] (the "
             "token k+1 steps ahead), not on the main targets"),
            (torch.stack(_mtp_variant(model, idx, targets, normed=True)[1]), "feed depth 1 the hidden state BEFORE "
             "the main model's final norm: ModelOutput.hidden, not model.norm(hidden)"),
        ]
        total_mistakes = [
            (_mtp_variant(model, idx, targets, lam=False)[0], "multiply by lambda = model.mtp_loss_weight"),
            (_mtp_variant(model, idx, targets, per_depth=False)[0], "eq 25 averages the depths: lambda / D times "
                                                                    "the sum"),
            (_mtp_variant(model, idx, targets, lam=False, per_depth=False)[0],
             "eq 25: lambda / D times the sum of the depths' losses"),
        ]
        out.append((what, model, idx, targets, per, ref.mtp_loss * model.mtp_loss_weight, per_mistakes,
                    total_mistakes))
    return out


def check_mtp_loss(mtp_loss) -> None:
    """mtp_loss(model, idx, targets) -> (total, per_depth): per_depth[k-1] = L^k, the mean
    cross-entropy of depth k over its T-k positions (targets -1 ignored), the depths CHAINED
    (depth k reads depth k-1's hidden state, depth 1 the main model's `ModelOutput.hidden`); total
    = model.mtp_loss_weight / D * sum_k L^k (eq 25). Not allowed: minids.mtp.mtp_losses."""
    with Checker("mtp_loss") as c:
        for what, model, idx, targets, per_exp, total_exp, per_mistakes, total_mistakes in _loss_cases():
            D = len(model.mtp)
            got = c.call(mtp_loss, model, idx, targets, forbidden=FORBIDDEN["mtp_loss"])
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                raise CheckFailed(f"{what}: return a pair (total, per_depth), got {type(got).__name__}")
            total, per = got
            if not isinstance(per, (tuple, list)) and not torch.is_tensor(per):
                raise CheckFailed(f"{what}: per_depth must be a list of D losses, got {type(per).__name__}")
            per_t = as_tensor(list(per) if isinstance(per, (tuple, list)) else per, "per_depth").double().flatten()
            if per_t.numel() != D:
                raise CheckFailed(f"{what}: per_depth has {per_t.numel()} losses, expected one per depth (D = {D})")
            c.close(per_t, per_exp, f"{what}: per_depth", atol=1e-5, rtol=1e-4, mistakes=per_mistakes)
            c.close(total, total_exp, f"{what}: total", atol=1e-5, rtol=1e-4, mistakes=total_mistakes)


# ----------------------------------------------------------------------------------- speculative decoding
_MAIN_FORWARDS: list[tuple[int, int, bool]] = []      # (tokens fed, start_pos, with a cache), logged locally


class StrictCache(KVCache):
    """A KVCache that refuses to overwrite positions it still holds: after a rejected draft the
    main cache must be rolled back (`crop`) before the next forward writes there."""

    def update(self, start_pos: int, **new: torch.Tensor) -> list[torch.Tensor]:
        if start_pos > self.length:
            raise CheckFailed(f"a forward at start_pos={start_pos} used a main cache that holds only {self.length} "
                              "positions\n    likely mistake: use the main KV cache in EVERY main forward, feeding "
                              "the positions in order (the prefill, then each verify or plain step)")
        if start_pos < self.length:
            raise CheckFailed(f"a forward wrote at start_pos={start_pos} into a main cache that holds {self.length} "
                              "positions\n    likely mistake: after a rejected draft, roll the main cache back "
                              "(`crop`) so that it holds exactly the committed positions, and continue right after "
                              "them")
        return super().update(start_pos, **new)


class LoggedModel(MiniDeepSeek):
    """MiniDeepSeek whose forward passes are logged (in this process) and whose main-layer caches
    are StrictCaches. It computes exactly what MiniDeepSeek computes."""

    def forward(self, idx, targets=None, start_pos: int = 0, cache=None):
        _MAIN_FORWARDS.append((int(idx.size(1)), int(start_pos), cache is not None))
        return super().forward(idx, targets, start_pos, cache)

    def new_cache(self, max_len: int | None = None) -> list[KVCache]:
        L = self.config.num_hidden_layers
        caches = super().new_cache(max_len)
        return [StrictCache(c.max_len) if i < L else c for i, c in enumerate(caches)]


_V = 23


def _spec_model(kind: str, seed: int, mix: tuple[float, float] = (0.5, 1.0), depths: int = 1) -> LoggedModel:
    """A float64 model whose MTP draft is right some of the time (a random model's draft rarely is):
    M's embedding half gets a share of the identity, and a larger head makes decisive argmaxes."""
    dense = dict(vocab_size=_V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=32, num_nextn_predict_layers=depths)
    cfg = {"mha": lambda: ModelConfig(**dense),
           "gqa": lambda: ModelConfig(**{**dense, "num_key_value_heads": 2}),
           "mla-naive": lambda: ModelConfig(**{**dense, "q_lora_rank": 16, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
                                               "qk_rope_head_dim": 4, "v_head_dim": 8}),
           "mla-absorb-moe": lambda: get_preset("mini-v3", vocab_size=_V, hidden_size=32, num_hidden_layers=2,
                                                max_position_embeddings=32, mla_mode="absorb",
                                                num_nextn_predict_layers=depths)}[kind]()
    torch.manual_seed(seed)
    model = LoggedModel(cfg)
    cast_parameters(model, torch.float64)
    d = cfg.hidden_size
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)
        W = model.mtp[0].eh_proj.weight                                   # (d, 2d): [embedding | hidden]
        W.mul_(mix[1])
        W[:, :d] += mix[0] * torch.eye(d, dtype=W.dtype)
    return model.eval()


@torch.no_grad()
def _spec_variant(model, prompt, n_new, bonus=True, told=1):
    """Greedy self-speculative decoding written out, with one step done differently; stats as the task's."""
    L = model.config.num_hidden_layers
    cache = MiniDeepSeek.new_cache(model)
    main, mtp_cache = cache[:L], cache[L]
    P = prompt.size(1)
    o = MiniDeepSeek.forward(model, prompt, cache=main)
    toks = prompt[0].tolist() + [int(o.logits[0, -1].argmax())]
    hidden = list(o.hidden[0])
    st = {"drafted": 0, "accepted": 0, "main_forwards": 1}
    done = 0                                                            # positions the MTP cache holds
    while len(toks) < P + n_new:
        n = len(toks)
        if P + n_new - n >= 2:
            h = torch.stack(hidden[done:n - 1])[None]
            nxt = torch.tensor([toks[done + told:n - 1 + told]])                 # told=1: t_{i+1}
            _, q = mtp_forward(model, 1, h, nxt, done, mtp_cache)
            done = n - 1
            draft = int(q[0, -1].argmax())
            o = MiniDeepSeek.forward(model, torch.tensor([[toks[-1], draft]]), start_pos=n - 1, cache=main)
            st["drafted"] += 1
            st["main_forwards"] += 1
            tok = int(o.logits[0, 0].argmax())
            toks.append(tok)
            hidden.append(o.hidden[0, 0])
            if tok == draft:
                st["accepted"] += 1
                if bonus:
                    toks.append(int(o.logits[0, 1].argmax()))
                    hidden.append(o.hidden[0, 1])
                    continue
            for c in main:
                c.crop(n)
        else:
            o = MiniDeepSeek.forward(model, torch.tensor([[toks[-1]]]), start_pos=n - 1, cache=main)
            st["main_forwards"] += 1
            toks.append(int(o.logits[0, -1].argmax()))
            hidden.append(o.hidden[0, 0])
    return torch.tensor([toks]), st


def _stat(stats, key: str, what: str) -> int:
    if not isinstance(stats, dict) or key not in stats:
        raise CheckFailed(f"{what}: stats must be a dict with 'drafted', 'accepted' and 'main_forwards', got "
                          f"{stats!r}")
    v = stats[key]
    try:
        f = float(as_tensor(v, key).reshape(()).item())
    except (CheckFailed, RuntimeError):
        raise CheckFailed(f"{what}: stats[{key!r}] must be a whole number, got {v!r}") from None
    if not f.is_integer():
        raise CheckFailed(f"{what}: stats[{key!r}] must be a whole number, got {v!r}")
    return int(f)


_SPEC_CASES = [("mha", 0, 1, 12, (0.5, 1.0), 1), ("gqa", 1, 5, 17, (0.5, 1.0), 1),
               ("mla-absorb-moe", 2, 4, 9, (0.5, 1.0), 1), ("mla-naive", 3, 3, 2, (0.5, 1.0), 1),
               ("mha", 4, 6, 1, (0.5, 1.0), 1), ("mha", 5, 2, 20, (1.0, 0.0), 1), ("gqa", 6, 7, 11, (0.5, 1.0), 1),
               ("mha", 7, 3, 14, (0.5, 1.0), 2)]


@functools.lru_cache(maxsize=1)
def _spec_cases() -> list[tuple]:
    """The cases with their reference answers, built once per process (the models are deterministic)."""
    out = []
    for n, (kind, seed, P, n_new, mix, depths) in enumerate(_SPEC_CASES):
        model = _spec_model(kind, seed, mix, depths)
        g = torch.Generator().manual_seed(100 + n)
        prompt = torch.randint(0, _V, (1, P), generator=g)
        if n == 6:                                               # a non-contiguous prompt
            prompt = torch.randint(0, _V, (1, 2 * P), generator=g)[:, ::2]
        what = f"{kind} model (seed {seed}), prompt of {P} tokens, n_new = {n_new}" + \
            (" (a non-contiguous prompt)" if n == 6 else "") + (f", {depths} MTP modules (draft with the first)"
                                                                if depths > 1 else "")
        ref_toks = generate(model, prompt.clone(), n_new, temperature=0)
        _, ref_st = speculative_generate(model, prompt.clone(), n_new)
        nb = _spec_variant(model, prompt, n_new, bonus=False)[1]
        told0 = _spec_variant(model, prompt, n_new, told=0)[1]
        out.append((what, model, prompt, n_new, ref_toks, ref_st, nb, told0))
    _MAIN_FORWARDS.clear()
    return out


def check_speculative_decode(speculative_decode) -> None:
    """speculative_decode(model, prompt, n_new) -> (tokens (1, P + n_new), stats): greedy
    self-speculative decoding with the model's first MTP module as the draft. One prefill forward
    gives the first new token; while at least 2 tokens remain, the MTP module drafts one token and
    ONE main forward over [newest token, draft] verifies it (commit the main model's own choice;
    if it equals the draft, commit the choice after it too; else roll the main cache back); when 1
    token remains, one plain cached step. tokens == greedy decoding's; stats = {"drafted",
    "accepted", "main_forwards"}. Not allowed: minids.generate's generate / speculative_generate."""
    with Checker("speculative_decode") as c:
        for what, model, prompt, n_new, ref_toks, ref_st, nb, told0 in _spec_cases():
            P = prompt.size(1)
            _MAIN_FORWARDS.clear()
            got = c.call(speculative_decode, model, prompt, n_new, forbidden=FORBIDDEN["speculative_decode"])
            log = list(_MAIN_FORWARDS)
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                raise CheckFailed(f"{what}: return a pair (tokens, stats), got {type(got).__name__}")
            toks, stats = got
            c.equal(toks, ref_toks, f"{what}: tokens (greedy decoding's)")
            if log:                                                  # observed here (not in a remote run)
                c.true(log[0][0] == P and log[0][2], f"{what}: the first main forward must be the prefill over the "
                       f"{P} prompt tokens, with the main cache (got {log[0][0]} tokens"
                       f"{'' if log[0][2] else ', no cache'})")
                big = [t for t, _, cached in log[1:] if t > 2 or not cached]
                c.true(not big, f"{what}: a main forward after the prefill fed {big[0] if big else 0} tokens"
                       + ("" if all(x[2] for x in log) else " or ran without the cache") + "\n    likely mistake: "
                       "use the main KV cache: after the prefill, feed only the new tokens (1 for a plain step, 2 "
                       "to verify a draft) at start_pos = the number of cached positions")
            for key in ("drafted", "accepted", "main_forwards"):
                v = _stat(stats, key, what)
                mistakes = []
                if key == "main_forwards":
                    mistakes += [(ref_st[key] - 1, "count the prefill too: main_forwards = 1 (prefill) + verify "
                                  "passes + plain steps")]
                if key in ("accepted", "drafted"):
                    mistakes += [(told0[key], "the draft for t_n comes from the MTP module at position n-2: it reads "
                                  "h_{n-2} and Emb(t_{n-1}) (the token AFTER that position)")]
                mistakes += [(nb[key], "an accepted draft gives TWO tokens: the verify forward's second position "
                              "already holds the main model's choice after the draft; commit it too")]
                c.number(v, ref_st[key], f"{what}: stats[{key!r}]", integer=True, mistakes=mistakes)
                if log and key == "main_forwards" and len(log) != v:
                    raise CheckFailed(f"{what}: stats['main_forwards'] = {v}, but your function ran the main model "
                                      f"{len(log)} times")


# ----------------------------------------------------------------------------------- think
def _v3_mtp_share(causal: bool = False, relative_to_main: bool = False) -> float:
    from ..flops import flops_per_token
    c = get_preset("deepseek-v3")
    a, b = flops_per_token(c, 4096, causal=causal), flops_per_token(c, 4096, mtp=False, causal=causal)
    return (a - b) / (b if relative_to_main else a)


def check_speculation_numbers(answer) -> None:
    """answer = {"tokens_per_verify": expected tokens per main forward with one draft accepted with
    probability 0.85, "tokens_per_verify_3_drafts": with three chained drafts, each accepted with
    probability 0.85 if all before it were, "implied_draft_cost": the draft's cost as a fraction of
    a main forward that 85% acceptance and V3's 1.8x speed-up imply, "v3_mtp_flops_share": the share
    of V3's training FLOPs per token (4,096 keys) spent in its MTP module, "why_small": "a" | "b" |
    "c", and two predictions for an UNTRAINED model (vocabulary 82): "untrained_greedy_agreement" and
    "untrained_sampled_acceptance", each "a" (about 1/82) | "b" (about 1/2) | "c" (close to 1)}."""
    with Checker("speculation_numbers") as c:
        c.answer(answer)
        c.keys(answer, ["tokens_per_verify", "tokens_per_verify_3_drafts", "implied_draft_cost",
                        "v3_mtp_flops_share", "why_small", "untrained_greedy_agreement",
                        "untrained_sampled_acceptance"], "the answer")
        a = 0.85
        c.number(answer["tokens_per_verify"], 1 + a, "tokens per verify forward, one draft", rtol=1e-3, mistakes=[
            (a, "the verify forward always yields the main model's own token, plus the draft's successor when the "
                "draft is accepted: 1 + 0.85"),
            (1 / (1 - a), "one draft per round: 1 token always, a second with probability 0.85 (not a geometric "
                          "series without end)"),
            (2 * a, "the first token is always committed (the main model's own choice): 1 + 0.85")])
        c.number(answer["tokens_per_verify_3_drafts"], (1 - a ** 4) / (1 - a), "tokens per verify forward, 3 drafts",
                 rtol=1e-3, mistakes=[
                     (1 + 3 * a, "draft j only counts if drafts 1 .. j-1 were accepted: 1 + a + a^2 + a^3"),
                     ((1 - a ** 3) / (1 - a), "k drafts give up to k + 1 tokens: 1 + a + a^2 + a^3"),
                     (4 * a, "draft j only counts if drafts 1 .. j-1 were accepted: 1 + a + a^2 + a^3")])
        c.number(answer["implied_draft_cost"], (1 + a) / 1.8 - 1, "the draft's implied cost", rtol=0.01, atol=1e-4,
                 mistakes=[(1.8 / (1 + a) - 1, "speed-up = (1 + a) / (1 + c), so c = (1 + a) / 1.8 - 1"),
                           ((1 + a) / 1.8, "that is 1 + c: the cost of a round relative to a plain forward")])
        c.number(answer["v3_mtp_flops_share"], _v3_mtp_share(), "the MTP module's share of V3's training FLOPs",
                 rtol=0.015, mistakes=[
                     (_v3_mtp_share(relative_to_main=True), "the share of the TOTAL (main + MTP), not relative to the "
                                                            "main model alone"),
                     (_v3_mtp_share(causal=True), "count full attention over 4,096 keys (flops_per_token's default), "
                                                  "not causal")])
        c.choice(answer["why_small"], "b", ["a", "b", "c"], "why the MTP module is cheap in V3", mistakes={
            "a": "the main layers are MoE as well, so sparsity does not make the MTP block cheaper RELATIVE to them: "
                 "what matters is one extra block next to 61",
            "c": "FP8 speeds up the main model's matmuls just as much: it changes no share of FLOPs"})
        c.choice(answer["untrained_greedy_agreement"], "a", ["a", "b", "c"], "greedy agreement of an untrained model",
                 mistakes={"b": "two unrelated near-uniform distributions: their argmaxes are two almost random "
                                "characters, equal about 1 time in 82",
                           "c": "the argmax of a near-uniform distribution is decided by tiny random differences, "
                                "unrelated between the main head and the draft: they agree about 1 time in 82"})
        c.choice(answer["untrained_sampled_acceptance"], "c", ["a", "b", "c"],
                 "sampled acceptance of an untrained model", mistakes={
                     "a": "sum_x min(p(x), q(x)) = 1 - TV(p, q): two near-uniform distributions overlap almost "
                          "completely, so it is close to 1 even though their argmaxes disagree",
                     "b": "sum_x min(p(x), q(x)) = 1 - TV(p, q): two near-uniform distributions overlap almost "
                          "completely"})


# ----------------------------------------------------------------------------------- experiment
def check_acceptance_experiment(results) -> None:
    """results = {"steps": [0, ..., >= 100] training steps at which you measured, increasing;
    "greedy_agreement": [fraction of validation positions where the draft's argmax equals the main
    model's argmax one position later]; "sampled_acceptance": [mean over positions of
    sum_x min(p(x), q(x)) at temperature 1]; "main_loss": [validation loss of the main head]} (one
    value per step). Checks that these were measured on a model you trained: plausible ranges, the
    untrained model at step 0, and a trained draft that agrees with the main model far more often."""
    with Checker("acceptance_experiment") as c:
        c.answer(results)
        c.keys(results, ["steps", "greedy_agreement", "sampled_acceptance", "main_loss"], "the results")
        steps = [float(s) for s in as_tensor(results["steps"], "steps").flatten().tolist()]
        c.true(len(steps) >= 3 and steps[0] == 0 and all(b > a for a, b in zip(steps[:-1], steps[1:], strict=True)),
               f"steps must start at 0 and increase, with at least 3 measurements; got {steps}")
        c.in_range(steps[-1], 100, 100_000, "the last step", why="train for at least 100 steps")
        series = {}
        for key in ("greedy_agreement", "sampled_acceptance", "main_loss"):
            vals = as_tensor(results[key], key).double().flatten().tolist()
            if len(vals) != len(steps):
                raise CheckFailed(f"{key}: {len(vals)} values for {len(steps)} steps: one value per measured step")
            series[key] = vals
        for k, v in enumerate(series["greedy_agreement"]):
            c.in_range(v, 0.0, 1.0, f"greedy agreement at step {steps[k]:g}")
        for k, v in enumerate(series["sampled_acceptance"]):
            c.in_range(v, 0.0, 1.0, f"sampled acceptance at step {steps[k]:g}")
        for k, v in enumerate(series["main_loss"]):
            c.in_range(v, 0.5, 6.0, f"main loss at step {steps[k]:g}")
        c.in_range(series["main_loss"][0], math.log(82) - 0.3, math.log(82) + 0.3, "main loss at step 0",
                   why=f"an untrained model's loss is about ln(vocabulary) = ln 82 = {math.log(82):.2f}")
        c.in_range(series["main_loss"][-1], 1.3, math.log(82) - 1.0, "main loss at the last step",
                   why="well below ln 82 once the model has trained")
        c.in_range(series["greedy_agreement"][-1], 0.3, 1.0, "greedy agreement at the last step",
                   why="a trained draft agrees with the main model on a good share of the positions")
        c.true(series["greedy_agreement"][-1] > series["greedy_agreement"][0] + 0.2,
               f"the trained draft should agree with the main model far more often than the untrained one: "
               f"{series['greedy_agreement'][0]:.3f} at step 0, {series['greedy_agreement'][-1]:.3f} at the end")
        c.true(series["sampled_acceptance"][-1] > 0.3,
               f"sampled acceptance at the end, {series['sampled_acceptance'][-1]:.3f}, is implausibly low for a "
               "trained draft: sum_x min(p, q) with p the main model's and q the draft's distribution")
