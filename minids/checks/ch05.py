"""Checks for chapter 05 (Multi-Token Prediction): the depth-k inputs and targets, the MTP
module's logits, and the speculative-sampling acceptance rule."""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..model import MiniDeepSeek
from ..mtp import mtp_forward
from .checking import Checker


def check_mtp_shift(mtp_inputs_targets) -> None:
    """mtp_inputs_targets(x, y, k) -> (told, target), both (B, T-k): at depth k, position i is
    told t_{i+k} = x[:, i+k] and scored on t_{i+k+1} = y[:, i+k] (y = x shifted by one)."""
    with Checker("mtp_shift") as c:
        seq = (torch.arange(2 * 13).view(2, 13) * 5) % 17
        x, y = seq[:, :-1], seq[:, 1:]
        T = x.size(1)
        for k in (1, 2, 3):
            told, target = mtp_inputs_targets(x, y, k)
            c.close(told, x[:, k:], f"told tokens at depth {k}", mistakes=[
                (x[:, k - 1:T - 1], "depth k is told t_{i+k}: start at x[:, k], not x[:, k-1]"),
                (x[:, :T - k], "that is the main model's input; depth k is told the token k steps ahead"),
                (y[:, k:], "the told token comes from x (t_{i+k}); y holds what must be predicted"),
            ])
            c.close(target, y[:, k:], f"targets at depth {k}", mistakes=[
                (y[:, k - 1:T - 1], "depth k predicts k+1 steps ahead: y[:, k:], not y[:, k-1:]"),
                (x[:, k:], "the target is the token AFTER the told one: take it from y"),
                (y[:, :T - k], "the targets shift by k as well: y[:, k:]"),
            ])


def _tiny_mtp_model(seed: int) -> MiniDeepSeek:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=19, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, max_position_embeddings=16, num_nextn_predict_layers=1)
    model = MiniDeepSeek(cfg).eval()
    with torch.no_grad():                      # norms away from 1, so forgetting one shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def check_mtp_logits(mtp_logits) -> None:
    """mtp_logits(model, h, x) -> (B, T-1, vocab): depth-1 logits. h: (B, T, d) the main model's
    last hidden state, x: (B, T) its input. Eqs 21-23: M [enorm(Emb(t_{i+1})); hnorm(h_i)],
    the MTP block, the module's norm, the main model's lm_head."""
    with Checker("mtp_logits") as c:
        for seed, (B, T) in [(0, (2, 7)), (1, (1, 12))]:
            model = _tiny_mtp_model(seed)
            m = model.mtp[0]
            x = torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))
            with torch.no_grad():
                h = model(x).hidden
                exp = mtp_forward(model, 1, h[:, :-1], x[:, 1:])[1]
                got = mtp_logits(model, h, x)
                fc = model.freqs_cis[:T - 1]
                e, hh = model.embed_tokens(x[:, 1:]), h[:, :-1]
                cat = lambda a, b, m=m: m.eh_proj(torch.cat([a, b], -1))  # noqa: E731
                wrong = [
                    (model.lm_head(m.norm(m.block(cat(m.enorm(model.embed_tokens(x[:, :-1])), m.hnorm(hh)), fc))),
                     "embed the NEXT token t_{i+1} = x[:, 1:], not t_i"),
                    (model.lm_head(m.norm(m.block(cat(m.hnorm(hh), m.enorm(e)), fc))),
                     "concatenate [embedding; hidden] (V3's weights), not [hidden; embedding]"),
                    (model.lm_head(m.block(cat(m.enorm(e), m.hnorm(hh)), fc)),
                     "apply the module's own norm (`norm`) before the shared head"),
                    (model.lm_head(m.norm(m.block(cat(e, hh), fc))),
                     "normalise both inputs (enorm, hnorm) before concatenating"),
                    (model.lm_head(m.norm(cat(m.enorm(e), m.hnorm(hh)))),
                     "the projection is followed by the MTP transformer block (eq 22)"),
                ]
            c.close(got, exp, f"seed {seed}, (B, T) = {(B, T)}", atol=1e-5, mistakes=wrong)


def check_acceptance_rule(acceptance_rule) -> None:
    """acceptance_rule(p, q, d) -> (accept_prob, residual): p, q (V,) distributions, d the drafted
    token. accept_prob = min(1, p[d]/q[d]); residual = max(0, p - q) renormalised to sum to 1."""
    with Checker("acceptance_rule") as c:
        p = torch.tensor([0.50, 0.20, 0.15, 0.10, 0.05])
        q = torch.tensor([0.10, 0.40, 0.10, 0.30, 0.10])
        res = (p - q).clamp_min(0)
        res = res / res.sum()
        for d in range(5):
            a, r = acceptance_rule(p, q, d)
            exp_a = min(1.0, (p[d] / q[d]).item())
            c.close(torch.as_tensor(a, dtype=torch.float64), torch.tensor(exp_a, dtype=torch.float64),
                    f"acceptance probability for draft {d}", mistakes=[
                        (torch.tensor((p[d] / q[d]).item(), dtype=torch.float64),
                         "a probability cannot exceed 1: take min(1, p/q)"),
                        (torch.tensor(min(1.0, (q[d] / p[d]).item()), dtype=torch.float64),
                         "p/q, not q/p: keep a draft that the main model likes at least as much"),
                        (torch.tensor(p[d].item(), dtype=torch.float64),
                         "the ratio p(d)/q(d) decides, not p(d) alone"),
                    ])
            c.close(r, res, f"residual distribution (draft {d})", mistakes=[
                ((p - q).clamp_min(0), "renormalise max(0, p - q) so it sums to 1"),
                (p, "resample from max(0, p - q), not from p: p would count the kept drafts twice"),
                ((q - p).clamp_min(0) / (q - p).clamp_min(0).sum(), "max(0, p - q), not max(0, q - p)"),
            ])
        # the rule reproduces p exactly
        out = torch.zeros(5)
        for d in range(5):
            a, r = acceptance_rule(p, q, d)
            out += q[d] * (float(a) * torch.nn.functional.one_hot(torch.tensor(d), 5) + (1 - float(a)) * r)
        c.close(out, p, "the output distribution sum_d q(d) [a(d) 1_d + (1 - a(d)) residual] equals p")
