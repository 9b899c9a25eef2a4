"""Self-speculative decoding with the MTP module as the draft: greedy equals plain greedy, the
rollback leaves no stale cache entries, the acceptance rule keeps the main model's distribution,
the context limit and bad inputs are handled."""

import math

import pytest
import torch

import minids.generate as gen
from minids.config import ModelConfig, get_preset
from minids.generate import filtered_probs, generate, speculative_accept, speculative_generate
from minids.model import MiniDeepSeek
from minids.mtp import mtp_forward

V = 37
CTX = 24


def dense(**kw):
    base = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=CTX, num_nextn_predict_layers=1)
    return ModelConfig(**{**base, **kw})


CONFIGS = {
    "mha": dense(),
    "gqa": dense(num_key_value_heads=2),
    "mla-naive": dense(q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4,
                       v_head_dim=8),
    "mla-absorb-moe": get_preset("mini-v3", vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                 max_position_embeddings=CTX, mla_mode="absorb"),
    "mha-moe": dense(n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
                     moe_intermediate_size=16, first_k_dense_replace=1),
}


def peaky(model, scale=30.0):
    """Random models have near-uniform outputs; a larger head gives decisive, varied tokens."""
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return model.eval()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_greedy_speculative_equals_plain_greedy_on_random_models(name):
    for seed in range(3):
        torch.manual_seed(seed)
        model = peaky(MiniDeepSeek(CONFIGS[name]))
        for P, new in [(1, 12), (5, 19), (CTX - 3, 10), (CTX, 4)]:    # some cross the context limit
            idx = torch.randint(0, V, (1, P))
            ref = generate(model, idx, new, temperature=0)
            out, st = speculative_generate(model, idx, new)
            assert torch.equal(out, ref), (name, seed, P)
            assert st["new_tokens"] == new
            assert st["tokens_per_forward"] == pytest.approx(new / st["main_forwards"])


class Oracle:
    """Replaces the MTP draft by a chosen token: the right one (the plain greedy continuation)
    except at the positions in `wrong`. Proves both branches, accept and reject, are exact."""

    def __init__(self, ref, wrong):
        self.ref, self.wrong, self.real = ref, set(wrong), gen.mtp_forward

    def __call__(self, model, k, h_prev, next_tokens, start_pos=0, cache=None):
        h, logits = self.real(model, k, h_prev, next_tokens, start_pos, cache)
        n = start_pos + next_tokens.size(1) + 1              # the draft is for t_n
        tok = int(self.ref[0, n]) if n < self.ref.size(1) else 0
        if n in self.wrong:
            tok = (tok + 1) % logits.size(-1)
        forced = torch.full_like(logits, -1e4)
        forced[..., tok] = 0.0
        return h, forced


@pytest.mark.parametrize("name", ["mha", "mla-absorb-moe"])
def test_accept_and_reject_branches_with_a_controlled_draft(name, monkeypatch):
    torch.manual_seed(1)
    model = peaky(MiniDeepSeek(CONFIGS[name]))
    idx = torch.randint(0, V, (1, 3))
    new = 17                                                 # stays inside the context (3 + 17 < 24)
    ref = generate(model, idx, new, temperature=0)
    monkeypatch.setattr(gen, "mtp_forward", Oracle(ref, wrong=[4, 7, 8, 14]))
    out, st = speculative_generate(model, idx, new)
    assert torch.equal(out, ref)
    # drafts at n = 4 (wrong), 5 (right: +2), 7 (wrong), 8 (wrong), 9 (right), 11, 13 (right),
    # 15 (wrong? no: 14 is never drafted), ...: replay the schedule by hand
    n, log = 4, []
    while n < 3 + new:
        if 3 + new - n >= 2:
            ok = n not in {4, 7, 8, 14}
            log.append((n, ok))
            n += 2 if ok else 1
        else:
            n += 1
    assert st["accept_log"] == log
    assert st["drafted"] == len(log) and st["accepted"] == sum(ok for _, ok in log)
    assert 0 < st["accepted"] < st["drafted"]
    # all drafts right: one prefill, then two tokens per main forward
    monkeypatch.setattr(gen, "mtp_forward", Oracle(ref, wrong=[]))
    out, st = speculative_generate(model, idx, new)
    assert torch.equal(out, ref) and st["acceptance_rate"] == 1.0
    assert st["main_forwards"] == 1 + math.ceil((new - 1) / 2)


def test_rollback_leaves_no_stale_cache_entries():
    torch.manual_seed(2)
    for name in ("mha", "mla-absorb-moe"):
        model = peaky(MiniDeepSeek(CONFIGS[name]))
        L = model.config.num_hidden_layers
        idx = torch.randint(0, V, (1, 4))
        cache = model.new_cache()
        out, st = speculative_generate(model, idx, 14, cache=cache)
        assert st["drafted"] > st["accepted"]                # rejections happened
        n = out.size(1)
        # a plain run over the final tokens: prefill all but the newest one
        ref = model.new_cache()
        o = model(out[:, :n - 1], cache=ref[:L])
        for c, r in zip(cache[:L], ref[:L], strict=True):
            assert c.length == r.length == n - 1
            for key in r.buffers:
                torch.testing.assert_close(c.buffers[key][:, :n - 1], r.buffers[key][:, :n - 1],
                                           rtol=1e-4, atol=1e-5)
                assert (c.buffers[key][:, n - 1:] == 0).all()   # nothing left past the length
        # the MTP cache: positions the draft has read, computed in one pass
        m = cache[L].length
        mtp_forward(model, 1, o.hidden[:, :m], out[:, 1:m + 1], 0, ref[L])
        for key in ref[L].buffers:
            torch.testing.assert_close(cache[L].buffers[key][:, :m], ref[L].buffers[key][:, :m],
                                       rtol=1e-4, atol=1e-5)
            assert (cache[L].buffers[key][:, m:] == 0).all()


def test_batched_prompts_and_limits():
    torch.manual_seed(3)
    model = peaky(MiniDeepSeek(CONFIGS["gqa"]))
    idx = torch.randint(0, V, (3, 6))
    out, st = speculative_generate(model, idx, 30)            # runs past the context (6 + 30 > 24)
    assert torch.equal(out, generate(model, idx, 30, temperature=0))
    assert st["new_tokens"] == 90
    out, st = speculative_generate(model, idx[:1], 0)
    assert torch.equal(out, idx[:1]) and st["main_forwards"] == 0
    assert model.training is False
    model.train()
    speculative_generate(model, idx[:1], 3)
    assert model.training                                     # the mode is restored


def test_bad_inputs():
    model = MiniDeepSeek(CONFIGS["mha"])
    idx = torch.randint(0, V, (1, 5))
    with pytest.raises(ValueError, match="num_nextn_predict_layers"):
        speculative_generate(MiniDeepSeek(dense(num_nextn_predict_layers=0)), idx, 3)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        speculative_generate(model, torch.zeros(1, CTX + 1, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        speculative_generate(model, idx, -1)
    with pytest.raises(ValueError, match="temperature"):
        speculative_generate(model, idx, 3, temperature=-0.5)
    with pytest.raises(ValueError, match="T >= 1"):
        speculative_generate(model, idx[:, :0], 3)
    with pytest.raises(ValueError, match="cache"):
        speculative_generate(model, idx.repeat(2, 1), 3, cache=model.new_cache())
    cache = model.new_cache()
    speculative_generate(model, idx, 3, cache=cache)
    with pytest.raises(ValueError, match="empty"):
        speculative_generate(model, idx, 3, cache=cache)


# ------------------------------------------------------------------ the acceptance rule
P_TOY = torch.tensor([0.50, 0.20, 0.15, 0.10, 0.05])
Q_TOY = torch.tensor([0.10, 0.40, 0.10, 0.30, 0.10])


def test_acceptance_rule_exact_cases():
    # q == p: every draft is kept
    d = torch.arange(5).repeat(20)
    tok, acc = speculative_accept(P_TOY.expand(100, 5), P_TOY.expand(100, 5), d)
    assert acc.all() and torch.equal(tok, d)
    # p puts all mass on token 2: whatever is drafted, token 2 comes out
    p = torch.zeros(100, 5)
    p[:, 2] = 1.0
    tok, acc = speculative_accept(p, Q_TOY.expand(100, 5), d)
    assert (tok == 2).all() and torch.equal(acc, d == 2)
    # a draft with p(d) >= q(d) is always kept
    tok, acc = speculative_accept(P_TOY.expand(100, 5), Q_TOY.expand(100, 5), torch.zeros(100, dtype=torch.long))
    assert acc.all()


def test_acceptance_rule_preserves_the_distribution():
    g = torch.Generator().manual_seed(0)
    N = 200_000
    draft = torch.multinomial(Q_TOY, N, replacement=True, generator=g)
    tok, acc = speculative_accept(P_TOY.expand(N, 5), Q_TOY.expand(N, 5), draft, generator=g)
    freq = torch.bincount(tok, minlength=5).double() / N
    sigma = (P_TOY.double() * (1 - P_TOY.double()) / N).sqrt()
    assert ((freq - P_TOY.double()).abs() < 5 * sigma).all(), freq
    # the acceptance rate is sum_x min(p, q) (Leviathan et al. 2023)
    assert acc.double().mean().item() == pytest.approx(torch.minimum(P_TOY, Q_TOY).sum().item(), abs=0.005)
    # the naive rule (keep every draft) gives q, not p: this test would catch it
    naive = torch.bincount(draft, minlength=5).double() / N
    assert ((naive - P_TOY.double()).abs() > 5 * sigma).any()


@pytest.mark.slow
def test_speculative_sampling_keeps_the_main_models_distribution():
    """End to end: the second new token (the first drafted one) goes through draft, accept/reject
    and resampling; its frequency over many runs matches the main model's exact marginal."""
    cfg = dense(vocab_size=4, max_position_embeddings=8)
    torch.manual_seed(4)
    model = peaky(MiniDeepSeek(cfg), scale=60.0)
    idx = torch.tensor([[1, 3, 0]])
    T = 0.9
    with torch.no_grad():
        p1 = filtered_probs(model(idx).logits[:, -1], T)[0]                       # (4,)
        nxt = torch.cat([idx.repeat(4, 1), torch.arange(4)[:, None]], 1)
        p2 = filtered_probs(model(nxt).logits[:, -1], T)                          # (4, 4)
        exact = p1 @ p2                                                            # marginal of t_2
    g = torch.Generator().manual_seed(0)
    N, counts, drafted, accepted = 3000, torch.zeros(4), 0, 0
    for _ in range(N):
        out, st = speculative_generate(model, idx, 3, temperature=T, generator=g)
        counts[out[0, idx.size(1) + 1]] += 1
        drafted, accepted = drafted + st["drafted"], accepted + st["accepted"]
    assert drafted == N and 0 < accepted < N                 # both branches taken
    freq = counts.double() / N
    sigma = (exact.double() * (1 - exact.double()) / N).sqrt()
    assert ((freq - exact.double()).abs() < 5 * sigma + 1e-3).all(), (freq, exact)
